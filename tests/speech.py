"""Long recordings with known speech: espeak-ng sentences with known silences between them, faint noise.

`sentence_clip` speaks one sentence (espeak-ng + sox via `pipeline.testing.samples.synthesize`) and trims it to
its audible part, so the clip's first and last samples are the true speech edges. `long_recording` lays
clips out with the given gaps (leading and trailing ones included) and adds white noise at `noise_dbfs`
(RMS, dB relative to full scale) everywhere; it returns the signal and the true speech spans.
"""

from __future__ import annotations

import io
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import soundfile as sf

from pipeline.testing.samples import SENTENCES, VOICES, synthesize

AUDIBLE = 10 ** (-40 / 20)  # |x| above -40 dBFS counts as speech when trimming a clean clip


@dataclass
class Recording:
    samples: np.ndarray  # [N] float32 at sample_rate
    sample_rate: int
    spans: list[tuple[float, float]]  # true speech [start, end) in seconds

    def spans_at(self, rate: int) -> list[tuple[int, int]]:
        """The true spans in samples at `rate`, widened outward to whole samples."""
        return [(int(np.floor(s * rate)), int(np.ceil(e * rate))) for s, e in self.spans]


def sentence_clip(text: str, sample_rate: int = 16000, voice: str = "en", speed: int = 160) -> np.ndarray:
    """`text` spoken at `sample_rate`, trimmed to its first and last sample above -40 dBFS: [N] float32."""
    with tempfile.TemporaryDirectory() as tmp:
        path = synthesize(
            text, Path(tmp) / "s.wav", voice=voice, speed=speed, sample_rate=sample_rate, encoding="float32"
        )
        x, sr = sf.read(str(path), dtype="float32")
    assert sr == sample_rate
    loud = np.flatnonzero(np.abs(x) > AUDIBLE)
    return x[loud[0] : loud[-1] + 1]


def sentence_clips(n: int, sample_rate: int = 16000) -> list[np.ndarray]:
    """The first `n` sentences of `pipeline.testing.samples.SENTENCES`, voices cycling."""
    return [sentence_clip(SENTENCES[i], sample_rate, VOICES[i % len(VOICES)]) for i in range(n)]


def long_recording(
    clips: list[np.ndarray],
    gaps_s: list[float],
    sample_rate: int = 16000,
    noise_dbfs: float = -50.0,
    seed: int = 0,
) -> Recording:
    """gap 0, clip 0, gap 1, clip 1, ..., clip n-1, gap n (len(gaps_s) == len(clips) + 1), plus noise."""
    if len(gaps_s) != len(clips) + 1:
        raise ValueError(f"need {len(clips) + 1} gaps for {len(clips)} clips, got {len(gaps_s)}")
    gaps = [int(round(g * sample_rate)) for g in gaps_s]
    total = sum(gaps) + sum(len(c) for c in clips)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(total, dtype=np.float32) * np.float32(10 ** (noise_dbfs / 20))).astype(
        np.float32
    )
    spans = []
    pos = gaps[0]
    for clip, gap in zip(clips, gaps[1:], strict=True):
        x[pos : pos + len(clip)] += clip
        spans.append((pos / sample_rate, (pos + len(clip)) / sample_rate))
        pos += len(clip) + gap
    return Recording(x, sample_rate, spans)


def noise_only(
    seconds: float, sample_rate: int = 16000, noise_dbfs: float = -50.0, seed: int = 1
) -> Recording:
    return long_recording([], [seconds], sample_rate, noise_dbfs, seed)


def encode(rec: Recording, fmt: str, channels: int = 1) -> bytes:
    """The recording as a 16-bit `fmt` ("WAV", "FLAC") file's bytes; channel k is the signal scaled by
    1 - 0.3 k (so the channels differ but carry the same speech)."""
    data = np.stack([rec.samples * (1 - 0.3 * k) for k in range(channels)], axis=1)
    buf = io.BytesIO()
    sf.write(buf, data, rec.sample_rate, format=fmt, subtype="PCM_16")
    return buf.getvalue()
