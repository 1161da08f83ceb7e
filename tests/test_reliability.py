"""Dirty corpora and dying jobs: every manifest row ends up in the output exactly once."""

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as pads
import pytest
import soundfile as sf

from pipeline.cli import extract
from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint

from .conftest import kill_session, session_pids

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "samples" / "demo"


def job_config(tmp_path, manifest, model, out, extra="", unit=1000):
    """A job YAML; small `unit`s (manifest rows committed together) let a killed run leave commits."""
    cfg = tmp_path / f"job-{abs(hash((str(manifest), str(out), extra))) % 10**8}.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n  rows_per_unit: {unit}\n"
        f"model:\n  source: {model}\n  device: cpu\n  rows_per_call: 4\n"
        f"audio:\n  decode_batch_size: 4\n"
        f"output:\n  path: {out}\n" + extra
    )
    return cfg


def rows_of(out):
    return {r["id"]: r for r in pads.dataset(str(out), format="parquet").to_table().to_pylist()}


def assert_exactly_once(out, ids):
    n, distinct = duckdb.sql(
        f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{out}/**/*.parquet')"
    ).fetchall()[0]
    assert (n, distinct) == (len(ids), len(ids))
    assert set(rows_of(out)) == set(ids)


def repeated_manifest(tmp_path, copies):
    """The demo corpus referenced `copies` times under distinct ids (a bigger corpus, same audio)."""
    base = [json.loads(line) for line in (DEMO / "manifest.jsonl").read_text().splitlines()]
    rows = [{**r, "id": f"{r['id']}-{k}", "path": str(DEMO / r["path"])} for k in range(copies) for r in base]
    m = tmp_path / "big.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return m, [r["id"] for r in rows]


def wav(path, x, sr=16000, subtype="FLOAT"):
    sf.write(str(path), x, sr, format="WAV", subtype=subtype)
    return path


def test_bad_inputs_become_error_rows(ray_session, tiny_model_dir, tmp_path):
    d = tmp_path / "dirty"
    d.mkdir()
    good = DEMO / "clips" / "000_calm.flac"
    flac = good.read_bytes()
    files = {
        "good1": good,
        "good2": DEMO / "clips" / "003_angry.mp3",
        "silence": wav(d / "silence.wav", np.zeros(16000, np.float32), subtype="PCM_16"),
        "empty": d / "empty.wav",
        "header_only": wav(d / "header.wav", np.zeros(0, np.float32)),
        "truncated": d / "truncated.flac",
        "not_audio": d / "notes.wav",
        "m4a": d / "voice.m4a",
        "short": wav(d / "short.wav", np.zeros(300, np.float32)),
        "nan": wav(d / "nan.wav", np.r_[np.zeros(2000), np.nan, np.zeros(2000)].astype(np.float32)),
        "missing": d / "no-such-file.wav",
        "directory": d,
    }
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(flac[:60])
    files["not_audio"].write_text("these are meeting notes, not audio\n" * 20)
    files["m4a"].write_bytes(b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + b"\x00" * 2000)
    lines = [json.dumps({"id": k, "path": str(v), "note": k}) for k, v in files.items()]
    lines.append(json.dumps({"id": "no_path", "path": None, "note": "no_path"}))
    m = tmp_path / "dirty.jsonl"
    m.write_text("\n".join(lines))
    out = tmp_path / "out"
    cfg = job_config(tmp_path, m, tiny_model_dir, out, "  max_error_fraction: 1.0\n")
    assert extract.main(["--config", str(cfg)]) == 0

    rows = rows_of(out)
    assert_exactly_once(out, list(files) + ["no_path"])
    for k in ("good1", "good2", "silence"):
        assert rows[k]["error"] is None, rows[k]["error"]
        assert np.isfinite(rows[k]["embedding"]).all() and np.isfinite(rows[k]["scores"]).all()
    expect = {
        "empty": "decode: AudioError: .*empty.wav: empty file",
        "header_only": "decode: AudioError: .*header.wav: .*no samples",
        "truncated": "decode: AudioError: .*truncated.flac",
        "not_audio": "decode: AudioError: .*notes.wav: unsupported or unrecognised",
        "m4a": "decode: AudioError: .*voice.m4a: .*(corrupt|no audio stream|FFmpeg)",
        "short": "decode: AudioError: .*short.wav: too short: 300 samples",
        "nan": "decode: AudioError: .*nan.wav: contains non-finite",
        "missing": "fetch: FileNotFoundError: .*no-such-file.wav",
        "directory": "fetch: IsADirectoryError: .*dirty",
        "no_path": "input: ValueError: the manifest row has no audio path",
    }
    import re

    for k, pattern in expect.items():
        assert rows[k]["error"] and re.match(pattern, rows[k]["error"]), (k, rows[k]["error"])
        assert rows[k]["embedding"] is None and rows[k]["label"] is None and rows[k]["note"] == k
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"] == {"input": 13, "ok": 3, "error": 10, "skipped": 0}


def test_error_rows_are_retried_and_replaced_on_resume(ray_session, tiny_model_dir, tmp_path):
    audio = tmp_path / "late.flac"
    m = tmp_path / "m.jsonl"
    m.write_text(
        json.dumps({"id": "a", "path": str(DEMO / "clips/000_calm.flac")})
        + "\n"
        + json.dumps({"id": "late", "path": str(audio)})
    )
    out = tmp_path / "out"
    cfg = job_config(tmp_path, m, tiny_model_dir, out, "  max_error_fraction: 1.0\n")
    assert extract.main(["--config", str(cfg)]) == 0
    assert rows_of(out)["late"]["error"].startswith("fetch: FileNotFoundError")
    audio.write_bytes((DEMO / "clips/004_calm.flac").read_bytes())  # the file arrives
    assert extract.main(["--config", str(cfg)]) == 0
    assert_exactly_once(out, ["a", "late"])
    assert rows_of(out)["late"]["error"] is None
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"] == {"input": 2, "ok": 1, "error": 0, "skipped": 1}
    assert run["output_totals"]["replaced"] == 1


@pytest.mark.slow
def test_files_added_to_or_removed_from_a_folder_of_audio_are_processed_once_on_resume(
    ray_session, tiny_model_dir, tmp_path
):
    """A folder of audio is listed in name order: a file added between runs shifts every later file
    into the next unit, leaving the earlier units' counts as they were. Those units hold other rows
    now and are redone, not skipped: the new file is processed once and no file is written twice."""
    clips = tmp_path / "clips"
    clips.mkdir()
    for name in ("a", "c", "e", "g"):
        (clips / f"{name}.flac").write_bytes((DEMO / "clips/000_calm.flac").read_bytes())
    out = tmp_path / "out"
    cfg = job_config(tmp_path, clips, tiny_model_dir, out, unit=2)
    assert extract.main(["--config", str(cfg)]) == 0
    assert_exactly_once(out, ["a", "c", "e", "g"])
    (clips / "b.flac").write_bytes((DEMO / "clips/004_calm.flac").read_bytes())  # a, b | c, e | g
    assert extract.main(["--config", str(cfg)]) == 0
    assert_exactly_once(out, ["a", "b", "c", "e", "g"])
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"] == {"input": 5, "ok": 5, "error": 0, "skipped": 0}
    assert run["output_totals"]["rows"] == 5
    # and files removed: c, e | g, the last unit (g) past the folder's end now, set aside, not kept twice
    for name in ("a", "b"):
        (clips / f"{name}.flac").unlink()
    assert extract.main(["--config", str(cfg)]) == 0
    assert_exactly_once(out, ["c", "e", "g"])
    assert json.loads((out / "_run.json").read_text())["output_totals"]["rows"] == 3
    # a larger rows_per_unit under input.limit: c, e, g | (i), the source cut by the limit; unit 0 now
    # holds g too, so the committed unit past it (g) is set aside, not kept beside it
    (clips / "i.flac").write_bytes((DEMO / "clips/000_calm.flac").read_bytes())
    more = ["--set", "input.rows_per_unit=3", "--set", "input.limit=3"]
    assert extract.main(["--config", str(cfg), *more]) == 0
    assert_exactly_once(out, ["c", "e", "g"])
    # then a lower input.limit, cutting inside unit 0 (c, e | i): the unit past it keeps its result
    assert extract.main(["--config", str(cfg), *more[:2]]) == 0
    assert extract.main(["--config", str(cfg), *more[:2], "--set", "input.limit=2"]) == 0
    assert_exactly_once(out, ["c", "e", "i"])


def test_resume_with_another_model_is_refused_and_overwrite_replaces(
    ray_session, tiny_model_dir, tmp_path, capsys
):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "a", "path": str(DEMO / "clips/000_calm.flac")}))
    out = tmp_path / "out"
    assert extract.main(["--config", str(job_config(tmp_path, m, tiny_model_dir, out))]) == 0
    other = write_checkpoint(random_model(tiny(), seed=99), tmp_path / "other", "hub")
    cfg = job_config(tmp_path, m, other, out)
    assert extract.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "different weights_sha256" in err and "output.mode: overwrite" in err
    assert extract.main(["--config", str(cfg), "--set", "output.mode=overwrite"]) == 0
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"]["ok"] == 1 and run["model"]["source"] == str(other)
    assert len(rows_of(out)["a"]["embedding"]) == 32
    assert extract.main(["--config", str(cfg), "--set", "output.mode=error_if_exists"]) == 2


def test_temp_files_a_killed_writer_left_are_removed_when_the_run_opens_the_output(
    ray_session, tiny_model_dir, tmp_path
):
    m = tmp_path / "m.jsonl"
    m.write_text(json.dumps({"id": "a", "path": str(DEMO / "clips/000_calm.flac")}))
    out = tmp_path / "out"
    stale = [out / ".part-u-1.parquet.0a1b.inprogress", out / "_units/.u.json.2c3d.inprogress"]
    fresh = out / "._lease.json.4e5f.inprogress"  # as if another run were creating the lease right now
    for f in [*stale, fresh]:
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_bytes(b"partial")
    hour_ago = time.time() - 3600
    for f in stale:
        os.utime(f, (hour_ago, hour_ago))
    assert extract.main(["--config", str(job_config(tmp_path, m, tiny_model_dir, out))]) == 0
    assert [f for f in stale if f.exists()] == [] and fresh.exists()
    assert rows_of(out)["a"]["error"] is None


@pytest.mark.slow
def test_ten_minute_file_in_windows(ray_session, tiny_model_dir, tmp_path):
    speech, sr = sf.read(str(DEMO / "clips" / "000_calm.flac"), dtype="float32")
    n = 600 * sr + 1234
    long = np.resize(speech, n)
    wav(tmp_path / "long.wav", long, subtype="PCM_16")
    m = tmp_path / "m.csv"
    m.write_text(f"id,path\nlong,{tmp_path / 'long.wav'}\nshort,{DEMO / 'clips/001_excited.wav'}\n")
    out = tmp_path / "out"
    assert (
        extract.main(["--config", str(job_config(tmp_path, m, tiny_model_dir, out, "  frames: true\n"))]) == 0
    )
    r = rows_of(out)["long"]
    assert r["error"] is None and abs(r["duration_s"] - n / sr) < 1e-3
    assert r["num_frames"] == (n - 400) // 320 + 1 == len(r["frames"])
    segs = r["segments"]
    assert len(segs) == 21 and segs[0]["start_s"] == 0 and abs(segs[-1]["end_s"] - n / sr) < 1e-3
    assert all(abs(a["end_s"] - b["start_s"]) < 1e-6 for a, b in zip(segs, segs[1:], strict=False))
    assert all(s["label"] and abs(sum(s["scores"]) - 1) < 1e-4 for s in segs)
    # the utterance embedding is the mean of all frames of the clip
    frames = np.array(r["frames"], dtype=np.float32)
    np.testing.assert_allclose(frames.mean(0), r["embedding"], atol=2e-3 * np.abs(frames).max())
    assert len(rows_of(out)["short"]["segments"]) == 1


def run_extract(cfg, timeout=600, **kw):
    """jobs/extract.py in its own process (its own embedded Ray), to completion."""
    cmd = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, **kw)


def start_job(cfg, tmp_path, name):
    log = open(tmp_path / f"{name}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)],
        stdout=log,
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
    )
    return proc, log


def wait_for(pred, timeout, what):
    deadline = time.time() + timeout
    while not pred():
        assert time.time() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


@pytest.mark.slow
def test_kill_9_the_whole_job_then_resume(tiny_model_dir, tmp_path):
    m, ids = repeated_manifest(tmp_path, 6)
    out = tmp_path / "out"
    cfg = job_config(tmp_path, m, tiny_model_dir, out, "  rows_per_file: 4\nray:\n  num_cpus: 2\n", unit=4)
    proc, _ = start_job(cfg, tmp_path, "first")
    try:
        wait_for(lambda: out.exists() and any(out.glob("*.parquet")), 240, "the first output file")
    finally:
        kill_session(proc.pid)  # driver, raylet, GCS and workers: SIGKILL, no cleanup
        proc.wait()
    landed = len(list(out.glob("*.parquet")))
    assert landed >= 1 and not (out / "_run.json").exists()
    r = run_extract(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exactly_once(out, ids)
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"]["skipped"] > 0 and run["rows"]["skipped"] + run["rows"]["ok"] == len(ids)
    assert not list(out.glob(".*.inprogress"))


def _cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])


def _kill_the_model_worker_and_finish(tiny_model_dir, tmp_path, idle: bool) -> None:
    """Start a job, SIGKILL its model actor's process once the first file landed (when `idle`:
    once the actor used no CPU for 0.3 s, between calls), and expect the job to finish on its own
    with every row once, through a restart. The kill must land mid-run, with most units still to do:
    an actor killed after the last call went out is not needed, and the job would finish without
    noticing (nor needing) its actor watch."""
    m, ids = repeated_manifest(tmp_path, 6)
    # an error row in the first unit, committed before the kill: the restart must neither redo nor
    # recount it (a rerun does redo error rows; a restart only finishes what is left)
    m.write_text(json.dumps({"id": "missing", "path": str(tmp_path / "missing.wav")}) + "\n" + m.read_text())
    ids = ["missing", *ids]
    out = tmp_path / "out"
    cfg = job_config(
        tmp_path,
        m,
        tiny_model_dir,
        out,
        "  rows_per_file: 4\n  max_error_fraction: 1.0\nray:\n  num_cpus: 2\n",
        unit=4,
    )
    if idle:  # one decode task at a time: the model actor waits for input between calls, mid-run
        cfg.write_text(
            cfg.read_text().replace("  decode_batch_size: 4\n", "  decode_batch_size: 4\n  decode_tasks: 1\n")
        )
    proc, log = start_job(cfg, tmp_path, "job")

    def workers(name: str) -> list[int]:
        """The job's worker processes whose title names `name` (Ray titles a worker by its task)."""
        found = []
        for pid in session_pids(proc.pid):
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().decode(errors="replace")
            except OSError:
                continue
            if name in cmd:
                found.append(pid)
        return found

    def model_worker():
        return next(iter(workers("EmotionPredictor")), None)

    def between_calls(pid: int) -> bool:
        before = _cpu_ticks(pid)
        time.sleep(0.3)
        return _cpu_ticks(pid) == before

    units = -(-len(ids) // 4)
    committed = lambda: len(list((out / "_units").glob("*.json")))  # noqa: E731
    held: list[int] = []  # decode workers paused so that the model actor runs dry mid-run
    try:
        wait_for(lambda: out.exists() and any(out.glob("*.parquet")), 240, "the first output file")
        victim = model_worker()
        assert victim is not None, "no model actor process found"
        if idle:
            # the model actor is busy as long as input comes (on 2 cores it never idles mid-run):
            # hold the decode task back until the actor has finished what it holds
            wait_for(lambda: bool(held.extend(workers("prepare_block")) or held), 60, "a decode task")
            for pid in held:
                os.kill(pid, signal.SIGSTOP)
            wait_for(lambda: between_calls(victim), 120, "the model actor to be idle")
        at_kill = committed()
        os.kill(victim, 9)
        assert at_kill < units, f"the kill landed late: {at_kill} of {units} units committed"
        if idle:  # no new input reaches the dead actor: only the job's actor watch can notice it
            said = lambda: "restarting on what is left" in (tmp_path / "job.log").read_text()  # noqa: E731
            wait_for(said, 60, "the run to notice the idle actor's death")
        for pid in held:
            os.kill(pid, signal.SIGCONT)
        assert proc.wait(timeout=300) == 0, (tmp_path / "job.log").read_text()[-3000:]
    finally:
        for pid in held:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        kill_session(proc.pid)
        log.close()
    assert_exactly_once(out, ids)
    run = json.loads((out / "_run.json").read_text())
    text = (tmp_path / "job.log").read_text()
    assert run["ray"]["restarts"] >= 1 and "restarting on what is left" in text, text[-3000:]
    if idle:
        assert "ActorLost: a model actor died while idle" in text, text[-3000:]
    assert run["rows"] == {"input": len(ids), "ok": len(ids) - 1, "error": 1, "skipped": 0}


@pytest.mark.slow
def test_kill_9_a_model_worker_mid_run(tiny_model_dir, tmp_path):
    _kill_the_model_worker_and_finish(tiny_model_dir, tmp_path, idle=False)


@pytest.mark.slow
def test_kill_9_an_idle_model_worker(tiny_model_dir, tmp_path):
    """Ray Data leaves a pool actor that died holding no task in its pool (it expects restarts, which
    the job turns off): without the job's watch on the actors, the run waits forever."""
    _kill_the_model_worker_and_finish(tiny_model_dir, tmp_path, idle=True)


def test_truncated_or_unowned_output_files_are_set_aside_and_their_rows_redone(
    ray_session, tiny_model_dir, tmp_path
):
    m, ids = repeated_manifest(tmp_path, 1)
    out = tmp_path / "out"
    cfg = job_config(tmp_path, m, tiny_model_dir, out, unit=5)
    assert extract.main(["--config", str(cfg)]) == 0
    files = sorted(out.glob("part-*.parquet"))
    assert len(files) >= 2
    victim = files[0]
    victim.write_bytes(victim.read_bytes()[: victim.stat().st_size // 2])  # a partial copy
    stray = out / "part-copied-by-hand.parquet"
    stray.write_bytes(files[1].read_bytes())  # same rows again, under a name no unit owns
    assert extract.main(["--config", str(cfg)]) == 0
    assert_exactly_once(out, ids)
    assert (out / "_corrupt" / f"{victim.name}.set-aside").exists()
    assert (out / "_orphans" / f"{stray.name}.set-aside").exists()
    run = json.loads((out / "_run.json").read_text())
    assert run["output_totals"]["corrupt_files_moved"] == [victim.name]
    assert run["output_totals"]["orphan_files_moved"] == [stray.name]
    assert 0 < run["rows"]["ok"] <= 5 and run["rows"]["skipped"] == len(ids) - run["rows"]["ok"]


@pytest.mark.slow
@pytest.mark.parametrize("stage", ["decode", "model"])
def test_a_row_that_kills_its_worker_becomes_an_error_row(tiny_model_dir, tmp_path, stage):
    """The decoder (or the model) crashes the worker process on one file, as a native crash would: the
    job finishes at the default restart budget, that row is an error row naming the crash, every
    other row is ok, exactly once. A decode crash costs a retry of its task, no pipeline restart; a
    model crash costs one restart (poison.py)."""
    m, ids = repeated_manifest(tmp_path, 1)
    poison = json.loads(m.read_text().splitlines()[3])
    out = tmp_path / "out"
    cfg = job_config(
        tmp_path, m, tiny_model_dir, out, "  max_error_fraction: 1.0\nray:\n  num_cpus: 2\n", unit=5
    )
    env = {**os.environ, "E2V_INJECT_CRASH": f"{stage}:{poison['path']}"}
    r = run_extract(cfg, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exactly_once(out, ids)
    rows = rows_of(out)
    crashed = [k for k, v in rows.items() if v["error"]]
    assert crashed == [poison["id"]], {k: rows[k]["error"] for k in crashed}
    assert rows[poison["id"]]["error"].startswith(f"{stage}: WorkerCrashed")
    run = json.loads((out / "_run.json").read_text())
    assert run["ray"]["restarts"] == {"decode": 0, "model": 1}[stage], r.stderr[-3000:]


@pytest.mark.slow
def test_sigterm_mid_run_stops_within_seconds_and_a_rerun_finishes(tiny_model_dir, tmp_path):
    m, ids = repeated_manifest(tmp_path, 6)
    out = tmp_path / "out"
    cfg = job_config(tmp_path, m, tiny_model_dir, out, "ray:\n  num_cpus: 2\n", unit=4)
    proc, log = start_job(cfg, tmp_path, "first")
    try:
        wait_for(lambda: len(list((out / "_units").glob("*.json"))) >= 1, 240, "the first committed unit")
        proc.send_signal(signal.SIGTERM)
        t0 = time.time()
        assert proc.wait(timeout=60) == 143
        stopped_in = time.time() - t0
    finally:
        kill_session(proc.pid)
        log.close()
    text = (tmp_path / "first.log").read_text()
    assert "interrupted by SIGTERM" in text and "rerun the same command" in text, text[-2000:]
    assert stopped_in < 30, stopped_in
    # what is visible is exactly the committed units: no half-written result file
    committed = set()
    for marker in (out / "_units").glob("*.json"):
        committed |= set(json.loads(marker.read_text())["files"])
    assert {p.name for p in out.glob("*.parquet")} == committed
    assert not (out / "_lease.json").exists()  # released on the way out
    r = run_extract(cfg)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exactly_once(out, ids)


@pytest.mark.slow
def test_a_second_run_on_the_same_output_is_refused_naming_the_first(tiny_model_dir, tmp_path):
    m, ids = repeated_manifest(tmp_path, 8)
    out = tmp_path / "out"
    cfg = job_config(tmp_path, m, tiny_model_dir, out, "ray:\n  num_cpus: 2\n", unit=4)
    first, log = start_job(cfg, tmp_path, "first")
    try:
        wait_for(lambda: (out / "_lease.json").exists(), 240, "the first run's lease")
        holder = json.loads((out / "_lease.json").read_text())
        second = run_extract(cfg, timeout=300)
        assert second.returncode == 2, second.stderr[-2000:]
        assert holder["run_id"] in second.stderr and str(holder["pid"]) in second.stderr
        assert first.wait(timeout=600) == 0, (tmp_path / "first.log").read_text()[-2000:]
    finally:
        kill_session(first.pid)
        log.close()
    assert_exactly_once(out, ids)


def _stopped(pid: int) -> bool:
    """The process is stopped (SIGSTOP): state T in /proc."""
    return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in ("T", "t")


@pytest.mark.slow
@pytest.mark.parametrize("when", ["mid-run", "after-last-commit"])
def test_a_paused_driver_taken_over_commits_nothing_when_woken(tiny_model_dir, tmp_path, when):
    """The driver is paused (SIGSTOP) past its lease's ttl with its renew thread held back, so that
    nothing but the clock can tell it the lease is gone; a second run takes over and finishes. Woken,
    the first must exit 1 without writing anything more: every row stays in the output once, and the
    second run's files, its `_run.json` included, stay as it left them. `mid-run`: paused after its
    first commit; `after-last-commit`: it stops itself once every unit is committed, before
    `_run.json` (pipeline.run.STOP_ENV), the last write a run makes."""
    m, ids = repeated_manifest(tmp_path, 3)
    out = tmp_path / "out"
    cfg = job_config(tmp_path, m, tiny_model_dir, out, "  lease_ttl_s: 30\nray:\n  num_cpus: 2\n", unit=4)
    stall = tmp_path / "stall-renewals"
    env = {**os.environ, "E2V_INJECT_RENEW_STALL": str(stall)}
    if when == "after-last-commit":
        env["E2V_INJECT_STOP_AFTER_COMMITS"] = "1"
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)],
        stdout=open(tmp_path / "first.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
        env=env,
    )
    try:
        if when == "mid-run":
            wait_for(lambda: len(list((out / "_units").glob("*.json"))) >= 1, 240, "the first committed unit")
            stall.write_text("")  # from now on the renew thread renews nothing
            os.kill(first.pid, signal.SIGSTOP)
        else:
            wait_for(lambda: _stopped(first.pid) or first.poll() is not None, 300, "the run to stop itself")
            assert first.poll() is None, (tmp_path / "first.log").read_text()[-3000:]
            stall.write_text("")
            assert len(list((out / "_units").glob("*.json"))) == -(-len(ids) // 4)  # every unit
            assert not (out / "_run.json").exists()
        expires = datetime.fromisoformat(json.loads((out / "_lease.json").read_text())["expires_at"])
        wait_for(lambda: time.time() > expires.timestamp() + 0.5, 60, "the paused run's lease to expire")
        second = run_extract(cfg)
        assert second.returncode == 0, second.stderr[-3000:]
        assert "taking over the expired lease" in second.stderr
        assert_exactly_once(out, ids)
        after_second = committed_files(out)
        assert "_run.json" in after_second
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 1, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        kill_session(first.pid)
    log = (tmp_path / "first.log").read_text()
    assert "lost the lease" in log and "not renewed in time" in log, log[-3000:]
    assert committed_files(out) == after_second  # markers, results, _run.json: byte for byte
    assert not (out / "_lease.json").exists()
    assert_exactly_once(out, ids)


@pytest.mark.slow
def test_a_driver_woken_inside_its_lease_margin_commits_nothing_more(tiny_model_dir, tmp_path):
    """Paused (SIGSTOP) with its renew thread held back, the driver wakes inside the last ttl/4 before
    its lease expires: the lease is still its own, but a write sent now could land after another run
    took over (a late request, clock skew). It must commit nothing more and exit 1, although its
    workers have results waiting."""
    m, ids = repeated_manifest(tmp_path, 3)
    out = tmp_path / "out"
    cfg = job_config(tmp_path, m, tiny_model_dir, out, "  lease_ttl_s: 20\nray:\n  num_cpus: 2\n", unit=4)
    stall = tmp_path / "stall-renewals"
    first = subprocess.Popen(
        [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)],
        stdout=open(tmp_path / "first.log", "w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
        cwd=tmp_path,
        env={**os.environ, "E2V_INJECT_RENEW_STALL": str(stall)},
    )
    try:
        wait_for(lambda: len(list((out / "_units").glob("*.json"))) >= 1, 240, "the first committed unit")
        stall.write_text("")
        stop_between_writes(first.pid, out)
        expires = datetime.fromisoformat(json.loads((out / "_lease.json").read_text())["expires_at"])
        inside = expires.timestamp() - 20 / 4 + 1.5  # in the margin, 3.5 s before the expiry
        wait_for(lambda: time.time() > inside, 60, "the margin")
        before = committed_files(out)
        assert len([k for k in before if k.startswith("_units")]) < len(ids) // 4
        os.kill(first.pid, signal.SIGCONT)
        assert first.wait(timeout=300) == 1, (tmp_path / "first.log").read_text()[-3000:]
    finally:
        kill_session(first.pid)
    log = (tmp_path / "first.log").read_text()
    assert "lost the lease" in log and "not renewed in time" in log, log[-3000:]
    assert committed_files(out) == before  # the lease file too: inside the margin it is left alone


def stop_between_writes(pid: int, out: Path, tries: int = 50) -> None:
    """SIGSTOP the driver where no write to the output is under way. A write already sent when the
    process stops lands when it wakes, whatever the lease says (nothing can fence a request in
    flight): a temporary file of an atomic write in the output means one is, so the driver is let
    go on for a moment and stopped again."""
    from pipeline.storage import TMP_SUFFIX

    for _ in range(tries):
        os.kill(pid, signal.SIGSTOP)
        writing = [p for p in out.rglob("*") if p.name.endswith(TMP_SUFFIX) and "_staging" not in p.parts]
        if not writing:
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.02)
    pytest.fail(f"the driver was writing each of {tries} times it was stopped")


def committed_files(out: Path) -> dict[str, bytes]:
    """Every file of the output but the staging area (a paused run's workers may still stage files:
    hidden, uncommitted, discarded by the next run)."""
    return {
        str(p.relative_to(out)): p.read_bytes()
        for p in sorted(out.rglob("*"))
        if p.is_file() and p.relative_to(out).parts[0] != "_staging"
    }


def test_a_lease_left_by_a_dead_run_expires(ray_session, tiny_model_dir, tmp_path):
    m, ids = repeated_manifest(tmp_path, 1)
    out = tmp_path / "out"
    out.mkdir()
    past = "2020-01-01T00:00:00Z"
    dead = {
        "run_id": "dead-run",
        "host": "gone",
        "pid": 1,
        "started_at": past,
        "expires_at": past,
        "ttl_s": 60,
    }
    (out / "_lease.json").write_text(json.dumps(dead))
    assert extract.main(["--config", str(job_config(tmp_path, m, tiny_model_dir, out))]) == 0
    assert_exactly_once(out, ids)


@pytest.mark.slow
def test_a_poison_row_with_the_gpu_configs_bundling_costs_one_restart(tiny_model_dir, tmp_path):
    """The GPU config's bundling (256 rows per model call, 4-row decode blocks, 8-row units): a row
    that kills the model worker costs one pipeline restart whatever blocks the restart cuts, becomes
    one WorkerCrashed error row, every other row of its call is processed, and the console shows the
    job's lines, not Ray's tracebacks."""
    base = [json.loads(line) for line in (DEMO / "manifest.jsonl").read_text().splitlines()]
    rows = [{**r, "id": f"{r['id']}-{k}", "path": str(DEMO / r["path"])} for k in range(3) for r in base][:48]
    poison = rows[21]
    unique = tmp_path / "poison-take.flac"  # the crash hook matches paths: this one only
    unique.write_bytes(Path(poison["path"]).read_bytes())
    poison["path"] = str(unique)
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = tmp_path / "gpu-like.yaml"
    cfg.write_text(
        f"input:\n  manifest: {m}\n  rows_per_unit: 8\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cpu\n  rows_per_call: 256\n"
        f"audio:\n  decode_batch_size: 4\n"
        f"output:\n  path: {out}\n  max_error_fraction: 1.0\n"
        "ray:\n  num_cpus: 2\n"
    )
    env = {**os.environ, "E2V_INJECT_CRASH": f"model:{unique.name}"}
    r = run_extract(cfg, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exactly_once(out, [x["id"] for x in rows])
    got = rows_of(out)
    crashed = {k: v["error"] for k, v in got.items() if v["error"]}
    assert list(crashed) == [poison["id"]], crashed
    assert crashed[poison["id"]].startswith("model: WorkerCrashed")
    run = json.loads((out / "_run.json").read_text())
    assert run["ray"]["restarts"] == 1, r.stderr[-3000:]
    assert run["rows"] == {"input": 48, "ok": 47, "error": 1, "skipped": 0}
    console = r.stderr + r.stdout
    assert "Traceback" not in console, console[-5000:]
    assert "An exception was raised from a task" not in console and "internal code" not in console
    assert r.stderr.count("restarting on what is left") == 1 and "[emotion2vec] done" in r.stderr


@pytest.mark.slow
def test_restarts_that_keep_committing_keep_going(tiny_model_dir, tmp_path):
    """`ray.max_restarts` counts failed attempts in a row that committed nothing: three rows that
    each kill the model worker, far apart in the manifest, cost three restarts under
    `max_restarts: 1`, since every attempt commits units before it meets the next one; each becomes
    one WorkerCrashed row and every other row is ok, exactly once."""
    base = [json.loads(line) for line in (DEMO / "manifest.jsonl").read_text().splitlines()]
    rows = [{**r, "id": f"{r['id']}-{k}", "path": str(DEMO / r["path"])} for k in range(4) for r in base][:72]
    poison = [rows[i] for i in (3, 35, 67)]
    for k, row in enumerate(poison):
        copy = tmp_path / f"poison-take-{k}.flac"  # the crash hook matches paths: these only
        copy.write_bytes(Path(row["path"]).read_bytes())
        row["path"] = str(copy)
    m = tmp_path / "m.jsonl"
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = job_config(
        tmp_path,
        m,
        tiny_model_dir,
        out,
        "  max_error_fraction: 1.0\nray:\n  num_cpus: 2\n  max_restarts: 1\n",
        unit=4,
    )
    env = {**os.environ, "E2V_INJECT_CRASH": "model:poison-take-"}
    r = run_extract(cfg, env=env, cwd=tmp_path)
    assert r.returncode == 0, r.stderr[-3000:]
    assert_exactly_once(out, [x["id"] for x in rows])
    got = rows_of(out)
    crashed = {k: v["error"] for k, v in got.items() if v["error"]}
    assert sorted(crashed) == sorted(p["id"] for p in poison), crashed
    assert all(e.startswith("model: WorkerCrashed") for e in crashed.values())
    run = json.loads((out / "_run.json").read_text())
    assert run["ray"]["restarts"] == 3, r.stderr[-3000:]
    assert run["rows"] == {"input": 72, "ok": 69, "error": 3, "skipped": 0}
