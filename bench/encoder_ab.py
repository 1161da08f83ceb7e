"""The encoder of this checkout against the encoder of an older checkout, in one process, interleaved
clip by clip, float32 and bfloat16: on a shared box whose speed changes minute to minute, only
side-by-side numbers compare.

    git archive <commit> | tar -x -C /tmp/before
    python bench/encoder_ab.py --before /tmp/before [--seconds 30] [--rounds 3] [--threads 2]

The older `pipeline/model` is imported as its own package (it uses relative imports only) and given
the same weights. Rows: old and new per dtype, the new one also with the oneDNN linears forced on
and off, and the matmul rate (2048^3, best of torch and oneDNN) measured between the rounds.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch
from common import GFLOP_PER_AUDIO_S, machine
from model import clips, matmul_gflops

from pipeline.model import kernels
from pipeline.model.config import base
from pipeline.predictor import cpu_has_native
from pipeline.testing.checkpoints import random_model


def old_model(before: Path, state: dict, dtype: torch.dtype):
    tmp = Path(tempfile.mkdtemp())
    shutil.copytree(before / "pipeline" / "model", tmp / "before_model")
    # the old model package under its own name, beside the current one (its imports are relative)
    spec = importlib.util.spec_from_file_location(
        "before_model",
        tmp / "before_model" / "__init__.py",
        submodule_search_locations=[str(tmp / "before_model")],
    )
    sys.modules["before_model"] = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(sys.modules["before_model"])
    enc = importlib.import_module("before_model.encoder")
    cfg_mod = importlib.import_module("before_model.config")
    m = enc.Emotion2vec(cfg_mod.Emotion2vecConfig(embed_dim=768, num_heads=12, num_classes=9))
    m.load_state_dict(state, strict=False)
    m.label_mask = torch.zeros(9, dtype=torch.bool)
    return m.to(dtype).eval().requires_grad_(False), importlib.import_module("before_model.kernels")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--before", type=Path, required=True, help="a checkout of the older commit")
    p.add_argument("--seconds", type=float, default=30.0)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--dtypes", default="float32,bfloat16")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    print(machine(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "threads", a.threads)
    data = [torch.from_numpy(c)[None] for c in clips(a.seconds)]
    total = sum(c.shape[1] for c in data) / 16000
    new_fp32 = random_model(base(num_classes=9), seed=0).eval().requires_grad_(False)
    state = new_fp32.state_dict()
    rows: dict[str, tuple[str, object, object]] = {}  # label -> (dtype, model, context factory)
    for name in a.dtypes.split(","):
        dtype = getattr(torch, name)
        if dtype != torch.float32 and not cpu_has_native(dtype):
            print(f"skipping {name}: no native {name} on this CPU")
            continue
        new = random_model(base(num_classes=9), seed=0).to(dtype).eval().requires_grad_(False)
        old, old_kernels = old_model(a.before, state, dtype)
        print(
            f"{name}: the probe chose {'fused oneDNN' if kernels.onednn_linear_faster(dtype) else 'F.linear'}"
        )
        rows[f"{name} before"] = (name, old, lambda k=old_kernels: k.use_onednn(True))
        rows[f"{name} now"] = (name, new, lambda: kernels.use_onednn(None))
        rows[f"{name} now, oneDNN linears forced on"] = (name, new, lambda: kernels.use_onednn(True))
        rows[f"{name} now, oneDNN linears off"] = (name, new, lambda: kernels.use_onednn(False))
    wall = {k: [] for k in rows}
    peak: dict[str, list[float]] = {}
    with torch.inference_mode():
        for _, model, ctx in rows.values():  # warm
            with ctx():
                model(data[0])
        for _ in range(a.rounds):
            spent = dict.fromkeys(rows, 0.0)
            for clip in data:  # clip by clip, every row: drift hits all rows alike
                for k, (_, model, ctx) in rows.items():
                    with ctx():
                        t = time.perf_counter()
                        model(clip)
                        spent[k] += time.perf_counter() - t
            for k, s in spent.items():
                wall[k].append(s)
            for name in {r[0] for r in rows.values()}:
                peak.setdefault(name, []).append(matmul_gflops(getattr(torch, name), "cpu", seconds=1.0))
    print(f"{len(data)} clips, {total:.1f} s of audio, one at a time, {a.rounds} rounds, medians")
    print(
        "| encoder | audio-s/s | achieved GFLOP/s | matmul GFLOP/s (same rounds) | % of matmul | vs before |"
    )
    print("|---|---|---|---|---|---|")
    for k, (name, _, _) in rows.items():
        rate = total / statistics.median(wall[k])
        before = total / statistics.median(wall[f"{name} before"])
        g = rate * GFLOP_PER_AUDIO_S[768]
        mm = statistics.median(peak[name])
        print(f"| {k} | {rate:.2f} | {g:.0f} | {mm:.0f} | {100 * g / mm:.0f}% | {rate / before:.2f}x |")


if __name__ == "__main__":
    main()
