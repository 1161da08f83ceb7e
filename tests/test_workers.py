"""Ray worker processes: the job holds a bounded number, without Ray's "worker processes have been
started" warnings. Every task in flight holds a worker; the read and write tasks ask for 0.1 and 0
CPUs, so only their pool sizes bound them. Ray warns once the workers alive reach 4x its startup
concurrency (the node's cores, capped by its CPU resource): on this 2-core box, 8 workers. The job
runs with `ray.num_cpus: 8` so that Ray's logical CPUs let as many tasks run at once as on a bigger
node; a 16-core node reached 64-112 workers."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from pipeline.testing.samples import synthesize

ROOT = Path(__file__).resolve().parents[1]
WARNING = "worker processes have been started"


@pytest.mark.slow
def test_many_small_tasks_stay_within_the_worker_pool_without_churn_warnings(tiny_model_dir, tmp_path):
    clips = [
        synthesize(text, tmp_path / f"{k}.wav", sample_rate=16000)
        for k, text in enumerate(["one two", "three four five", "six"])
    ]
    rows = 1200
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("".join(f'{{"id": "r{i:05d}", "path": "{clips[i % 3]}"}}\n' for i in range(rows)))
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n  rows_per_unit: 50\n"
        f"audio:\n  decode_batch_size: 25\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cpu\n  num_actors: 2\n  torch_threads: 1\n"
        f"output:\n  path: {tmp_path / 'out'}\n  frames: false\n"
        f"ray:\n  num_cpus: 8\n"
    )
    job = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=tmp_path,
    )
    assert job.returncode == 0, job.stderr[-3000:]
    assert f"{rows}/{rows} rows" in job.stderr
    said = [ln for ln in (job.stdout + job.stderr).splitlines() if WARNING in ln]
    assert not said, said
