"""Forward throughput of the encoder alone: audio-seconds per second across batch budgets and
dtypes, and achieved FLOP/s against this machine's measured matmul FLOP/s for the same dtype.

    python bench/model.py [--dim 768] [--seconds 60] [--threads N]
"""

from __future__ import annotations

import argparse
import time

import numpy as np
import torch
from common import GFLOP_PER_AUDIO_S, machine

from pipeline.batching import collate, pack
from pipeline.model.config import Emotion2vecConfig
from pipeline.model.random_init import random_model


def matmul_gflops(dtype: torch.dtype, n: int = 2048, reps: int = 5) -> float:
    a, b = torch.randn(n, n, dtype=dtype), torch.randn(n, n, dtype=dtype)
    a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def clips(total_s: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out, acc = [], 0.0
    while acc < total_s:
        d = rng.uniform(1, 20)
        out.append((0.1 * rng.standard_normal(int(d * 16000))).astype(np.float32))
        acc += d
    return out


def run(model, data, budget_s, max_batch, device):
    groups = pack([len(c) for c in data], int(budget_s * 16000), max_batch)
    padded = sum(len(g) * max(len(data[i]) for i in g) for g in groups)
    t = time.perf_counter()
    with torch.inference_mode():
        for g in groups:
            wav, lengths = collate([data[i] for i in g])
            model(wav.to(device), lengths.to(device))
        if device == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - t, padded / sum(len(c) for c in data)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--seconds", type=float, default=60.0, help="audio per measurement")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--budgets", default="0,20,60,240", help="batch_seconds values; 0 = one clip at a time")
    p.add_argument("--dtypes", default="float32,bfloat16")
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(machine(), "threads", torch.get_num_threads(), "device", device)
    heads = 12 if a.dim == 768 else 16
    cfg = Emotion2vecConfig(embed_dim=a.dim, num_heads=heads, num_classes=9)
    data = clips(a.seconds)
    total = sum(len(c) for c in data) / 16000
    print(f"{len(data)} clips, {total:.1f} s of audio, lengths 1-20 s")
    print(
        "| dtype | batch budget (s) | padding overhead | audio-s/s | achieved GFLOP/s | matmul GFLOP/s | % of matmul |"
    )
    print("|---|---|---|---|---|---|---|")
    for name in a.dtypes.split(","):
        dtype = getattr(torch, name)
        model = random_model(cfg).to(device=device, dtype=dtype).eval()
        peak = matmul_gflops(dtype) if device == "cpu" else float("nan")
        run(model, data[:2], 10, 4, device)  # warm-up
        for b in [float(x) for x in a.budgets.split(",")]:
            wall, pad = run(model, data, b if b > 0 else 1e-9, 1 if b == 0 else 64, device)
            rate = total / wall
            gflops = rate * GFLOP_PER_AUDIO_S[a.dim]
            print(
                f"| {name} | {b:g} | {pad - 1:+.1%} | {rate:.1f} | {gflops:.0f} | {peak:.0f} | {100 * gflops / peak:.0f}% |",
                flush=True,
            )


if __name__ == "__main__":
    main()
