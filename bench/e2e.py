"""The real job end to end against FunASR one-at-a-time, on the same weights and clips, side by side.

    python bench/e2e.py [--clips 150] [--repeats 2] [--dtypes float32,bfloat16] [--work outputs/bench-e2e]
    python bench/e2e.py --device cuda --clips 3000 --dtypes bfloat16,float32    # on a GPU machine

Runs, in one invocation so the ratios are fair on a noisy machine, `--repeats` rounds of:
  1. FunASR `AutoModel.generate`, one clip at a time, `ncpu` = cores (its best on this box);
  2. `jobs/extract.py` per dtype, embedded Ray started by the job (start-up and model load included).
Each round gives a speed-up per dtype (FunASR wall / ours, measured minutes apart); the table
reports every round and the median. A half-precision dtype this CPU has no native support for is
skipped: the job would run it in float32 (see `resolve_dtype`).
Weights: a random-init emotion2vec+ base-size model in the published layout (no hub here).
On `--device cuda` both sides run on the GPU and the GPU's busy time (nvidia-smi utilization,
sampled every 0.5 s while our job runs) is reported too.
Reports wall time, audio-seconds/s, rows/s, the decode/model/write split, peak memory of the job's
whole process tree (private memory + object store, each page once; and the RSS sum), and label agreement (ours vs FunASR; bf16 vs fp32).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import statistics
import time
from pathlib import Path

import pyarrow.dataset as pads
import torch
from common import ROOT, GpuBusy, base_model_dir, corpus, machine, run_job

from pipeline.predictor import cpu_has_native


def funasr_labels(model_dir: Path, manifest: Path, device: str) -> tuple[dict[str, str], float]:
    from funasr import AutoModel

    rows = [json.loads(x) for x in manifest.read_text().splitlines()]
    t0 = time.time()
    am = AutoModel(
        model=str(model_dir), disable_update=True, device=device, ncpu=os.cpu_count(), log_level="ERROR"
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
    p.add_argument("--repeats", type=int, default=1, help="interleaved rounds (FunASR, then ours)")
    p.add_argument("--work", type=Path, default=ROOT / "outputs" / "bench-e2e")
    p.add_argument("--skip-funasr", action="store_true")
    p.add_argument("--dtypes", default="float32,bfloat16", help="our runs, in order")
    p.add_argument("--device", default="cpu", choices=["cpu", "cuda"], help="both sides run here")
    p.add_argument("--set", dest="overrides", action="append", default=[], help="extra job overrides")
    a = p.parse_args()
    a.work.mkdir(parents=True, exist_ok=True)
    model = base_model_dir(a.work / "model")
    manifest, audio_s = corpus(a.work / "corpus", a.clips)
    print(machine())
    print(f"corpus: {a.clips} clips, {audio_s:.0f} s of audio ({audio_s / 3600:.3f} h)")
    dtypes = []
    for d in a.dtypes.split(","):
        if a.device == "cpu" and d != "float32" and not cpu_has_native(getattr(torch, d)):
            print(f"skipping {d}: this CPU has no native {d} matmul (the job would run it in float32)")
        else:
            dtypes.append(d)

    cfg = a.work / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\nmodel:\n  source: {model}\n  device: {a.device}\noutput:\n  path: {a.work}/out\n  mode: overwrite\n"
    )
    walls: dict[str, list[float]] = {k: [] for k in ["funasr", *dtypes]}
    labels: dict[str, dict[str, str]] = {}
    for r in range(a.repeats):
        if not a.skip_funasr:
            labels["funasr"], wall = funasr_labels(model, manifest, a.device)
            walls["funasr"].append(wall)
            print(
                f"[round {r + 1}] FunASR one-at-a-time: {wall:.1f} s, {audio_s / wall:.2f} audio-s/s",
                flush=True,
            )
        for dtype in dtypes:
            out = a.work / f"out-{dtype}"
            log = a.work / f"job-{dtype}.log"
            with GpuBusy() if a.device == "cuda" else contextlib.nullcontext() as gpu:
                rc, wall, mem, run = run_job(
                    cfg, [f"model.dtype={dtype}", f"output.path={out}", *a.overrides], log
                )
            assert rc == 0, log.read_text()[-2000:]
            walls[dtype].append(wall)
            labels[dtype] = our_labels(out)
            print(
                f"[round {r + 1}] ours {dtype}: {wall:.1f} s end to end, {audio_s / wall:.2f} audio-s/s, "
                f"{a.clips / wall:.2f} rows/s, peak memory in use {mem.in_use / 1e9:.2f} GB (RSS sum {mem.rss / 1e9:.2f}), "
                f"stages {run['stage_seconds']}, ran {run.get('rows_per_model_runtime')}"
                + (f", {gpu.summary()}" if gpu else ""),
                flush=True,
            )

    print("\n| run | wall s per round | median audio-s/s | speed-up vs FunASR per round | median speed-up |")
    print("|---|---|---|---|---|")
    for k, ws in walls.items():
        if not ws:
            continue
        name = "FunASR one-at-a-time, float32" if k == "funasr" else f"ours, {k}"
        ups = [f / w for f, w in zip(walls["funasr"], ws, strict=False)] if walls["funasr"] else []
        print(
            f"| {name} | {' / '.join(f'{w:.1f}' for w in ws)} | {audio_s / statistics.median(ws):.2f} | "
            f"{' / '.join(f'{u:.2f}x' for u in ups) or '-'} | {f'{statistics.median(ups):.2f}x' if ups else '-'} |"
        )
    for dtype in dtypes:
        if "funasr" in labels:
            print(f"label agreement {dtype} vs FunASR: {agreement(labels[dtype], labels['funasr']):.1%}")
    if {"float32", "bfloat16"} <= set(labels):
        print(f"label agreement bf16 vs fp32: {agreement(labels['bfloat16'], labels['float32']):.1%}")


if __name__ == "__main__":
    main()
