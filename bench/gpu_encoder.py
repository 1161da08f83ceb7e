"""The base-size encoder on a GPU, before and after, side by side in one process: audio-s/s, TFLOP/s
and parity against float32 for the code as on main (b4508b1, frozen in bench/_baseline_model), each
GPU lever alone and the proposed combination; then a profile by op of the fastest variant. Prints
a short table last; with $OUT set, also writes gpu_encoder.json and the profile there.

    python bench/gpu_encoder.py                       # CUDA machine: ~1-2 minutes on an H200
    python bench/gpu_encoder.py --device cpu --quick  # checks the script itself

Needs only torch (+ triton for the Triton variants), numpy and pyyaml: it imports pipeline.model,
pipeline.batching and pipeline.testing.checkpoints, none of which imports Ray, pydantic, soundfile
or PyAV. Workload as the job packs it: >= 400 random clips of 1-20 s (16 kHz), `pack` under a 600 s
padded budget with at most 128 clips per batch, `collate`. Random weights
(`random_model(base(num_classes=9))`): speed does not depend on the values.

Timing: every variant first runs every batch once (Triton compiles, cuDNN searches with
cudnn.benchmark, caches fill); then `--rounds` rounds, variants interleaved, each a full pass over
all batches between CUDA events; the median round is reported. Parity on the longest and the
shortest batch: frames of each variant in float32 (TF32 off) and bfloat16 against the float32
output of main's code with TF32 off: max |d| / max |ref| (the metric of tests/test_gpu.py: float32
1e-3, bfloat16 0.1) and bfloat16's ||d|| / ||ref||.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import json
import os
import statistics
import sys
import time
import types
from pathlib import Path

import numpy as np
import torch

HERE = Path(__file__).resolve().parent
sys.path[:0] = [str(HERE.parent), str(HERE)]  # the project (pipeline) and bench/ (_baseline_model)

from pipeline.batching import collate, pack  # noqa: E402
from pipeline.model import kernels  # noqa: E402
from pipeline.model.config import base  # noqa: E402
from pipeline.model.encoder import Emotion2vec  # noqa: E402
from pipeline.testing.checkpoints import random_model  # noqa: E402

GFLOP_PER_AUDIO_S = 15.0  # base size (docs/model.md, "Compute")
SR = 16_000


def make_batches(n_clips: int, budget_s: float, max_batch: int, lo: float, hi: float, seed: int = 0):
    rng = np.random.default_rng(seed)
    clips = [
        (0.1 * rng.standard_normal(int(rng.uniform(lo, hi) * SR))).astype(np.float32) for _ in range(n_clips)
    ]
    groups = pack([len(c) for c in clips], int(budget_s * SR), max_batch)
    return [collate([clips[i] for i in g]) for g in groups], sum(len(c) for c in clips) / SR


def old_package():
    """bench/_baseline_model: main's model code, imported as its own package beside pipeline.model."""
    return importlib.import_module("_baseline_model.encoder"), importlib.import_module(
        "_baseline_model.config"
    )


class Variant:
    def __init__(self, label, model_key, host_lengths=True, flags=None, benchmark=False, patch=None):
        self.label, self.model_key, self.host_lengths = label, model_key, host_lengths
        self.flags = flags or {}
        self.benchmark, self.patch = benchmark, patch

    @contextlib.contextmanager
    def active(self):
        before = torch.backends.cudnn.benchmark
        torch.backends.cudnn.benchmark = self.benchmark
        try:
            with kernels.use_cuda_paths(**self.flags), (self.patch or contextlib.nullcontext)():
                yield
        finally:
            torch.backends.cudnn.benchmark = before


@contextlib.contextmanager
def ncl_positional_convs():
    """The positional convs (padded, grouped) as plain NCL `F.conv1d` with transposes around them,
    instead of the channels-last Conv2d of height 1 that `kernels.conv_time_major` runs."""
    import torch.nn.functional as F

    time_major = kernels.conv_time_major

    def conv(x, weight, bias=None, stride=1, padding=0, groups=1):
        if padding == 0 and groups == 1:
            return time_major(x, weight, bias, stride, padding, groups)
        y = F.conv1d(x.transpose(1, 2), weight, bias, stride=stride, padding=padding, groups=groups)
        return y.transpose(1, 2).contiguous()

    kernels.conv_time_major = conv
    try:
        yield
    finally:
        kernels.conv_time_major = time_major


def variants() -> list[Variant]:
    off = dict.fromkeys(kernels.CUDA_PATHS, False)
    return [
        Variant("main (b4508b1)", "old", host_lengths=False),
        Variant("main + cudnn.benchmark", "old", host_lengths=False, benchmark=True),
        Variant("main + batched normalize", "old_batched_norm", host_lengths=False),
        Variant("new, CUDA kernels off (normalize + no syncs)", "new", flags=off),
        Variant("new, + Triton LN+GELU only", "new", flags={**off, "layer_norm_gelu": True}),
        Variant("new, + Triton LN (transformer) only", "new", flags={**off, "layer_norm": True}),
        Variant("new, + GEMM CNN convs only", "new", flags={**off, "conv_gemm": True}),
        Variant("new, all, lengths on the GPU", "new", host_lengths=False),
        Variant("new, all + cudnn.benchmark", "new", benchmark=True),
        Variant("new, all, positional convs as NCL conv1d", "new", patch=ncl_positional_convs),
        Variant("new, all (proposed)", "new"),
    ]


def build_models(dtype, device):
    cfg = base(num_classes=9)
    new = random_model(cfg, seed=0).to(device=device, dtype=dtype).eval().requires_grad_(False)
    enc, cfg_mod = old_package()
    old = enc.Emotion2vec(cfg_mod.base(num_classes=9))
    old.load_state_dict(new.state_dict())
    old.label_mask = new.label_mask.clone()
    old = old.to(device=device, dtype=dtype).eval().requires_grad_(False)
    batched = enc.Emotion2vec(cfg_mod.base(num_classes=9))
    batched.load_state_dict(new.state_dict())
    batched.label_mask = new.label_mask.clone()
    batched = batched.to(device=device, dtype=dtype).eval().requires_grad_(False)
    batched.normalize = types.MethodType(Emotion2vec.normalize, batched)  # only this lever from the new code
    return {"old": old, "old_batched_norm": batched, "new": new}


def run_all(model, batches, host_lengths: bool):
    out = None
    for wav, lengths, dlengths in batches:
        out = model(wav, lengths if host_lengths else dlengths)
    return out


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(model, batches, v: Variant, device) -> float:
    """Seconds for one pass over all batches (CUDA events on a GPU)."""
    with torch.inference_mode(), v.active():
        sync(device)
        if device.type == "cuda":
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            run_all(model, batches, v.host_lengths)
            end.record()
            end.synchronize()
            return start.elapsed_time(end) / 1e3
        t = time.perf_counter()
        run_all(model, batches, v.host_lengths)
        return time.perf_counter() - t


@contextlib.contextmanager
def no_tf32():
    before = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = before


def frames_of(model, batch, v: Variant):
    wav, lengths, dlengths = batch
    with torch.inference_mode(), v.active():
        out = model(wav, lengths if v.host_lengths else dlengths)
    return out.frames.float(), out.scores.float()


def matmul_tflops(device, dtype=torch.bfloat16, n=8192, reps=20) -> float:
    """The measured ceiling: a large bf16 matrix product (random operands, median of `reps`)."""
    if device.type != "cuda":
        return float("nan")
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    return 2 * n**3 / statistics.median(times) / 1e12


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--quick", action="store_true", help="a few short clips: checks the script, not the GPU")
    p.add_argument("--clips", type=int, default=400)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument(
        "--dtype", default=None, help="of the timed models (default bfloat16; float32 for --quick on CPU)"
    )
    p.add_argument("--only", default="", help="comma-separated variant numbers (1-based) to run")
    a = p.parse_args()
    device = torch.device(a.device)
    torch.manual_seed(0)
    t0 = time.perf_counter()
    if a.quick:
        raw, audio_s = make_batches(3, 2, 128, 0.5, 1.0)
        a.rounds = 1
    else:
        raw, audio_s = make_batches(a.clips, 600, 128, 1, 20)
    batches = [(w.to(device), n, n.to(device)) for w, n in raw]
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), torch "
        f"{torch.__version__}; {len(raw)} batches, {audio_s:.0f} s of audio, "
        f"padded {sum(w.numel() for w, _ in raw) / SR / audio_s - 1:+.1%}",
        flush=True,
    )
    vs = variants()
    if a.only:
        keep = {int(i) for i in a.only.split(",")}
        vs = [v for i, v in enumerate(vs, 1) if i in keep or v.model_key == "old" and i == 1]

    # parity first (float32 models are dropped before the timing)
    parity_batches = [batches[0], batches[-1]] if len(batches) > 1 else batches[:1]
    parity: dict[str, dict[str, float]] = {v.label: {} for v in vs}
    failed: dict[str, str] = {}

    def guarded(v: Variant, fn):
        """fn() or None: a variant that fails is reported in the table and left out, not fatal."""
        if v.label in failed:
            return None
        try:
            return fn()
        except Exception as e:  # one broken variant must not cost the whole run
            failed[v.label] = f"{type(e).__name__}: {e}".splitlines()[0][:200]
            print(f"FAILED {v.label}: {failed[v.label]}", flush=True)
            return None

    def worst(outs, ref, metric) -> float:
        return max(metric(o, r) for o, r in zip(outs, ref, strict=True))

    def max_rel(o, r) -> float:  # tests/test_gpu.py's metric
        return float((o[0] - r[0]).abs().max() / r[0].abs().max())

    def norm_rel(o, r) -> float:
        return float((o[0] - r[0]).norm() / r[0].norm())

    def scores(o, r) -> float:
        return float((o[1] - r[1]).abs().max())

    def outputs(models, v):
        return guarded(v, lambda: [frames_of(models[v.model_key], b, v) for b in parity_batches])

    models32 = build_models(torch.float32, device)
    with no_tf32():
        ref = [frames_of(models32["old"], b, vs[0]) for b in parity_batches]
        for v in vs:
            if (outs := outputs(models32, v)) is not None:
                parity[v.label]["fp32"] = worst(outs, ref, max_rel)
    for v in (vs[0], vs[-1]):  # float32 with the default TF32 settings (cuDNN convs use TF32)
        if (outs := outputs(models32, v)) is not None:
            parity[v.label]["fp32_tf32_default"] = worst(outs, ref, max_rel)
    del models32
    dtype = getattr(torch, a.dtype or ("float32" if a.quick and device.type == "cpu" else "bfloat16"))
    models = build_models(dtype, device)
    for v in vs:
        if (outs := outputs(models, v)) is not None:
            parity[v.label].update(
                bf16_max=worst(outs, ref, max_rel),
                bf16_rel=worst(outs, ref, norm_rel),
                bf16_scores=worst(outs, ref, scores),
            )
    print(f"parity done ({time.perf_counter() - t0:.0f} s)", flush=True)

    # warm-up: every variant over every batch once
    for v in vs:
        t = time.perf_counter()
        guarded(v, lambda v=v: timed(models[v.model_key], batches, v, device))
        print(f"warm-up {v.label}: {time.perf_counter() - t:.1f} s", flush=True)
    vs = [v for v in vs if v.label not in failed]
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    times: dict[str, list[float]] = {v.label: [] for v in vs}
    for r in range(a.rounds):
        for v in vs:
            times[v.label].append(timed(models[v.model_key], batches, v, device))
        print(f"round {r + 1}/{a.rounds} done ({time.perf_counter() - t0:.0f} s)", flush=True)
    peak_gib = torch.cuda.max_memory_allocated() / 2**30 if device.type == "cuda" else float("nan")
    ceiling = matmul_tflops(device)

    rows = []
    for v in vs:
        dt = statistics.median(times[v.label])
        rate = audio_s / dt
        rows.append(
            {
                "variant": v.label,
                "audio_s_per_s": rate,
                "tflops": GFLOP_PER_AUDIO_S * rate / 1e3,
                "seconds": times[v.label],
                **parity[v.label],
            }
        )
    best = max(rows, key=lambda r: r["audio_s_per_s"])
    bv = next(v for v in vs if v.label == best["variant"])

    # profile by op of the fastest variant
    from torch.profiler import ProfilerActivity, profile

    acts = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with torch.inference_mode(), bv.active(), profile(activities=acts) as prof:
        run_all(models[bv.model_key], batches[:4], bv.host_lengths)
        sync(device)
    sort = "cuda_time_total" if device.type == "cuda" else "cpu_time_total"
    table = prof.key_averages().table(sort_by=sort, row_limit=22, max_name_column_width=55)
    print(f"\nprofile by op, {bv.label}, first {min(4, len(batches))} batches:\n{table}")

    out_dir = os.environ.get("OUT")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        meta = {
            "device": torch.cuda.get_device_name() if device.type == "cuda" else "cpu",
            "torch": torch.__version__,
            "audio_s": audio_s,
            "batches": len(batches),
            "matmul_tflops_bf16": ceiling,
            "peak_gib": peak_gib,
        }
        Path(out_dir, "gpu_encoder.json").write_text(
            json.dumps({"meta": meta, "rows": rows, "failed": failed}, indent=1)
        )
        Path(out_dir, "gpu_encoder_profile.txt").write_text(table)

    print(
        f"\n{len(batches)} batches, {audio_s:.0f} s audio; bf16 matmul ceiling {ceiling:.0f} TFLOP/s "
        f"(8192^3); peak memory {peak_gib:.1f} GiB; total {time.perf_counter() - t0:.0f} s"
    )
    print(
        f"| # | variant ({str(dtype)[6:]}) | audio-s/s | TFLOP/s | % ceiling | fp32 max|d|/max|ref| "
        f"| {str(dtype)[6:]}: max|d|/max|ref| | ||d||/||ref|| | scores max|d| |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for i, r in enumerate(rows, 1):
        tf32 = f" (TF32 on: {r['fp32_tf32_default']:.1e})" if "fp32_tf32_default" in r else ""
        print(
            f"| {i} | {r['variant']} | {r['audio_s_per_s']:,.0f} | {r['tflops']:.0f} | "
            f"{100 * r['tflops'] / ceiling:.0f}% | {r['fp32']:.1e}{tf32} | {r['bf16_max']:.1e} | "
            f"{r['bf16_rel']:.1e} | {r['bf16_scores']:.1e} |",
            flush=True,
        )
    for label, err in failed.items():
        print(f"| - | {label} | FAILED: {err} | | | | | | |")


if __name__ == "__main__":
    main()
