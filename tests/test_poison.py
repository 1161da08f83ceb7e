"""Rows that kill their worker: a real Ray Data job whose decoder dies on some rows still finishes."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa

from pipeline.poison import INJECT_ENV, MAX_RETRIES, NAMESPACE, PoisonGuard, maybe_crash

ROOT = Path(__file__).resolve().parents[1]


def fake_decode(batch: pa.Table, starts: str) -> pa.Table:
    """The shape of the job's CPU stage: per row, a result or an error; `starts` logs each row a
    worker process begins, so the test sees attempts independently of the guard."""
    ids, paths = batch["id"].to_pylist(), batch["path"].to_pylist()
    errors: list[str | None] = []
    sizes: list[int | None] = []
    with PoisonGuard(ids, stage="decode") as guard:
        for rid, path in zip(ids, paths, strict=True):
            err = guard.crashed(rid, path)
            if err is None:
                with open(starts, "a") as f:
                    f.write(f"{os.getpid()} {rid}\n")
                with guard.row(rid):
                    maybe_crash("decode", path)
                    size = len(path)
            errors.append(err)
            sizes.append(None if err else size)
    return batch.append_column("error", pa.array(errors, pa.string())).append_column(
        "size", pa.array(sizes, pa.int64())
    )


def test_rows_that_kill_the_worker_become_error_rows(ray_session, tmp_path):
    import ray
    from ray.experimental.internal_kv import _internal_kv_list

    ray.data.DataContext.get_current().enable_progress_bars = False
    # three blocks of four rows; the second holds two bad rows, so it needs two more retries
    paths = [f"b{i // 4}/{name}.wav" for i, name in enumerate("p q r s t u v w x y z o".split())]
    paths[1], paths[5], paths[7] = "b0/bad-a.wav", "b1/bad-b.wav", "b1/bad-c.wav"
    rows = [{"id": i, "path": p} for i, p in enumerate(paths)]
    starts = tmp_path / "starts.txt"
    ds = ray.data.from_items(rows, override_num_blocks=3).map_batches(
        fake_decode,
        batch_format="pyarrow",
        batch_size=None,
        fn_kwargs={"starts": str(starts)},
        max_retries=MAX_RETRIES,
        runtime_env={"env_vars": {INJECT_ENV: "/bad-"}},
    )
    out = sorted(ds.take_all(), key=lambda r: r["id"])

    assert [r["id"] for r in out] == list(range(12))  # every row exactly once, the job finished
    # Which attempt names each bad row: block 0 dies unexplained in attempt 1 and on bad-a in 2;
    # block 1 dies on bad-b in attempt 2 (attempt 1 recorded nothing) and on bad-c in 3.
    named_in = {1: 2, 5: 2, 7: 3}
    for r in out:
        if r["id"] in named_in:
            assert r["size"] is None
            assert r["error"] == (
                f"decode: WorkerCrashed: the worker process died while processing {r['path']} "
                f"(attempt {named_in[r['id']]}); the row is skipped"
            )
        else:
            assert r["error"] is None and r["size"] == len(r["path"])

    # Independent of the guard: the processes that began a bad row all died, bad-a and bad-b were
    # begun twice (attempts 1 and 2), bad-c once (attempts 1 and 2 died before reaching it).
    begun: dict[int, set[int]] = {}
    for line in starts.read_text().splitlines():
        pid, rid = map(int, line.split())
        begun.setdefault(rid, set()).add(pid)
    assert {rid: len(begun[rid]) for rid in named_in} == {1: 2, 5: 2, 7: 1}
    assert not any(_alive(pid) for rid in named_in for pid in begun[rid])
    # the guard cleaned up after every block that succeeded
    assert _internal_kv_list(f"{ray.get_runtime_context().get_job_id()}/", namespace=NAMESPACE) == []


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def test_guard_without_ray_only_runs_the_rows():
    guard = PoisonGuard([1, 2], stage="decode")
    with guard:
        assert guard.crashed(1, "a.wav") is None
        with guard.row(1):
            pass
    assert guard.attempt == 1


def test_maybe_crash_exits_134_only_for_a_matching_key():
    code = (
        "from pipeline.poison import maybe_crash; maybe_crash('decode', 's3://b/ok.wav'); "
        "maybe_crash('decode', 's3://b/bad.wav'); print('survived')"
    )
    run = lambda target: subprocess.run(  # noqa: E731
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env={**os.environ, "PYTHONPATH": str(ROOT), INJECT_ENV: target},
    )
    assert run("decode:s3://b/bad").returncode == 134
    assert run("model:").stdout == "survived\n"  # another stage's key does not match
    maybe_crash("decode", "bad.wav")  # unset in this process: a no-op
