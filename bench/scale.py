"""Time and memory as the corpus grows: the job over N short clips for several N.

    python bench/scale.py [--sizes 1000,10000]

The clips are the committed demo corpus referenced many times under distinct ids (the audio does
not need to differ to measure scaling). Tiny random model by default so that the pipeline, not the
model, is what is measured; `--base` uses a base-size model. Memory is the peak over the job's
whole process tree (driver, raylet, GCS, workers): private memory plus Ray's object store, each
page counted once, beside the summed RSS, which counts shared pages once per process.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import ROOT, base_model_dir, machine, run_job


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--sizes", default="1000,3000,10000")
    p.add_argument("--base", action="store_true")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-scale")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    if a.base:
        model = base_model_dir(a.work.parent / "bench-e2e" / "model")
    else:
        from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint

        model = a.work / "tiny"
        if not (model / "model.pt").exists():
            write_checkpoint(random_model(tiny(), seed=0), model, "hub")
    demo = ROOT / "samples" / "demo"
    base_rows = [json.loads(x) for x in (demo / "manifest.jsonl").read_text().splitlines()]
    print(machine())
    print(
        "| clips | audio h | wall s | rows/s | s per 1k rows | peak in use GB (job + Ray) | peak RSS sum GB |"
    )
    print("|---|---|---|---|---|---|---|")
    for n in [int(x) for x in a.sizes.split(",")]:
        m = a.work / f"m{n}.jsonl"
        with open(m, "w") as f:
            for i in range(n):
                r = base_rows[i % len(base_rows)]
                f.write(json.dumps({**r, "id": f"{r['id']}-{i}", "path": str(demo / r["path"])}) + "\n")
        cfg = a.work / "job.yaml"
        cfg.write_text(
            f"input:\n  manifest: {m}\nmodel:\n  source: {model}\n  device: cpu\n"
            f"output:\n  path: {a.work / f'out{n}'}\n  mode: overwrite\n"
        )
        rc, wall, mem, run = run_job(cfg, a.overrides, a.work / f"job{n}.log")
        assert rc == 0, (a.work / f"job{n}.log").read_text()[-2000:]
        print(
            f"| {n} | {run['audio_hours']:.2f} | {wall:.0f} | {n / wall:.1f} | {1000 * wall / n:.1f} | "
            f"{mem.in_use / 1e9:.2f} | {mem.rss / 1e9:.2f} |",
            flush=True,
        )


if __name__ == "__main__":
    main()
