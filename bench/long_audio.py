"""Peak memory of a 10-minute file through the whole job with a base-size model.

    python bench/long_audio.py [--minutes 10] [--frames]

The job runs in its own process session (embedded Ray); the peak is the memory in use (private
memory plus the object store, each page once) of the driver, raylet, GCS and every worker, sampled every 0.5 s.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import soundfile as sf
from common import ROOT, base_model_dir, machine, run_job


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--frames", action="store_true")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-long")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    model = base_model_dir(a.work.parent / "bench-e2e" / "model")
    speech, sr = sf.read(str(ROOT / "samples" / "demo" / "clips" / "000_calm.flac"), dtype="float32")
    n = int(a.minutes * 60 * sr)
    path = a.work / "long.flac"
    sf.write(str(path), np.resize(speech, n), sr)
    (a.work / "m.jsonl").write_text(json.dumps({"id": "long", "path": str(path)}) + "\n")
    cfg = a.work / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {a.work / 'm.jsonl'}\nmodel:\n  source: {model}\n  device: cpu\n"
        f"output:\n  path: {a.work / 'out'}\n  mode: overwrite\n  frames: {str(a.frames).lower()}\n"
    )
    rc, wall, mem, run = run_job(cfg, a.overrides, a.work / "job.log")
    print(machine())
    print(
        f"{a.minutes:g}-minute file, base-size model, frames={a.frames}: exit {rc}, {wall:.0f} s, "
        f"peak memory in use by the job's process tree {mem.in_use / 1e9:.2f} GB (RSS sum {mem.rss / 1e9:.2f}); rows {run.get('rows')}, "
        f"stages {run.get('stage_seconds')}"
    )


if __name__ == "__main__":
    main()
