"""A model actor's host work per audio-second: the CPU time of `EmotionPredictor.__call__` outside the
model's forward, on blocks as the job hands them over (`audio.block_mb` of 1-20 s clips, Arrow in and
out), with the GPU's decisions (a simulated GPU on a CPU box, or the GPU itself).

    python bench/actor_host.py                    # simulated GPU, near-free model, frames off and on
    python bench/actor_host.py --device cuda      # on a GPU machine (the forward's time is then the GPU's)
    python bench/actor_host.py --device cuda --again --profile 15   # + shapes seen, + CPU by op

What one core allows at 20,000 audio-s/s is 50 us of host work per audio-second. The forward itself
(kernel launches on a GPU, the whole model on a CPU) is timed apart and not counted as host work: a
near-free model keeps it small on a CPU. torch runs one thread, so the calling thread's CPU time is
the call's.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import pyarrow as pa
import torch
from common import feed_model_dir, machine

from pipeline.predictor import EmotionPredictor
from pipeline.schema import WAVEFORM

SR = 16000


def blocks(n: int, block_mb: float, seed: int = 0) -> list[pa.Table]:
    """`n` blocks of 1-20 s clips, each up to `block_mb` of float32 samples, as the decode stage cuts them."""
    rng = np.random.default_rng(seed)
    out, k = [], 0
    for _ in range(n):
        clips, size = [], 0
        while size < block_mb * 2**20 / 4:
            c = (0.1 * rng.standard_normal(int(rng.uniform(1, 20) * SR))).astype(np.float32)
            clips.append(c)
            size += len(c)
        offsets = np.concatenate([[0], np.cumsum([len(c) for c in clips])]).astype(np.int64)
        wave = pa.LargeListArray.from_arrays(pa.array(offsets), pa.array(np.concatenate(clips)))
        ids = [f"r{k + i}" for i in range(len(clips))]
        k += len(clips)
        out.append(
            pa.table(
                {
                    "id": ids,
                    "path": [f"{i}.wav" for i in ids],
                    "error": pa.array([None] * len(clips), pa.string()),
                    WAVEFORM: wave,
                }
            )
        )
    return out


def measure(p: EmotionPredictor, data: list[pa.Table], warm: bool = True) -> dict:
    inside = [0.0, 0.0]  # thread CPU, wall inside the forward
    forward = p.bundle.model.forward

    def timed(*a, **kw):
        c, w = time.thread_time(), time.perf_counter()
        try:
            return forward(*a, **kw)
        finally:
            inside[0] += time.thread_time() - c
            inside[1] += time.perf_counter() - w

    p.bundle.model.forward = timed
    try:
        if warm:
            p(data[0])  # warm: buffers, kernels
        inside[:] = [0.0, 0.0]
        audio = sum(len(v) for b in data[1:] for v in b[WAVEFORM].to_pylist() if v) / SR
        c, w = time.thread_time(), time.perf_counter()
        for b in data[1:]:
            p(b)
        cpu, wall = time.thread_time() - c, time.perf_counter() - w
        if p.device.startswith("cuda"):
            torch.cuda.synchronize()
    finally:
        p.bundle.model.forward = forward
    return {
        "audio_s": audio,
        "host_us_per_audio_s": 1e6 * (cpu - inside[0]) / audio,
        "forward_cpu_us_per_audio_s": 1e6 * inside[0] / audio,
        "wall_audio_s_per_s": audio / wall,
    }


def profile(p: EmotionPredictor, block: pa.Table, top: int) -> None:
    """The CPU side of one call by op (torch.profiler): where the forward's CPU time goes on a GPU (kernel
    launches, cuDNN plans, synchronisations) that a wall clock cannot split."""
    from torch.profiler import ProfilerActivity
    from torch.profiler import profile as torch_profile

    audio = sum(len(v) for v in block[WAVEFORM].to_pylist() if v) / SR
    activities = [ProfilerActivity.CPU]
    if p.device.startswith("cuda"):
        activities.append(ProfilerActivity.CUDA)
    with torch_profile(activities=activities) as prof:
        p(block)
        if p.device.startswith("cuda"):
            torch.cuda.synchronize()
    events = sorted(prof.key_averages(), key=lambda e: e.self_cpu_time_total, reverse=True)
    total = sum(e.self_cpu_time_total for e in events)
    print(f"\nCPU side of one call by op ({audio:.0f} audio-s; {total / 1e3:.1f} ms of op CPU in all)")
    print("| op | calls | self CPU ms | self CPU us per audio-s |")
    print("|---|---|---|---|")
    for e in events[:top]:
        ms = e.self_cpu_time_total / 1e3
        print(f"| {e.key[:60]} | {e.count} | {ms:.2f} | {1e3 * ms / audio:.1f} |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--device", choices=["sim", "cuda", "cpu"], default="sim")
    ap.add_argument("--model", default=None, help="model dir (default: a near-free random model)")
    ap.add_argument("--blocks", type=int, default=6)
    ap.add_argument("--block-mb", type=float, default=64.0)
    ap.add_argument("--again", action="store_true", help="run the same blocks twice: new shapes, then seen")
    ap.add_argument("--profile", type=int, default=0, metavar="N", help="then the top N ops of one call")
    args = ap.parse_args()
    torch.set_num_threads(1)
    model = args.model or str(feed_model_dir(Path(tempfile.mkdtemp()) / "near-free"))
    data = blocks(args.blocks + 1, args.block_mb)
    m = machine()
    print(
        f"# {m.get('cpu')} | torch {torch.__version__} | {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}"
    )
    print(
        "| device | frames | pass | audio s | host us per audio-s | forward CPU us per audio-s "
        "| audio-s/s (wall) |"
    )
    print("|---|---|---|---|---|---|---|")
    for frames in (False, True):
        p = EmotionPredictor(
            source=model,
            device="cpu" if args.device == "cpu" else "cuda",
            simulate_gpu=args.device == "sim",
            frames=frames,
            torch_threads=1,
        )
        # every batch of the first pass has a (batch, length) shape not seen before, as in the job; the
        # second pass repeats them (what shape buckets or CUDA graphs would give)
        passes = [("new shapes", True), ("shapes seen", False)] if args.again else [("new shapes", True)]
        for name, warm in passes:
            r = measure(p, data, warm=warm)
            print(
                f"| {p.runtime} | {frames} | {name} | {r['audio_s']:.0f} | {r['host_us_per_audio_s']:.1f} | "
                f"{r['forward_cpu_us_per_audio_s']:.1f} | {r['wall_audio_s_per_s']:.0f} |",
                flush=True,
            )
        if args.profile and not frames:
            profile(p, data[1], args.profile)


if __name__ == "__main__":
    main()
