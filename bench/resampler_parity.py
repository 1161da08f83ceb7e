"""What the resampler changes in the output: the job's decode + encoder with `audio.resampler` soxr and
torchaudio against FunASR's `AutoModel.generate` on the same files (FunASR loads the file and resamples
it with torchaudio itself), on espeak-ng speech written at 44.1, 48 and 8 kHz.

    python bench/resampler_parity.py [--clips 6] [--models tiny,base]

Per source rate and model: max |d| of the embedding and the scores, the lowest embedding cosine, and
label agreement, for each resampler against FunASR. Random-init weights in the published layout.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from common import machine

from pipeline.audio import RESAMPLERS, decode
from pipeline.model import load_bundle
from pipeline.model.config import base
from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint
from pipeline.testing.samples import SENTENCES, VOICES, synthesize

RATES = (44100, 48000, 8000)
MODELS = {"tiny": lambda: tiny(num_heads=6, embed_dim=48), "base": lambda: base(num_classes=9)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--clips", type=int, default=6)
    p.add_argument("--models", default="tiny,base")
    a = p.parse_args()
    from funasr import AutoModel

    print(machine(), time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()))
    print(
        "| model | source rate | resampler | embedding max abs d | lowest cosine | scores max abs d | labels equal |"
    )
    print("|---|---|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        files = {
            rate: [
                synthesize(
                    SENTENCES[i % len(SENTENCES)],
                    tmp / f"{rate}-{i}.wav",
                    voice=VOICES[i % 4],
                    sample_rate=rate,
                )  # fmt: skip
                for i in range(a.clips)
            ]
            for rate in RATES
        }
        for name in a.models.split(","):
            d = write_checkpoint(random_model(MODELS[name](), seed=1), tmp / name, "hub")
            am = AutoModel(model=str(d), disable_update=True, device="cpu", ncpu=2, log_level="ERROR")
            bundle = load_bundle(d)
            for rate in RATES:
                ref = [
                    am.generate(str(f), granularity="utterance", disable_pbar=True)[0] for f in files[rate]
                ]
                for resampler in RESAMPLERS:
                    emb_d = score_d = 0.0
                    cos, same = 1.0, 0
                    for f, r in zip(files[rate], ref, strict=True):
                        x = decode(f.read_bytes(), f.name, resampler=resampler).samples
                        with torch.inference_mode():
                            o = bundle.model(torch.from_numpy(x)[None])
                        e, want = (
                            o.embedding[0].numpy().astype(np.float64),
                            np.asarray(r["feats"], np.float64),
                        )
                        emb_d = max(emb_d, float(np.abs(e - want).max()))
                        cos = min(cos, float(e @ want / np.linalg.norm(e) / np.linalg.norm(want)))
                        s = o.scores[0].numpy()
                        score_d = max(score_d, float(np.abs(s - np.asarray(r["scores"])).max()))
                        same += int(np.argmax(s) == int(np.argmax(r["scores"])))
                    print(
                        f"| {name} | {rate} | {resampler} | {emb_d:.1e} | {cos:.6f} | {score_d:.1e} | "
                        f"{same}/{len(ref)} |",
                        flush=True,
                    )


if __name__ == "__main__":
    main()
