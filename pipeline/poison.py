"""Isolate a row whose processing kills its worker process (a crashing C decoder, an OOM kill).

Ray retries a task whose worker died on the same block of rows, so one poison file would kill every
attempt and fail the job. A `Guard` remembers, in Ray's cluster-wide key-value store, which row of a
block was in flight when an attempt died: from the second attempt on, each row is recorded before it
is processed, and a row that was in flight when an earlier attempt died is not processed again but
becomes an error row. A first attempt costs two key-value operations per block, not per row.

`maybe_crash` is a test seam: it ends the process on the rows named by `E2V_INJECT_CRASH`
(`<stage>:<substring of the row's path or id>`), as a crashing decoder would.
"""

from __future__ import annotations

import hashlib
import json
import os

NAMESPACE = "emotion2vec-poison"
CRASH_ENV = "E2V_INJECT_CRASH"
TASK_RETRIES = 10  # retries of a decode task whose worker died: each poison row costs one


class Guard:
    """Per block: `attempt` counts tries, `poisoned` are ids that killed an earlier try."""

    def __init__(self, stage: str, ids: list[str]):
        digest = hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest()[:20]
        self._key = f"{stage}/{digest}"
        self._kv = _kv()
        self.attempt = 1
        self.poisoned: set[str] = set()
        if self._kv is None:  # outside Ray: nothing retries, nothing to remember
            return
        state = self._get()
        self.attempt = state.get("attempt", 0) + 1
        self.poisoned = set(state.get("poisoned", []))
        if state.get("in_flight"):  # the row the last attempt died on
            self.poisoned.add(state["in_flight"])
        self._state = {"attempt": self.attempt, "poisoned": sorted(self.poisoned)}
        self._put(self._state)

    def before(self, row_id: str) -> None:
        """Record the row about to be processed (only on retries: a first attempt trusts its rows)."""
        if self._kv is not None and self.attempt > 1:
            self._put({**self._state, "in_flight": row_id})

    def done(self) -> None:
        if self._kv is not None:
            self._kv._internal_kv_del(self._key, namespace=NAMESPACE)

    def _get(self) -> dict:
        raw = self._kv._internal_kv_get(self._key, namespace=NAMESPACE)
        return json.loads(raw) if raw else {}

    def _put(self, state: dict) -> None:
        self._kv._internal_kv_put(self._key, json.dumps(state), overwrite=True, namespace=NAMESPACE)

    def message(self, what: str) -> str:
        return (
            f"WorkerCrashed: the worker process died while processing {what} (an earlier attempt of its "
            f"block); the row is skipped so the rest can finish"
        )


def _kv():
    try:
        import ray
        from ray.experimental import internal_kv
    except ImportError:
        return None
    if not ray.is_initialized() or not internal_kv._internal_kv_initialized():
        return None
    return internal_kv


def maybe_crash(stage: str, key: str) -> None:
    """Test hook: end this process, as a crashing native decoder would, on the rows the environment
    names. Unset in production."""
    spec = os.environ.get(CRASH_ENV)
    if not spec:
        return
    want_stage, _, needle = spec.partition(":")
    if want_stage == stage and needle and needle in key:
        os._exit(134)
