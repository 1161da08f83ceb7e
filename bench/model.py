"""Forward throughput of the encoder alone: audio-seconds per second across batch budgets and
dtypes, and achieved FLOP/s against this machine's measured matmul FLOP/s for the same dtype.

    python bench/model.py [--dim 768] [--seconds 60] [--threads N] [--budgets 0,16,60]
                          [--dtypes float32,bfloat16] [--kernels] [--funasr] [--rounds 3]
                          [--max-batch 64]

The linear kernels are chosen as the job chooses them (measured at the first linear,
`kernels.onednn_linear_faster`; the choice is printed); --kernels adds rows per dtype with the oneDNN
fused linears forced on and forced off (plain torch linears), and
--funasr a row for FunASR's own encoder (`extract_features`, one clip at a time, same weights).
Every configuration runs once per round, rounds interleaved, and the median round is reported:
on a shared machine whose speed drifts by +-10 % over minutes, only side-by-side numbers compare.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import GFLOP_PER_AUDIO_S, machine

from pipeline.batching import collate, pack
from pipeline.model import kernels
from pipeline.model.config import Emotion2vecConfig
from pipeline.predictor import cpu_has_native
from pipeline.testing.checkpoints import random_model, write_checkpoint


def matmul_gflops(dtype: torch.dtype, device: str, n: int = 2048, seconds: float = 2.0) -> float:
    """This machine's matmul rate for `dtype`: the best of torch's own matmul (MKL on x86 CPUs) and,
    on CPU, the oneDNN inner product the encoder's linears use, on an n x n x n product."""
    a = torch.randn(n, n, dtype=dtype, device=device)
    b = torch.randn(n, n, dtype=dtype, device=device)
    candidates = [lambda: a @ b]
    if device == "cpu" and kernels.onednn_linear_available(dtype):
        candidates.append(lambda: torch.ops.mkldnn._linear_pointwise(a, b, None, "none", [], "none"))
    best = 0.0
    for f in candidates:
        f()
        reps, t = 0, time.perf_counter()
        while time.perf_counter() - t < seconds:
            f()
            reps += 1
        if device == "cuda":
            torch.cuda.synchronize()
        best = max(best, 2 * n**3 * reps / (time.perf_counter() - t) / 1e9)
    return best


def clips(total_s: float, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    out, acc = [], 0.0
    while acc < total_s:
        d = rng.uniform(1, 20)
        out.append((0.1 * rng.standard_normal(int(d * 16000))).astype(np.float32))
        acc += d
    return out


def run(model, data, budget_s, max_batch, device) -> tuple[float, float]:
    """-> (wall seconds, padded / real samples)."""
    groups = pack([len(c) for c in data], int(budget_s * 16000), max_batch)
    padded = sum(len(g) * max(len(data[i]) for i in g) for g in groups)
    t = time.perf_counter()
    with torch.inference_mode():
        for g in groups:
            wav, lengths = collate([data[i] for i in g], pin_memory=device == "cuda")
            model(wav.to(device, non_blocking=True), lengths.to(device))
        if device == "cuda":
            torch.cuda.synchronize()
    return time.perf_counter() - t, padded / sum(len(c) for c in data)


def funasr_encoder(model_dir: Path, device: str):
    """FunASR's own model on the same weights; -> a callable running one clip like its `inference`."""
    import torch.nn.functional as F
    from funasr import AutoModel

    am = AutoModel(
        model=str(model_dir),
        disable_update=True,
        device=device,
        ncpu=torch.get_num_threads(),
        log_level="ERROR",
    )

    def forward(data):
        t = time.perf_counter()
        with torch.no_grad():  # as FunASR's generate runs it
            for c in data:
                x = torch.from_numpy(c).to(device)
                am.model.extract_features(F.layer_norm(x, x.shape).view(1, -1), padding_mask=None)
        if device == "cuda":
            torch.cuda.synchronize()
        return time.perf_counter() - t, 1.0

    return forward


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--seconds", type=float, default=60.0, help="audio per measurement")
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--budgets", default="0,16,60", help="batch_seconds values; 0 = one clip at a time")
    p.add_argument("--dtypes", default="float32,bfloat16")
    p.add_argument("--kernels", action="store_true", help="also run with the oneDNN linears off")
    p.add_argument("--funasr", action="store_true", help="also run FunASR's encoder (float32, one at a time)")
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--max-batch", type=int, default=64, help="clips per batch at most (the job: max_batch_size)"
    )
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)
    device = "cuda" if torch.cuda.is_available() else "cpu"
    print(machine(), "threads", torch.get_num_threads(), "device", device)
    heads = 12 if a.dim == 768 else 16
    cfg = Emotion2vecConfig(embed_dim=a.dim, num_heads=heads, num_classes=9)
    data = clips(a.seconds)
    total = sum(len(c) for c in data) / 16000
    print(
        f"{len(data)} clips, {total:.1f} s of audio, lengths 1-20 s, {a.rounds} interleaved rounds (median)"
    )

    def ours(model, budget_s: float, onednn: bool | None):
        def runner() -> tuple[float, float]:
            with kernels.use_onednn(onednn):
                return run(
                    model,
                    data,
                    budget_s if budget_s > 0 else 1e-9,
                    1 if budget_s == 0 else a.max_batch,
                    device,
                )

        return runner

    base = random_model(cfg, seed=0).eval().requires_grad_(False)
    configs = []  # (row label, dtype name, runner() -> (wall s, padded / real samples))
    peaks = {}
    for name in a.dtypes.split(","):
        dtype = getattr(torch, name)
        if device == "cpu" and dtype != torch.float32 and not cpu_has_native(dtype):
            slow = matmul_gflops(dtype, device, n=512, seconds=1.0)
            print(
                f"skipping {name}: this CPU has no native {name} matmul (torch's {name} 512^3 matmul runs at "
                f"{slow:.2f} GFLOP/s here); the job would run float32"
            )
            continue
        model = random_model(cfg, seed=0).to(device=device, dtype=dtype).eval().requires_grad_(False)
        peaks[name] = matmul_gflops(dtype, device)
        run(model, data[:2], 10, 4, device)  # warm-up
        if device == "cpu":
            fused = kernels.onednn_linear_faster(dtype)
            print(f"{name}: the start-up probe chose {'fused oneDNN linears' if fused else 'F.linear'}")
        for b in [float(x) for x in a.budgets.split(",")]:
            configs.append((f"{b:g}", name, ours(model, b, None)))
        if a.kernels and device == "cpu":
            configs.append(("0, oneDNN linears forced on", name, ours(model, 0.0, True)))
            configs.append(("0, oneDNN linears off", name, ours(model, 0.0, False)))
    if a.funasr:
        with tempfile.TemporaryDirectory() as tmp:
            write_checkpoint(base, Path(tmp), "hub")
            fa = funasr_encoder(Path(tmp), device)
        peaks.setdefault("float32", matmul_gflops(torch.float32, device))
        fa(data[:1])
        configs.append(("FunASR encoder, one at a time", "float32", lambda: fa(data)))

    times: dict[int, list[tuple[float, float]]] = {i: [] for i in range(len(configs))}
    for _ in range(a.rounds):
        for i, (_, _, runner) in enumerate(configs):
            times[i].append(runner())

    print(
        "| dtype | batch budget (s) | padding overhead | audio-s/s | achieved GFLOP/s | matmul GFLOP/s | % of matmul |"
    )
    print("|---|---|---|---|---|---|---|")
    for i, (label, name, _) in enumerate(configs):
        wall = statistics.median(t for t, _ in times[i])
        pad = times[i][0][1]
        rate = total / wall
        gflops = rate * GFLOP_PER_AUDIO_S[a.dim]
        peak = peaks[name]
        print(
            f"| {name} | {label} | {pad - 1:+.1%} | {rate:.1f} | {gflops:.0f} | {peak:.0f} | {100 * gflops / peak:.0f}% |",
            flush=True,
        )


if __name__ == "__main__":
    main()
