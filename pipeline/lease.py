"""One writer per output directory: the lease file `<output>/_lease.json`.

A run creates the lease only if no file is there (create-if-absent: exactly one of two racing runs
succeeds), renews it from a daemon thread every ttl/4 while it runs, and deletes it when done. A
second run while the lease is live fails with `LeaseHeld`, which names the holder. A lease whose
`expires_at` has passed belongs to a run that died; the next run takes it over, at once when the
holder ran on the same host (name and PID namespace) and its process is gone.

Safety does not rest on the renew thread noticing a loss in time:
* `Lease.check()`, called before every commit, compares the clock with the `expires_at` this run
  last wrote, minus a margin (ttl/4): a run paused or cut off from storage stops committing before
  its lease can expire, whether or not the renew thread has run since. It returns the moment by which
  the commit's writes must be done (`Storage.deadline`).
* A renewal has a deadline of ttl/4 (storage retries and request timeouts included); one that cannot
  finish by then fails, and the lease keeps the expiry it had.
* A renewal is conditional on the file being the one this run wrote last: an `If-Match` PUT on the
  ETag on S3 (the store decides); elsewhere the content is compared right before an atomic replace
  (best effort: a takeover in between those two steps is overwritten). It also never writes once
  the lease has expired by this run's clock.

Expiry compares the wall clocks of different hosts, so they must agree to well within the margin
(NTP does). A write already sent when its deadline passes can still land up to a request timeout
later: that, and clock skew, is what the margin is for.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import socket
import threading
import time
import uuid
from datetime import datetime, timezone
from typing import Any

from .redact import redact_data
from .storage import ConditionFailed, Storage, join

log = logging.getLogger(__name__)

LEASE_NAME = "_lease.json"
_CORE = ("run_id", "host", "pid", "pid_space", "started_at", "expires_at", "ttl_s", "generation")
# test seam: while the file this names exists, the renew thread renews nothing (a thread held back)
STALL_ENV = "E2V_INJECT_RENEW_STALL"


class LeaseHeld(RuntimeError):
    """Another run holds the output's lease (or is taking it over right now)."""


class LeaseLost(RuntimeError):
    """Our lease expired or was taken over while we ran: another run may be writing the output."""


def acquire(
    storage: Storage,
    output: str,
    *,
    ttl_s: float = 60.0,
    holder: dict[str, Any] | None = None,
    run_id: str | None = None,
) -> Lease:
    """Take the lease on `output` (a directory path or s3:// prefix) and start renewing it.

    `holder`: extra JSON-able facts about this run for the message another run sees (config path...).
    Raises `LeaseHeld` while another run's lease is live."""
    uri = join(output, LEASE_NAME)
    run_id = run_id or uuid.uuid4().hex
    for _ in range(5):
        record = _new_record(run_id, ttl_s, holder or {})
        if storage.write_bytes_if_absent(uri, _dump(record)):
            # nobody else writes a live lease: the version read now is the one just created
            return Lease(storage, uri, record, ttl_s, storage.version(uri))
        current = _read(storage, uri)
        if current is None:  # released between our two calls
            continue
        if not _expired(current) and not _holder_gone(current):
            raise LeaseHeld(_held_message(output, uri, current))
        log.warning("taking over the expired lease of run %s on %s", current.get("run_id"), output)
        _take_over(storage, uri, current, ttl_s)
    raise LeaseHeld(f"could not take the lease {uri}: other runs keep racing for it; try again")


class Lease:
    """A held lease; renews itself until `release()` (or the end of a `with` block)."""

    def __init__(
        self, storage: Storage, uri: str, record: dict[str, Any], ttl_s: float, version: str
    ) -> None:
        self.uri, self.ttl_s = uri, ttl_s
        self.margin_s = ttl_s / 4
        self.renew_deadline_s = ttl_s / 4
        # the renew thread's storage: its requests time out within a renewal's deadline
        timeout = max(min(storage.request_timeout_s, self.renew_deadline_s), 0.1)
        self.storage = dataclasses.replace(
            storage,
            connect_timeout_s=min(storage.connect_timeout_s, timeout),
            request_timeout_s=timeout,
            retries={},
        )
        # its client is built now (a fraction of a second, more on a busy host), not inside the first
        # renewal's deadline; bounded like a renewal
        try:
            with self.storage.deadline(time.time() + self.renew_deadline_s):
                self.storage.exists(uri)
        except OSError:  # TimeoutError included
            pass  # the renewal retries, and fails within its deadline if storage stays down
        self._state = (record, version)  # replaced as a whole: the main thread reads it unlocked
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._renew_loop, name="lease-renew", daemon=True)
        self._thread.start()

    @property
    def record(self) -> dict[str, Any]:
        return self._state[0]

    @property
    def run_id(self) -> str:
        return self.record["run_id"]

    @property
    def expires_at(self) -> float:
        """When the lease this run last wrote expires (epoch seconds)."""
        return _parse(self.record["expires_at"])

    def check(self) -> float:
        """Call before committing: raise `LeaseLost` if the lease was lost, or if less than the
        margin is left before it expires by this host's clock (the renew thread need not have run).
        -> the epoch time by which the commit's writes must be done."""
        if self._lost:
            raise LeaseLost(f"lost the lease {self.uri}: {self._lost}; another run may be writing here")
        safe_until = self.expires_at - self.margin_s
        if time.time() >= safe_until:
            raise LeaseLost(
                f"lost the lease {self.uri}: it was not renewed in time (it expires at "
                f"{self.record['expires_at']}, less than {self.margin_s:.0f} s from now; this run was paused "
                "or cut off from storage); another run may take it over, so this run commits nothing more"
            )
        return safe_until

    def renew(self) -> None:
        """Push `expires_at` a ttl ahead, only if the file is still the one this run wrote last and
        the lease has not expired; within `renew_deadline_s` or not at all."""
        with self._lock:
            if self._lost:
                raise LeaseLost(f"lost the lease {self.uri}: {self._lost}")
            start = time.time()
            record, version = self._state
            if start >= self.expires_at:
                self._lose("it expired before this run could renew it")
            new = {
                **record,
                "expires_at": _iso(start + self.ttl_s),
                "generation": record.get("generation", 0) + 1,
            }
            try:
                with self.storage.deadline(min(start + self.renew_deadline_s, self.expires_at)):
                    version = self.storage.replace_if_version(self.uri, _dump(new), version)
            except ConditionFailed:
                # a read to tell our own late write from a takeover: it gets a deadline of its own
                with self.storage.deadline(time.time() + self.renew_deadline_s):
                    self._adopt_or_lose()
                return
            self._state = (new, version)

    def _adopt_or_lose(self) -> None:
        """The file is not the one we wrote last. Only this run writes records with its run id, so a
        file that still holds it is our own earlier renewal that landed after its call had given
        up: adopt it (and its expiry). Anything else means the lease is gone."""
        current = _read(self.storage, self.uri)
        if current is None:
            self._lose("the lease file was deleted")
        if current.get("run_id") != self.run_id:
            self._lose(f"another run ({current.get('run_id')}) took it over")
        self._state = (current, self.storage.version(self.uri))

    def _lose(self, why: str) -> None:
        self._lost = why
        raise LeaseLost(f"lost the lease {self.uri}: {why}; another run may be writing here")

    def release(self) -> None:
        """Stop renewing and delete the lease file if it is still ours and live (once it expired,
        another run may have taken it over between our read and the delete)."""
        self._stop.set()
        if self._thread is not threading.current_thread():
            self._thread.join()
        if self._lost or time.time() >= self.expires_at - self.margin_s:
            return
        # best effort, within the margin: a store that fails here (the run's work is done or has
        # already failed) must not turn the run's outcome into a storage error; the lease expires
        try:
            with self.storage.deadline(self.expires_at - self.margin_s):
                current = _read(self.storage, self.uri)
                if current is not None and current.get("run_id") == self.run_id:
                    _delete_quietly(self.storage, self.uri)
        except (OSError, LeaseHeld) as e:  # LeaseHeld: the file no longer parses
            log.warning(
                "could not release the lease %s (%s: %s); it expires by itself within %.0f s",
                self.uri,
                type(e).__name__,
                e,
                self.expires_at - time.time(),
            )

    def __enter__(self) -> Lease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def _renew_loop(self) -> None:
        while not self._stop.wait(self.ttl_s / 4):
            if _stalled():
                continue
            try:
                self.renew()
            except LeaseLost as e:
                log.error("%s", e)
                return
            except Exception as e:  # noqa: BLE001 - a storage hiccup: the next period tries again
                log.warning("could not renew the lease %s: %s", self.uri, e)


def _stalled() -> bool:
    flag = os.environ.get(STALL_ENV)
    return bool(flag) and os.path.exists(flag)


def _take_over(storage: Storage, uri: str, stale: dict[str, Any], ttl_s: float) -> None:
    """Delete the expired lease `stale` so that the caller can create its own.

    Deleting by name alone would race: A deletes and creates its lease, then B (which read the same
    stale lease) deletes A's. So racers first create a marker named after the stale run; only its
    creator deletes, and only if the file still holds exactly `stale`."""
    marker = f"{uri}.takeover-{stale.get('run_id')}"
    if not storage.write_bytes_if_absent(marker, _dump({"expires_at": _iso(time.time() + ttl_s)})):
        mark = _read(storage, marker)
        if mark is not None and not _expired(mark):
            raise LeaseHeld(
                f"another run is taking over the expired lease {uri} of run {stale.get('run_id')} "
                "right now; try again in a moment"
            )
        # A run died while taking over (or the marker is left from an old takeover): clear it; the
        # caller's next round tries again.
        _delete_quietly(storage, marker)
        return
    try:
        if _read(storage, uri) == stale:
            _delete_quietly(storage, uri)
    finally:
        _delete_quietly(storage, marker)


def _new_record(run_id: str, ttl_s: float, holder: dict[str, Any]) -> dict[str, Any]:
    now = time.time()
    core = {
        "run_id": run_id,
        "host": socket.gethostname(),
        "pid": os.getpid(),
        "pid_space": _pid_space(),
        "started_at": _iso(now),
        "expires_at": _iso(now + ttl_s),
        "ttl_s": ttl_s,
        "generation": 0,
    }
    return {**holder, **core}


def _held_message(output: str, uri: str, r: dict[str, Any]) -> str:
    extra = "".join(f", {k}: {v}" for k, v in r.items() if k not in _CORE)
    return (
        f"{output} is being written by another run (run {r.get('run_id')} on host {r.get('host')}, "
        f"pid {r.get('pid')}, started {r.get('started_at')}, lease expires {r.get('expires_at')}{extra}). "
        "Two runs writing one output would corrupt it: wait for that run to finish, or write to another "
        "output path. If that run is dead, its lease expires by itself and the next run takes over; to "
        f"take over at once, make sure it is not running and delete {uri}."
    )


def _read(storage: Storage, uri: str) -> dict[str, Any] | None:
    try:
        data = storage.read_bytes(uri)
    except FileNotFoundError:
        return None
    try:
        record = json.loads(data)
        _parse(record["expires_at"])
    except (ValueError, KeyError, TypeError) as e:
        raise LeaseHeld(
            f"unreadable lease file {uri} ({type(e).__name__}: {e}); if no run is writing this output, "
            "delete it"
        ) from None
    return record


def _expired(record: dict[str, Any]) -> bool:
    return time.time() >= _parse(record["expires_at"])


def _holder_gone(record: dict[str, Any]) -> bool:
    """The holder ran on this host and its process no longer exists (killed, crashed): its lease need
    not be waited out. Another host's holder can only expire. A reused pid reads as alive: the safe side.
    "This host" is the host name and the pid space: containers with the host's network share its name
    but not its pids, and machines can share a name; a holder whose pid space is not ours (or was not
    recorded) can only expire."""
    if record.get("host") != socket.gethostname() or not isinstance(record.get("pid"), int):
        return False
    if record.get("pid_space") != _pid_space():
        return False
    if record["pid"] == os.getpid():
        return False
    try:
        os.kill(record["pid"], 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False  # it exists, owned by someone else
    return False


def _pid_space() -> str | None:
    """Where this process's pid names it: the kernel's boot id and the PID namespace (Linux); None
    where neither can be read (then the host name alone says it)."""
    try:
        with open("/proc/sys/kernel/random/boot_id") as f:
            boot = f.read().strip()
        return f"{boot}/{os.readlink('/proc/self/ns/pid')}"
    except OSError:
        return None


def _delete_quietly(storage: Storage, uri: str) -> None:
    try:
        storage.delete(uri)
    except FileNotFoundError:
        pass


def _dump(record: dict[str, Any]) -> bytes:
    # the holder's facts (the manifest URL) may carry a signature: the file is read by other runs
    return json.dumps(redact_data(record), indent=1, default=str).encode()


def _iso(t: float) -> str:
    return datetime.fromtimestamp(t, timezone.utc).isoformat(timespec="milliseconds")


def _parse(s: str) -> float:
    return datetime.fromisoformat(s).timestamp()
