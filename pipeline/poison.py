"""Isolate a row whose processing kills its worker process (a crashing C decoder, an OOM kill).

Everything is remembered in Ray's cluster-wide key-value store under the run's own namespace
(`scope(run_id)`): two jobs on one manifest never share it, and the driver deletes it when the run
ends (`forget`).

Decode tasks: Ray retries a task whose worker died on the same block of rows. A `Guard` remembers
per block which row was in flight when an attempt died: from the second attempt on, each row is
recorded before it is processed, and a row that was in flight when an earlier attempt died is not
processed again but becomes an error row. A first attempt costs two key-value operations per block.

Model calls: a dead model actor fails the pipeline's attempt, and the restart cuts blocks however
it likes, so nothing is keyed by block. Every model call records the ids of its rows (`InFlight`)
before it runs and clears them after; after a failed attempt the driver turns what was left in
flight into suspects (`collect_suspects`), and the next attempt runs each suspect row alone in a
separate process (`isolate.py`): the row that kills that process becomes an error row, the others
get their results, and the model actor lives on. One poison row costs one restart.

`maybe_crash` is a test seam: it ends the process on the rows named by `E2V_INJECT_CRASH`
(`<stage>:<substring of the row's path or id>`), as a crashing decoder would.
"""

from __future__ import annotations

import hashlib
import json
import os
import uuid

from .redact import redact

NAMESPACE = "emotion2vec-poison"
CRASH_ENV = "E2V_INJECT_CRASH"
TASK_RETRIES = 10  # retries of a decode task whose worker died: each poison row costs one
_IN_FLIGHT = "model/in-flight/"
_BROKEN = "model/broken-device/"  # + actor id -> the node whose device failed under it
_SUSPECTS = "model/suspects"


def scope(run_id: str) -> str:
    """The key-value namespace of one run."""
    return f"{NAMESPACE}/{run_id}"


class Guard:
    """Per decode block: `attempt` counts tries, `poisoned` are ids that killed an earlier try."""

    def __init__(self, stage: str, ids: list[str], namespace: str = NAMESPACE):
        digest = hashlib.sha1("\n".join(ids).encode("utf-8")).hexdigest()[:20]
        self._key = f"{stage}/{digest}"
        self._ns = namespace
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
            self._kv._internal_kv_del(self._key, namespace=self._ns)

    def _get(self) -> dict:
        raw = self._kv._internal_kv_get(self._key, namespace=self._ns)
        return json.loads(raw) if raw else {}

    def _put(self, state: dict) -> None:
        self._kv._internal_kv_put(self._key, json.dumps(state), overwrite=True, namespace=self._ns)

    def message(self, what: str) -> str:
        return (
            f"WorkerCrashed: the worker process died while processing {redact(what)} (an earlier "
            f"attempt of its block); the row is skipped so the rest can finish"
        )


class InFlight:
    """One model actor's record of the rows of its calls in flight: one key per call, named by the
    actor's Ray actor id and the call (a GPU actor runs two calls at once)."""

    def __init__(self, namespace: str | None):
        self._kv = _kv() if namespace else None
        self._ns = namespace
        self._actor = _actor_id() or uuid.uuid4().hex

    def record(self, ids: list[str]) -> str:
        """-> the key of this call, for `clear`."""
        key = f"{_IN_FLIGHT}{self._actor}/{uuid.uuid4().hex[:12]}"
        if self._kv is not None:
            self._kv._internal_kv_put(key, json.dumps(ids), overwrite=True, namespace=self._ns)
        return key

    def clear(self, key: str) -> None:
        if self._kv is not None:
            self._kv._internal_kv_del(key, namespace=self._ns)

    def device_broken(self, node: str) -> None:
        """This actor ends on a device error that breaks its process (gpu_errors.py): its node is
        noted for the driver, which keeps the pool off a node whose GPU keeps failing."""
        if self._kv is not None:
            key = _BROKEN + self._actor
            self._kv._internal_kv_put(key, node, overwrite=True, namespace=self._ns)


def broken_devices(namespace: str) -> dict[str, int]:
    """Driver: node id -> model actors of this run that ended on a broken device there."""
    kv = _kv()
    if kv is None:
        return {}
    out: dict[str, int] = {}
    for key in kv._internal_kv_list(_BROKEN, namespace=namespace):
        node = kv._internal_kv_get(key, namespace=namespace)
        if node:
            name = node.decode() if isinstance(node, bytes) else node
            out[name] = out.get(name, 0) + 1
    return out


def collect_suspects(namespace: str, dead: set[str] | frozenset[str] = frozenset()) -> set[str]:
    """Driver, between attempts (no model actor of the failed attempt is left): the rows of the
    model calls left in flight join the run's suspects. Those of the actors in `dead` (died by
    accident) when any of them left a call in flight; else every call left in flight (the actors
    the pool killed when the attempt ended left theirs too). -> all suspects so far."""
    kv = _kv()
    if kv is None:
        return set()
    raw = kv._internal_kv_get(_SUSPECTS, namespace=namespace)
    suspects = set(json.loads(raw)) if raw else set()
    keys = kv._internal_kv_list(_IN_FLIGHT, namespace=namespace)
    names = [k.decode() if isinstance(k, bytes) else k for k in keys]
    of_dead = [k for k in names if k[len(_IN_FLIGHT) :].split("/")[0] in dead]
    for key in of_dead or names:
        ids = kv._internal_kv_get(key, namespace=namespace)
        suspects |= set(json.loads(ids)) if ids else set()
    for key in names:
        kv._internal_kv_del(key, namespace=namespace)
    kv._internal_kv_put(_SUSPECTS, json.dumps(sorted(suspects)), overwrite=True, namespace=namespace)
    return suspects


def forget(namespace: str) -> None:
    """Delete every key of the run (at its end, whatever the outcome)."""
    kv = _kv()
    if kv is not None:
        kv._internal_kv_del("", del_by_prefix=True, namespace=namespace)


def crashed_alone(what: str) -> str:
    """The error of a suspect row that killed the separate process it ran in, alone."""
    return (
        f"the model worker process died while processing {redact(what)} (run alone in a separate "
        "process, after it was in flight when a model worker died); the row is skipped so the rest can finish"
    )


def _actor_id() -> str | None:
    try:
        import ray

        return ray.get_runtime_context().get_actor_id() if ray.is_initialized() else None
    except Exception:  # noqa: BLE001 - outside an actor
        return None


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
