"""The real job end to end against FunASR one-at-a-time, on the same weights and clips, side by side.

    python bench/e2e.py [--clips 150] [--work outputs/bench-e2e]

Runs, in one invocation so the ratios are fair on a noisy machine:
  1. FunASR `AutoModel.generate`, one clip at a time, `ncpu` = cores (its best on this box);
  2. `jobs/extract.py` in float32, embedded Ray started by the job (start-up included);
  3. the same in bfloat16.
Weights: a random-init emotion2vec+ base-size model in the published layout (no hub here).
Reports wall time, audio-seconds/s, rows/s, the decode/model/write split, peak memory of the job's
whole process tree, and label agreement (ours fp32 vs FunASR; bf16 vs fp32).
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import pyarrow.dataset as pads
from common import ROOT, base_model_dir, corpus, machine, run_job


def funasr_labels(model_dir: Path, manifest: Path) -> tuple[dict[str, str], float]:
    from funasr import AutoModel

    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    t0 = time.time()
    am = AutoModel(
        model=str(model_dir), disable_update=True, device="cpu", ncpu=os.cpu_count(), log_level="ERROR"
    )
    labels = {}
    for r in rows:
        res = am.generate(str(manifest.parent / r["path"]), granularity="utterance", disable_pbar=True)[0]
        best = max(range(len(res["scores"])), key=lambda i: res["scores"][i])
        labels[r["id"]] = res["labels"][best].split("/")[-1].replace("<unk>", "unknown")
    return labels, time.time() - t0


def our_labels(out: Path) -> dict[str, str]:
    t = pads.dataset(str(out), format="parquet").to_table(columns=["id", "label"])
    return dict(zip(t["id"].to_pylist(), t["label"].to_pylist(), strict=True))


def agreement(a: dict[str, str], b: dict[str, str]) -> float:
    return sum(a[k] == b.get(k) for k in a) / len(a)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--clips", type=int, default=150)
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-e2e")
    p.add_argument("--skip-funasr", action="store_true")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra job overrides")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    model = base_model_dir(a.work / "model")
    manifest, audio_s = corpus(a.work / "corpus", a.clips)
    print(machine())
    print(f"corpus: {a.clips} clips, {audio_s:.0f} s of audio ({audio_s / 3600:.3f} h)")

    cfg = a.work / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\nmodel:\n  source: {model}\n  device: cpu\noutput:\n  path: {a.work}/out\n  mode: overwrite\n"
    )
    results = {}
    if not a.skip_funasr:
        ref, wall = funasr_labels(model, manifest)
        results["funasr"] = {"wall_s": wall, "audio_s_per_s": audio_s / wall}
        print(f"FunASR one-at-a-time: {wall:.1f} s, {audio_s / wall:.1f} audio-s/s")
    for dtype in ("float32", "bfloat16"):
        out = a.work / f"out-{dtype}"
        rc, wall, peak, run = run_job(
            cfg, [f"model.dtype={dtype}", f"output.path={out}", *a.overrides], a.work / f"job-{dtype}.log"
        )
        assert rc == 0, (a.work / f"job-{dtype}.log").read_text()[-2000:]
        results[dtype] = {
            "wall_s": wall,
            "audio_s_per_s": audio_s / wall,
            "rows_per_s": a.clips / wall,
            "peak_rss_gb": peak / 1e9,
            "stage_seconds": run["stage_seconds"],
            "labels": our_labels(out),
        }
        print(
            f"ours {dtype}: {wall:.1f} s end to end, {audio_s / wall:.1f} audio-s/s, {a.clips / wall:.2f} rows/s, "
            f"peak {peak / 1e9:.2f} GB, stages {run['stage_seconds']}"
        )
    if "funasr" in results:
        for dtype in ("float32", "bfloat16"):
            print(
                f"speed-up {dtype} vs FunASR: {results['funasr']['wall_s'] / results[dtype]['wall_s']:.2f}x; "
                f"label agreement with FunASR: {agreement(results[dtype]['labels'], ref):.1%}"
            )
    print(
        f"bf16 vs fp32 label agreement: {agreement(results['bfloat16']['labels'], results['float32']['labels']):.1%}"
    )


if __name__ == "__main__":
    main()
