"""The GPU check reads the job's progress lines for its steady-state rates: the line as the job prints it
must parse (a changed format would leave the check without its numbers, with no error on the GPU)."""

import io
import os
from pathlib import Path

import pytest

BENCH = Path(__file__).resolve().parent.parent / "bench"


@pytest.fixture(autouse=True)
def bench_on_the_path(monkeypatch):
    """bench/ scripts import each other as `python bench/x.py` runs them (their folder first on the path)."""
    monkeypatch.syspath_prepend(str(BENCH))


@pytest.mark.parametrize(
    "rows,total,audio_s", [(1, 20000, 7.5), (12345, 20000, 123456.0), (300, 300, 2948.4)]
)
def test_gpu_job_parses_the_jobs_progress_line(rows, total, audio_s):
    from gpu_job import PROGRESS

    from pipeline.progress import Progress

    out = io.StringIO()
    p = Progress(total=total, interval_s=0.0, stream=out)
    p.update(rows, rows - 1, 1, audio_s)
    m = PROGRESS.search(out.getvalue())
    assert m, out.getvalue()
    assert (int(m[1]), int(m[2])) == (rows, total)
    assert abs(float(m[3]) * 3600 - audio_s) <= 1.8  # the line rounds hours to 3 decimals (3.6 s)


def test_gpu_job_takes_steady_rates_between_progress_lines_and_reports_startup_and_tail_apart(tmp_path):
    from types import SimpleNamespace

    from gpu_job import line, summarise

    t0 = 1000.0
    # (arrival, rows, total, audio s): first rows at 15 s, last partial line at 25 s, done at 28 s
    progress = [(t0 + 15, 100, 1000, 1000.0), (t0 + 20, 400, 1000, 4000.0), (t0 + 25, 600, 1000, 6000.0)]
    progress.append((t0 + 28, 1000, 1000, 10000.0))
    gpu = SimpleNamespace(
        times=[t0 + 5, t0 + 16, t0 + 24, t0 + 27], samples=[0.0, 80.0, 60.0, 10.0], mib=[1, 9, 5, 2]
    )
    cpu = SimpleNamespace(times=[t0 + 14, t0 + 18, t0 + 22], samples=[99.0, 30.0, 50.0])
    mem = SimpleNamespace(in_use=2e9, rss=3e9)
    tick = os.sysconf("SC_CLK_TCK")
    # cumulative CPU ticks by role; the samples nearest the window (15-25 s) are at 14 and 26 s
    roles = SimpleNamespace(
        times=[t0 + 2, t0 + 14, t0 + 20, t0 + 26],
        ticks=[
            {"decode tasks": 0},
            {"decode tasks": 10 * tick, "model actor": 5 * tick},
            {"decode tasks": 50 * tick, "model actor": 15 * tick},
            {"decode tasks": 90 * tick, "model actor": 25 * tick, "driver": tick},
        ],
    )
    a = SimpleNamespace(name="x", overrides=[], device="cuda")
    r = summarise(a, {"rows": 1000}, progress, t0, 30.0, 0, False, gpu, cpu, mem, tmp_path / "none", roles)
    assert r["startup_s"] == 15.0
    assert r["steady_window_s"] == 10.0
    assert r["steady_audio_s_per_s"] == 500  # (6000 - 1000) / 10
    assert r["steady_rows_per_s"] == 50.0  # (600 - 100) / 10
    assert r["gpu_busy_steady"] == 70  # the samples at 16 and 24 s
    assert r["cpu_busy_steady"] == 40  # the samples at 18 and 22 s
    assert r["tail_s"] == 5.0  # 30 - 25
    assert r["rows_done"] == 1000 and r["gpu_mem_peak_mib"] == 9
    # cores per role over the window: 80 / 20 / 1 CPU-s in 10 s; per audio-second: of 5,000 audio-s
    assert r["cores_by_role_steady"] == {"decode tasks": 8.0, "driver": 0.1, "model actor": 2.0}
    assert r["cpu_us_per_audio_s_by_role"] == {"decode tasks": 16000, "driver": 200, "model actor": 4000}
    assert "decode 8.00 (16000 us/audio-s), model actors 2.00 (4000 us/audio-s)" in line(r)


def test_gpu_check_writes_the_base_model_once_where_the_jobs_look_for_it():
    """The actor-host part and the jobs both use a base-size model (356 MB, ~3 s to write): the check
    writes it where bench/gpu_job.py (`--work W` -> `W/model`) finds it, not a second copy elsewhere."""
    import re
    import subprocess

    script = (BENCH / "gpu_check.sh").read_text()
    (assignment,) = re.findall(r"^base_dir=.*$", script, re.M)
    (work,) = set(re.findall(r'bench/gpu_job\.py --work "([^"]+)"', script))
    # the shell's own expansion of both, with the script's WORK
    got = subprocess.run(
        ["bash", "-c", f'WORK=/w; {assignment}; echo "$base_dir"; echo "{work}/model"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert got[0] == got[1], got
    source = (BENCH / "gpu_job.py").read_text()
    assert 'base_model_dir(a.work / "model")' in source  # where the jobs' base model lies
