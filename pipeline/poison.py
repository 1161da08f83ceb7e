"""Isolate a row whose processing kills its worker process (a crash in a C decoder, an OOM kill).

When a Ray task's worker dies, Ray runs the task again on the same block, and the same row would
kill it again until retries run out. `PoisonGuard` remembers, in Ray's cluster key-value store
(GCS), what each block's attempts were doing:

- every attempt counts itself under the block's key (a hash of its row ids): one KV op, and the
  only one a first attempt pays before it deletes the key on success;
- from the second attempt on, the id of the row being processed is recorded before it starts and
  cleared when it ends (two KV ops per row, on retries only);
- an id that was still recorded when an earlier attempt died is not processed again: the caller
  turns it into an error row (`crashed()` gives the text).

A block with k such rows needs k + 1 retries (the first death only says that the block kills its
worker; each later one names a row), so the stage needs `max_retries=MAX_RETRIES` in map_batches:
Ray Data's default (-1, retry forever) would also end once every bad row is skipped, but a finite
number fails a job whose workers die for other reasons instead of looping. One death while a row
is in flight marks it: an unrelated death (a node lost) in that moment costs that row.

Without Ray (plain calls in tests, local functions) the guard does nothing.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

log = logging.getLogger(__name__)

# map_batches(max_retries=...) for a stage under the guard: up to 4 killer rows in one block (or
# fewer plus other worker deaths) before the job fails.
MAX_RETRIES = 5
NAMESPACE = "e2v_poison"
INJECT_ENV = "E2V_INJECT_CRASH"


def maybe_crash(stage: str, key: str) -> None:
    """Test hook: die like a crashing C decoder (exit status 134, as after abort()) when the
    environment variable E2V_INJECT_CRASH is a substring of "<stage>:<key>" (e.g. "decode:bad.wav").
    Set only by tests; unset it costs one dictionary lookup."""
    target = os.environ.get(INJECT_ENV)
    if target and target in f"{stage}:{key}":
        os._exit(134)


class PoisonGuard:
    """One attempt at one block of rows in one stage; see the module docstring."""

    def __init__(self, ids: Sequence[Any], *, stage: str) -> None:
        self.stage = stage
        self.attempt = 1
        self._kv = _kv()
        self._crashed: dict[str, int] = {}  # row id -> the attempt that died on it
        self._state: dict[str, Any] = {}
        if self._kv is not None:
            digest = hashlib.sha1("\0".join(map(str, ids)).encode()).hexdigest()
            self.key = f"{_job_id()}/{stage}/{digest}"

    def __enter__(self) -> PoisonGuard:
        if self._kv is None:
            return self
        fresh = {"attempt": 1, "inflight": None, "crashed": {}}
        if not self._kv._internal_kv_put(self.key, json.dumps(fresh), False, namespace=NAMESPACE):
            return self  # the first attempt
        state = json.loads(self._kv._internal_kv_get(self.key, namespace=NAMESPACE))
        state["attempt"] += 1
        if state["inflight"] is not None:  # the previous attempt died on this row
            state["crashed"][state["inflight"]] = state["attempt"] - 1
            state["inflight"] = None
        self.attempt, self._crashed, self._state = state["attempt"], state["crashed"], state
        self._put()
        return self

    def __exit__(self, exc_type: object, *rest: object) -> None:
        if self._kv is not None and exc_type is None:
            self._kv._internal_kv_del(self.key, namespace=NAMESPACE)

    def crashed(self, row_id: Any, name: str) -> str | None:
        """The error text for a row that killed an earlier attempt's worker, else None."""
        attempt = self._crashed.get(str(row_id))
        if attempt is None:
            return None
        log.warning("%s: skipping %s: its worker died on it in attempt %d", self.stage, name, attempt)
        return (
            f"{self.stage}: WorkerCrashed: the worker process died while processing {name} "
            f"(attempt {attempt}); the row is skipped"
        )

    @contextmanager
    def row(self, row_id: Any) -> Iterator[None]:
        """Wrap one row's work: on retries its id is recorded while the work runs."""
        if self.attempt == 1:
            yield
            return
        self._state["inflight"] = str(row_id)
        self._put()
        try:
            yield
        finally:
            self._state["inflight"] = None
            self._put()

    def _put(self) -> None:
        self._kv._internal_kv_put(self.key, json.dumps(self._state), True, namespace=NAMESPACE)


def forget_job() -> int:
    """Delete this Ray job's guard keys (blocks whose attempts all failed); for the driver at the
    end of a job. -> how many."""
    kv = _kv()
    return 0 if kv is None else kv._internal_kv_del(f"{_job_id()}/", del_by_prefix=True, namespace=NAMESPACE)


def _kv() -> Any:
    """Ray's internal KV module when this process is connected to a Ray cluster, else None."""
    try:
        import ray
        from ray.experimental import internal_kv
    except ImportError:
        return None
    return internal_kv if ray.is_initialized() and internal_kv._internal_kv_initialized() else None


def _job_id() -> str:
    import ray

    return ray.get_runtime_context().get_job_id()
