"""One writer per output: runs in separate processes race for the lease on a local directory."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import threading
import time
from datetime import datetime

import pytest

from pipeline.lease import LEASE_NAME, STALL_ENV, LeaseHeld, LeaseLost, _take_over, acquire
from pipeline.storage import Storage

CTX = mp.get_context("spawn")  # a clean interpreter per contender, as separate runs would be


def _contend(output: str, ttl_s: float, barrier, results, release) -> None:
    """One run: acquire at the barrier, report, hold the lease until told to let go."""
    barrier.wait()
    try:
        lease = acquire(Storage(), output, ttl_s=ttl_s, holder={"config": f"job-{os.getpid()}.yaml"})
    except LeaseHeld as e:
        results.put(("held", str(e)))
        return
    results.put(("won", lease.run_id))
    release.wait(60)
    lease.release()


def _race(output: str, n: int, ttl_s: float = 30.0) -> list[tuple[str, str]]:
    barrier, results, release = CTX.Barrier(n), CTX.Queue(), CTX.Event()
    procs = [CTX.Process(target=_contend, args=(output, ttl_s, barrier, results, release)) for _ in range(n)]
    for p in procs:
        p.start()
    out = [results.get(timeout=60) for _ in range(n)]
    release.set()
    for p in procs:
        p.join(60)
        assert p.exitcode == 0
    return out


def _hold_until_killed(output: str, ttl_s: float, ready) -> None:
    acquire(Storage(), output, ttl_s=ttl_s)
    ready.set()
    time.sleep(600)


def _lease_file(output) -> dict:
    return json.loads((output / LEASE_NAME).read_text())


def test_racing_runs_exactly_one_wins(tmp_path):
    out = _race(str(tmp_path), n=4)
    won = [v for k, v in out if k == "won"]
    held = [v for k, v in out if k == "held"]
    assert len(won) == 1 and len(held) == 3
    # every loser is told who holds it and how to proceed
    for msg in held:
        assert won[0] in msg and "pid" in msg and "lease expires" in msg and "job-" in msg
        assert "another output path" in msg
    # the winner released at the end: nothing left behind, the next run gets it
    assert os.listdir(tmp_path) == []
    acquire(Storage(), str(tmp_path)).release()


def test_second_run_sees_holder_and_release_frees(tmp_path):
    lease = acquire(Storage(), str(tmp_path), holder={"config": "/etc/job.yaml"})
    rec = _lease_file(tmp_path)
    assert rec["run_id"] == lease.run_id and rec["pid"] == os.getpid() and rec["config"] == "/etc/job.yaml"
    with pytest.raises(LeaseHeld) as e:
        acquire(Storage(), str(tmp_path))
    for part in (lease.run_id, rec["host"], str(os.getpid()), rec["started_at"], rec["expires_at"]):
        assert part in str(e.value)
    lease.release()
    assert not (tmp_path / LEASE_NAME).exists()
    with acquire(Storage(), str(tmp_path)) as again:
        assert _lease_file(tmp_path)["run_id"] == again.run_id != lease.run_id
    assert not (tmp_path / LEASE_NAME).exists()


def test_dead_run_is_taken_over_after_ttl(tmp_path):
    ready = CTX.Event()
    p = CTX.Process(target=_hold_until_killed, args=(str(tmp_path), 1.0, ready))
    p.start()
    assert ready.wait(60)
    dead = _lease_file(tmp_path)
    with pytest.raises(LeaseHeld):  # alive: renewed
        acquire(Storage(), str(tmp_path))
    os.kill(p.pid, signal.SIGKILL)
    p.join(10)
    while time.time() < _epoch(_lease_file(tmp_path)["expires_at"]):
        time.sleep(0.2)
    with acquire(Storage(), str(tmp_path), ttl_s=30) as lease:
        assert _lease_file(tmp_path)["run_id"] == lease.run_id != dead["run_id"]
    assert os.listdir(tmp_path) == []  # no takeover marker left


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()


def test_racing_takeover_of_an_expired_lease_has_one_winner(tmp_path):
    stale = {"run_id": "dead", "host": "h", "pid": 1, "started_at": "2020-01-01T00:00:00+00:00"}
    stale["expires_at"] = "2020-01-01T00:01:00+00:00"
    (tmp_path / LEASE_NAME).write_text(json.dumps(stale))
    out = _race(str(tmp_path), n=4)
    assert sorted(k for k, _ in out) == ["held", "held", "held", "won"]
    assert os.listdir(tmp_path) == []  # the winner released; no marker left


def test_late_racer_does_not_delete_the_new_lease(tmp_path):
    """B read the same expired lease as A but is slower: after A took over, B's takeover must leave
    A's lease alone (deleting by name alone would let both win)."""
    storage = Storage()
    stale = {"run_id": "dead", "host": "h", "pid": 1, "started_at": "2020-01-01T00:00:00+00:00"}
    stale["expires_at"] = "2020-01-01T00:01:00+00:00"
    (tmp_path / LEASE_NAME).write_text(json.dumps(stale))
    with acquire(storage, str(tmp_path)) as a:
        _take_over(storage, str(tmp_path / LEASE_NAME), stale, ttl_s=30)
        assert _lease_file(tmp_path)["run_id"] == a.run_id
        with pytest.raises(LeaseHeld):
            acquire(storage, str(tmp_path))


def test_renewal_keeps_the_lease_past_its_ttl(tmp_path):
    with acquire(Storage(), str(tmp_path), ttl_s=1.5) as lease:
        first = _epoch(_lease_file(tmp_path)["expires_at"])
        while time.time() < first + 1.0:  # well past the first expiry
            time.sleep(0.1)
        assert _epoch(_lease_file(tmp_path)["expires_at"]) > first
        with pytest.raises(LeaseHeld):
            acquire(Storage(), str(tmp_path))
        lease.check()


def test_taken_over_lease_reports_lost(tmp_path):
    storage = Storage()
    lease = acquire(storage, str(tmp_path), ttl_s=30)
    rec = _lease_file(tmp_path)
    (tmp_path / LEASE_NAME).write_text(json.dumps({**rec, "run_id": "intruder"}))
    with pytest.raises(LeaseLost, match=r"another run \(intruder\) took it over"):
        lease.renew()  # what the renewer thread does every ttl/4
    with pytest.raises(LeaseLost):
        lease.check()
    lease.release()
    assert _lease_file(tmp_path)["run_id"] == "intruder"  # release leaves another run's lease alone


def test_unreadable_lease_file_is_a_clear_error(tmp_path):
    (tmp_path / LEASE_NAME).write_text("{not json")
    with pytest.raises(LeaseHeld, match="unreadable lease file .*_lease.json.*delete it"):
        acquire(Storage(), str(tmp_path))


def test_a_live_lease_of_a_dead_process_on_this_host_is_taken_over_at_once(tmp_path):
    """kill -9 of a run leaves its lease; the rerun on the same host need not wait for the ttl."""
    import json
    import socket
    import subprocess
    import sys
    from datetime import datetime, timedelta, timezone

    from pipeline.lease import LEASE_NAME, _pid_space, acquire
    from pipeline.storage import Storage

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    soon = (datetime.now(timezone.utc) + timedelta(minutes=5)).isoformat()
    record = {
        "run_id": "killed",
        "host": socket.gethostname(),
        "pid": dead.pid,
        "pid_space": _pid_space(),  # this host's kernel boot and PID namespace
        "started_at": soon,
        "expires_at": soon,
        "ttl_s": 300,
    }
    (tmp_path / LEASE_NAME).write_text(json.dumps(record))
    lease = acquire(Storage(), str(tmp_path), ttl_s=30)
    try:
        assert json.loads((tmp_path / LEASE_NAME).read_text())["run_id"] == lease.run_id != "killed"
    finally:
        lease.release()


def _stall_renewals(monkeypatch, tmp_path) -> None:
    """Hold the renew thread back (the seam a paused or starved thread stands in for)."""
    flag = tmp_path / "stall"
    flag.write_text("")
    monkeypatch.setenv(STALL_ENV, str(flag))


def test_check_refuses_once_the_clock_nears_expiry_without_any_renewal_having_run(tmp_path, monkeypatch):
    """A paused run wakes up with its lease expired and its renew thread not yet run: the check
    before a commit must see that from the clock, not wait for the renew thread."""
    _stall_renewals(monkeypatch, tmp_path)
    out = tmp_path / "out"
    lease = acquire(Storage(), str(out), ttl_s=2.0)
    expires = _epoch(_lease_file(out)["expires_at"])  # as written, to the millisecond
    safe_until = expires - 0.5  # a ttl/4 margin
    assert lease.check() == pytest.approx(safe_until, abs=0.002)  # the commit's deadline
    checked = []
    while True:  # check until it refuses: the moment it does is the margin's start, by the clock
        try:
            lease.check()
        except LeaseLost as e:
            refused_at = time.time()
            assert "not renewed in time" in str(e)
            break
        checked.append(time.time())
        time.sleep(0.01)
    assert checked and max(checked) < safe_until <= refused_at < safe_until + 0.25, (
        max(checked) - safe_until,
        refused_at - safe_until,
    )
    assert _lease_file(out)["generation"] == 0  # no renewal ran: the clock alone decided
    lease.release()
    assert (out / LEASE_NAME).exists()  # at the margin it may be taken over any moment: left alone


def test_release_inside_the_margin_leaves_the_lease_file(tmp_path, monkeypatch):
    """Before the margin a run deletes its lease on release; inside it (another run may take the
    lease over any moment) it leaves the file alone."""
    _stall_renewals(monkeypatch, tmp_path)
    early = acquire(Storage(), str(tmp_path / "early"), ttl_s=2.0)
    early.release()
    assert not (tmp_path / "early" / LEASE_NAME).exists()
    late = acquire(Storage(), str(tmp_path / "late"), ttl_s=2.0)
    inside = _epoch(_lease_file(tmp_path / "late")["expires_at"]) - 0.5 + 0.05
    while time.time() < inside:  # inside the last ttl/4, before the expiry
        time.sleep(0.01)
    late.release()
    assert (tmp_path / "late" / LEASE_NAME).exists()


@pytest.mark.parametrize("where", ["local", pytest.param("s3", marks=pytest.mark.s3)])
def test_a_late_renewal_cannot_overwrite_a_lease_another_run_took_over(where, tmp_path, monkeypatch, request):
    """A renewal starts in time, but its write is held up (storage retries, a paused process) past
    the expiry; meanwhile another run takes the lease over. When the write finally goes out it must
    fail, and the other run's lease stays."""
    _stall_renewals(monkeypatch, tmp_path)
    if where == "s3":
        client, bucket = request.getfixturevalue("s3_bucket")
        storage, out = Storage(endpoint_url=request.getfixturevalue("s3_server")), f"s3://{bucket}/out"
        storage.exists(out)  # the S3 client is built (seconds) before the lease's clock starts
    else:
        storage, out = Storage(), str(tmp_path / "out")
    a = acquire(storage, out, ttl_s=3.0)
    taken: list = []
    write = a.storage.replace_if_version

    def late(uri, data, version):
        while time.time() < a.expires_at + 0.05:
            time.sleep(0.02)
        with Storage.deadline(None):  # another run, and a request sent in time that lands late
            taken.append(acquire(storage, out, ttl_s=30))  # B takes the expired lease over
            return write(uri, data, version)

    a.storage.replace_if_version = late
    with pytest.raises(LeaseLost, match="took it over"):
        a.renew()
    (b,) = taken
    holder = json.loads(storage.read_bytes(f"{out}/{LEASE_NAME}"))
    assert holder["run_id"] == b.run_id != a.run_id
    with pytest.raises(LeaseLost):
        a.check()
    a.release()  # must not delete B's lease either
    assert json.loads(storage.read_bytes(f"{out}/{LEASE_NAME}"))["run_id"] == b.run_id
    b.release()


def _failing_puts(s3_server):
    """A proxy to S3 that answers every PUT with 503 SlowDown while `failing` is set."""
    import threading

    from .test_storage import FaultProxy

    failing = threading.Event()
    return FaultProxy(s3_server, fail_if=lambda method, path: failing.is_set() and method == "PUT"), failing


@pytest.mark.s3
def test_a_renewal_that_cannot_finish_within_its_deadline_gives_up_and_keeps_the_expiry(
    s3_server, s3_bucket, tmp_path, monkeypatch
):
    """Storage that fails every write (retried with backoff for ~10 s by default): a renewal gives
    up at its deadline, ttl/4 after it started, and the lease keeps the expiry it had."""
    _stall_renewals(monkeypatch, tmp_path)
    _, bucket = s3_bucket
    proxy, failing = _failing_puts(s3_server)
    with proxy:
        storage, out = Storage(endpoint_url=proxy.url), f"s3://{bucket}/out"
        storage.exists(out)  # the S3 client is built (seconds) before the lease's clock starts
        lease = acquire(storage, out, ttl_s=4.0)
        before = storage.read_bytes(f"{out}/{LEASE_NAME}")
        failing.set()
        started = time.time()
        with pytest.raises(OSError):
            lease.renew()
        gave_up = time.time() - started
        failing.clear()
        assert 1.0 - 0.05 <= gave_up < 2.5, gave_up  # ttl/4 (without a deadline: ~10 s of retries)
        assert len(proxy.failures) >= 2  # it retried within the deadline
        assert storage.read_bytes(f"{out}/{LEASE_NAME}") == before
        assert lease.expires_at == _epoch(json.loads(before)["expires_at"])
        lease.check()  # the lease is still held (the next renewal may succeed)
        lease.release()


@pytest.mark.s3
def test_the_marker_write_gives_up_at_the_lease_margin(s3_server, s3_bucket, tmp_path, monkeypatch):
    """A commit whose marker write keeps failing stops retrying when the lease's margin starts (ttl/4
    before the expiry this run last wrote), and no marker lands: past that moment another run may
    take the output over."""
    from pipeline.writer import Output, Pending, staged_uri

    _stall_renewals(monkeypatch, tmp_path)
    _, bucket = s3_bucket
    proxy, failing = _failing_puts(s3_server)
    with proxy:
        storage, out = Storage(endpoint_url=proxy.url), f"s3://{bucket}/out"
        storage.exists(out)
        lease = acquire(storage, out, ttl_s=4.0)
        expires = _epoch(_lease_file_at(storage, out)["expires_at"])
        storage.write_bytes_atomic(staged_uri(out, "u1", "part-u1-x.parquet"), b"rows")
        output = Output(storage, out, fence=lease.check)
        seen = Pending(files={"part-u1-x.parquet"})
        failing.set()
        with pytest.raises(OSError):
            output.commit("u1", seen)
        gave_up = time.time()
        failing.clear()
        assert expires - 1.0 - 0.05 <= gave_up < expires - 1.0 + 0.8, gave_up - expires  # ttl/4 margin
        assert not storage.exists(f"{out}/_units/u1.json")
        assert any("_units/u1.json" in path for _, path in proxy.failures)
        lease.release()


def _lease_file_at(storage: Storage, out: str) -> dict:
    return json.loads(storage.read_bytes(f"{out}/{LEASE_NAME}"))


def test_an_output_writes_nothing_once_its_lease_check_fails(tmp_path, monkeypatch):
    """After a failed attempt, or at the end, a run whose lease can no longer be trusted (paused,
    cut off) must not clean up staged files, publish them or write _run.json: another run may own
    the output by now."""
    from pipeline.writer import Output, Pending, staged_uri

    _stall_renewals(monkeypatch, tmp_path)
    out = tmp_path / "out"
    storage = Storage()
    lease = acquire(storage, str(out), ttl_s=2.0)
    output = Output(storage, str(out), fence=lease.check)
    output.open("append", {"schema": 3})
    staged = staged_uri(str(out), "u1", "part-u1-x.parquet")
    storage.write_bytes_atomic(staged, b"rows of an attempt that failed")
    while time.time() < _epoch(_lease_file(out)["expires_at"]) - 0.5:
        time.sleep(0.02)
    with pytest.raises(LeaseLost):
        output.reopen()  # would discard the staged file
    with pytest.raises(LeaseLost):
        output.commit("u1", Pending(files={"part-u1-x.parquet"}))
    with pytest.raises(LeaseLost):
        output.write_run_json({"rows": 1})
    with pytest.raises(LeaseLost):
        Output(storage, str(out), fence=lease.check).open("overwrite", {"schema": 3})
    assert storage.exists(staged) and not (out / "_units").exists() and not (out / "_run.json").exists()
    lease.release()


HOLDER = """
import sys, time
from pipeline.lease import acquire
from pipeline.storage import Storage

lease = acquire(Storage(), sys.argv[1], ttl_s=60)
print("held", flush=True)
time.sleep(600)
"""


def _free_pid() -> int:
    """A pid no process of this PID namespace has."""
    for pid in range(30000, 20000, -1):
        if not os.path.exists(f"/proc/{pid}"):
            return pid
    raise AssertionError("no free pid")


@pytest.mark.skipif(not shutil.which("unshare"), reason="needs util-linux unshare")
def test_a_live_run_in_another_pid_namespace_of_this_host_keeps_its_lease(tmp_path):
    """Containers with the host's network (docker --network host, Kubernetes hostNetwork) share the
    host's name but each has pids of its own: a run there was judged dead because its pid named no
    process here, and its live lease was taken over (two runs writing one output)."""
    import subprocess
    import sys

    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    out = tmp_path / "out"
    pid = _free_pid()
    # a PID namespace of its own (a container's), the holder's pid chosen to be free in this one
    cmd = f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid && {sys.executable} {script} {out}; true"
    unshare = ["unshare", "--user", "--map-root-user", "--pid", "--fork", "--mount-proc", "sh", "-c", cmd]
    probe = [*unshare[:-1], f"echo {pid - 1} > /proc/sys/kernel/ns_last_pid"]
    if subprocess.run(probe, capture_output=True).returncode != 0:
        pytest.skip("user and PID namespaces (with a writable ns_last_pid) are not available here")
    env = {**os.environ, "PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__)))}
    holder = subprocess.Popen(unshare, stdout=subprocess.PIPE, text=True, env=env, start_new_session=True)
    try:
        assert holder.stdout.readline() == "held\n"
        record = _lease_file(out)
        assert record["pid"] == pid and not os.path.exists(f"/proc/{pid}")  # no such pid here
        with pytest.raises(LeaseHeld, match="being written by another run"):
            acquire(Storage(), str(out), ttl_s=30)
        assert _lease_file(out)["run_id"] == record["run_id"]
    finally:
        os.killpg(holder.pid, signal.SIGKILL)
        holder.wait()


@pytest.mark.s3
def test_a_release_that_storage_refuses_leaves_the_lease_to_expire(
    s3_server, s3_bucket, tmp_path, monkeypatch
):
    """The run is done (its _run.json written) and lets its lease go while the store fails every
    request: release() raised StorageUnavailable from run()'s `finally`, so a finished run exited 1
    (and a bad manifest's exit 2, a SIGTERM's 143, became 1) with Ray left running. The lease is
    only a courtesy to the next run by then: it expires by itself."""
    from .test_storage import FaultProxy

    _stall_renewals(monkeypatch, tmp_path)
    _, bucket = s3_bucket
    failing = threading.Event()
    proxy = FaultProxy(s3_server, fail_if=lambda method, path: failing.is_set())
    with proxy:
        storage = Storage(endpoint_url=proxy.url, retry_backoff_s=0.01, retry_backoff_max_s=0.05)
        out = f"s3://{bucket}/out"
        storage.exists(out)  # the S3 client is built (seconds) before the lease's clock starts
        lease = acquire(storage, out, ttl_s=30.0)
        failing.set()
        lease.release()  # no exception
        assert proxy.failures  # it tried
        failing.clear()
        assert json.loads(storage.read_bytes(f"{out}/{LEASE_NAME}"))["run_id"] == lease.run_id
