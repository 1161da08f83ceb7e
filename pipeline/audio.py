"""Pure audio functions: encoded bytes -> float32 mono 16 kHz samples, validation, windows.

No Ray, no storage: bytes in, arrays out. Decoding is soundfile's (libsndfile: wav 16/24/32-bit
int and float, flac, ogg/vorbis, ogg/opus, mp3); channels are averaged; other sample rates are
resampled with `torchaudio.functional.resample` at its defaults, the resampler the FunASR
reference uses, so results match it on non-16 kHz input. Every failure is an `AudioError` whose
message says what is wrong; the caller adds the stage and the file.
"""

from __future__ import annotations

import io
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import torch
import torchaudio

TARGET_SR = 16_000
MIN_SAMPLES = 400  # emotion2vec's CNN receptive field at 16 kHz (25 ms)
RESAMPLER = "torchaudio.functional.resample(sinc_interp_hann, lowpass_filter_width=6, rolloff=0.99)"


class AudioError(ValueError):
    """Audio that cannot become model input; the message names the problem."""


@dataclass
class DecodedAudio:
    samples: np.ndarray  # [N] float32 mono at 16 kHz, all finite
    sample_rate: int  # of the source file
    channels: int  # of the source file

    @property
    def duration_s(self) -> float:
        return len(self.samples) / TARGET_SR


def decode(data: bytes, name: str = "") -> DecodedAudio:
    """Encoded audio -> validated 16 kHz mono float32."""
    if len(data) == 0:
        raise AudioError("empty file (0 bytes)")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr, ch, frames = f.samplerate, f.channels, f.frames
            x = f.read(dtype="float32", always_2d=True)  # [frames, channels]
    except sf.LibsndfileError as e:
        msg = str(e)
        if "unknown format" in msg.lower() or "format not recognised" in msg.lower():
            raise AudioError(f"unsupported or unrecognised audio format ({msg})") from None
        raise AudioError(f"cannot decode: {msg}") from None
    except (RuntimeError, TypeError, ValueError) as e:
        raise AudioError(f"cannot decode: {type(e).__name__}: {e}") from None
    if x.shape[0] == 0:
        raise AudioError(f"no samples (header says {frames} frames at {sr} Hz)")
    if sr <= 0:
        raise AudioError(f"invalid sample rate {sr}")
    if not np.isfinite(x).all():
        raise AudioError("contains non-finite samples (NaN/Inf)")
    samples = to_mono_16k(x, sr)
    validate(samples)
    return DecodedAudio(samples, int(sr), int(ch))


def to_mono_16k(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """[frames] or [frames, channels] float -> [N] float32 mono at 16 kHz."""
    mono = x.mean(axis=1, dtype=np.float32) if x.ndim == 2 else np.asarray(x, np.float32)
    if sample_rate == TARGET_SR:
        return np.ascontiguousarray(mono, np.float32)
    out = torchaudio.functional.resample(torch.from_numpy(np.ascontiguousarray(mono)), sample_rate, TARGET_SR)
    return out.numpy()


def validate(samples: np.ndarray, min_samples: int = MIN_SAMPLES) -> None:
    n = len(samples)
    if n < min_samples:
        raise AudioError(
            f"too short: {n} samples at 16 kHz ({1000 * n / TARGET_SR:.1f} ms); "
            f"at least {min_samples} ({1000 * min_samples / TARGET_SR:.0f} ms) needed"
        )
    if not np.isfinite(samples).all():
        raise AudioError("contains non-finite samples (NaN/Inf)")


HOP = 320  # samples between frames (20 ms): the CNN's total stride


def chunk_bounds(
    num_samples: int, max_chunk_samples: int, min_samples: int = MIN_SAMPLES, hop: int = HOP
) -> list[tuple[int, int]]:
    """[start, end) windows for a clip too long to run at once.

    Windows start at multiples of W = `max_chunk_samples` rounded down to a multiple of `hop`, and
    each but the last reaches `min_samples - hop` samples past the next start, so it yields exactly
    W / hop frames that sit on the whole clip's frame grid: concatenating the windows' frames gives
    floor((N - 400) / 320) + 1 frames with frame i at 20 ms * i, as for the unsplit clip. A last
    window shorter than `min_samples` is merged into the one before it. One window when the clip fits.
    """
    if num_samples <= max_chunk_samples:
        return [(0, num_samples)]
    w = max(hop, max_chunk_samples // hop * hop)
    overlap = min_samples - hop
    bounds = [(s, min(s + w + overlap, num_samples)) for s in range(0, num_samples, w)]
    if len(bounds) > 1 and bounds[-1][1] - bounds[-1][0] < min_samples:
        bounds.pop()
        bounds[-1] = (bounds[-1][0], num_samples)
    return bounds
