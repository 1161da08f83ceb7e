"""Numbers behind the parity tests: our encoder vs FunASR's AutoModel (its loader, its one-at-a-time
inference) on the same published-layout checkpoint, and padded batches vs one at a time.

    python bench/parity.py
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np
import torch
from common import machine

from pipeline.batching import collate
from pipeline.model import load_bundle
from pipeline.model.config import base
from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint

LENGTHS = [400, 719, 16_000, 27_777, 80_000, 160_000]


def clips(seed=0):
    rng = np.random.default_rng(seed)
    return [
        (
            0.3 * np.sin(np.arange(n) / 16000 * 2 * np.pi * rng.uniform(90, 300))
            + 0.05 * rng.standard_normal(n)
        ).astype(np.float32)
        for n in LENGTHS
    ]


def main():
    from funasr import AutoModel

    print(machine())
    print(
        "| model | vs FunASR: frames | embedding | scores | padded batch vs single (fp32): frames | embedding | scores | bf16 batch vs fp32: frames (rel) | scores |"
    )
    print("|---|---|---|---|---|---|---|---|---|")
    for name, cfg in [
        ("tiny D=48 H=6", tiny(num_heads=6, embed_dim=48)),
        ("base D=768 H=12", base(num_classes=9)),
    ]:
        with tempfile.TemporaryDirectory() as tmp:
            d = write_checkpoint(random_model(cfg, seed=1), Path(tmp), "hub")
            am = AutoModel(model=str(d), disable_update=True, device="cpu", ncpu=2, log_level="ERROR")
            b = load_bundle(d)
            bf = load_bundle(d, dtype=torch.bfloat16)
            cs = clips()
            diffs = np.zeros(6)
            singles = []
            for c in cs:
                rf = am.generate(c, granularity="frame", disable_pbar=True)[0]
                ru = am.generate(c, granularity="utterance", disable_pbar=True)[0]
                with torch.no_grad():
                    o = b.model(torch.from_numpy(c)[None])
                singles.append(o)
                diffs[0] = max(diffs[0], np.abs(o.frames[0].numpy() - rf["feats"]).max())
                diffs[1] = max(diffs[1], np.abs(o.embedding[0].numpy() - ru["feats"]).max())
                diffs[2] = max(diffs[2], np.abs(o.scores[0].numpy() - np.array(ru["scores"])).max())
            wav, lens = collate(cs)
            with torch.no_grad():
                ob = b.model(wav, lens)
                obf = bf.model(wav, lens)
            for i, o in enumerate(singles):
                T = o.frames.shape[1]
                diffs[3] = max(diffs[3], (ob.frames[i, :T] - o.frames[0]).abs().max().item())
                diffs[4] = max(diffs[4], (ob.embedding[i] - o.embedding[0]).abs().max().item())
                diffs[5] = max(diffs[5], (ob.scores[i] - o.scores[0]).abs().max().item())
            rel = ((obf.frames.float() - ob.frames).abs().max() / ob.frames.abs().max()).item()
            sc = (obf.scores - ob.scores).abs().max().item()
            print(
                f"| {name} | " + " | ".join(f"{x:.1e}" for x in diffs) + f" | {rel:.3f} | {sc:.3f} |",
                flush=True,
            )


if __name__ == "__main__":
    main()
