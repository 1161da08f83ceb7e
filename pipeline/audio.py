"""Pure audio functions: encoded bytes -> float32 mono 16 kHz samples, validation, windows.

Contract: no Ray, no storage, no file system; bytes in, arrays out.

- `decode` reads with soundfile (libsndfile 1.2: wav 16/24/32-bit int and float, flac, ogg/vorbis,
  ogg/opus, mp3; the format is detected from the content, not the name), averages the channels and
  resamples other rates with `torchaudio.functional.resample` at its defaults (`RESAMPLER`), the
  resampler the FunASR reference uses, so results match it on non-16 kHz input. Float32 throughout.
- Every failure is an `AudioError` (a `ValueError`) whose message says what is wrong; the caller
  prefixes the stage and the file. Silence is valid audio.
- A wav or mp3 cut short decodes to the part that is there (libsndfile's behaviour); truncated
  flac/ogg/opus data raises.
"""

from __future__ import annotations

import io
import math
from dataclasses import dataclass
from pathlib import PurePosixPath

import numpy as np
import soundfile as sf

TARGET_SR = 16_000
MIN_SAMPLES = 400  # emotion2vec's CNN receptive field at 16 kHz (25 ms)
RESAMPLER = "torchaudio.functional.resample(sinc_interp_hann, lowpass_filter_width=6, rolloff=0.99)"
HOP = 320  # samples between frames (20 ms): the CNN's total stride

MIN_SOURCE_SR = 1_000  # below this a file is not audio we can use
# The resampling kernel is about (new/g) x (orig/g) float32 weights, g = gcd(orig, 16000): 16 x 3 for
# 48 kHz, 160 x 441 for 44.1 kHz, but 16000 x 11127 (~700 MB) for an odd rate such as 11127 Hz.
MAX_KERNEL_ELEMENTS = 1 << 25  # 128 MiB of float32

SUPPORTED = "wav, flac, ogg/vorbis, ogg/opus, mp3"
# libsndfile log lines that explain why a file yielded nothing
_LOG_PROBLEMS = ("error", "unexpected", "should be", "malformed", "lacks")


class AudioError(ValueError):
    """Audio that cannot become model input; the message names the problem."""


@dataclass
class DecodedAudio:
    """A decoded clip: model-ready samples plus what the source file was."""

    samples: np.ndarray  # [N] float32 mono at 16 kHz, all finite
    sample_rate: int  # of the source file, Hz
    channels: int  # of the source file

    @property
    def duration_s(self) -> float:
        return len(self.samples) / TARGET_SR


def decode(data: bytes, name: str = "", max_duration_s=None, max_bytes=None) -> DecodedAudio:
    """Encoded audio bytes -> validated 16 kHz mono float32. `name` is only used in messages."""
    if len(data) == 0:
        raise AudioError("empty file (0 bytes)")
    x, sr = _read(data, name)  # [frames, channels] float32
    channels = x.shape[1]
    if len(x) == 0:
        raise AudioError(f"no samples decoded (header: 0 frames at {sr} Hz, {channels} channel(s))")
    mono = _downmix(x)  # [frames]
    del x  # for multichannel input, free the interleaved copy before resampling
    if not np.isfinite(mono).all():
        raise AudioError("contains non-finite samples (NaN/Inf)")
    samples = to_mono_16k(mono, sr)
    validate(samples)
    return DecodedAudio(samples, sr, channels)


def to_mono_16k(x: np.ndarray, sample_rate: int) -> np.ndarray:
    """[frames] or [frames, channels] float -> [N] float32 mono at 16 kHz, N = ceil(frames * 16000 / sr).

    Channels are averaged; other rates go through `torchaudio.functional.resample` with its defaults.
    Raises `AudioError` for a sample rate that cannot be resampled sanely.
    """
    mono = _downmix(x) if x.ndim == 2 else np.ascontiguousarray(x, np.float32)
    if sample_rate == TARGET_SR:
        return mono
    _check_rate(sample_rate)
    # imported here: 16 kHz input (the common case) never pays the ~3 s torch import in a decode
    # worker. (Ray starts task workers with OMP_NUM_THREADS=1, so resampling stays on one core.)
    import torch
    import torchaudio

    return torchaudio.functional.resample(torch.from_numpy(mono), sample_rate, TARGET_SR).numpy()


def validate(samples: np.ndarray, min_samples: int = MIN_SAMPLES) -> None:
    """Raise `AudioError` unless `samples` ([N] at 16 kHz) are long enough for the model and finite."""
    n = len(samples)
    if n < min_samples:
        raise AudioError(
            f"too short: {n} samples at 16 kHz ({1000 * n / TARGET_SR:.1f} ms); "
            f"at least {min_samples} ({1000 * min_samples / TARGET_SR:.0f} ms) needed"
        )
    if not np.isfinite(samples).all():
        raise AudioError("contains non-finite samples (NaN/Inf)")


def chunk_bounds(
    num_samples: int, max_chunk_samples: int, min_samples: int = MIN_SAMPLES, hop: int = HOP
) -> list[tuple[int, int]]:
    """[start, end) windows, in order, for a clip too long to run at once; one window when it fits.

    Windows start at multiples of W = `max_chunk_samples` rounded down to a multiple of `hop`, and
    each but the last reaches `min_samples - hop` (80) samples past the next start, so it yields exactly
    W / hop frames that sit on the whole clip's frame grid: concatenating the windows' frames gives
    floor((N - 400) / 320) + 1 frames with frame i at 20 ms * i, as for the unsplit clip. A last
    window shorter than `min_samples` is merged into the one before it.
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


def _read(data: bytes, name: str) -> tuple[np.ndarray, int]:
    """bytes -> ([frames, channels] float32, sample rate); any decoder failure is an `AudioError`."""
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            sr = f.samplerate
            x = f.read(dtype="float32", always_2d=True)
            if len(x) == 0:
                problems = [ln.strip() for ln in f.extra_info.splitlines() if _is_problem(ln)]
                if problems:
                    raise AudioError(
                        f"corrupt or truncated audio: no samples decoded ({'; '.join(problems)})"
                    )
    except AudioError:
        raise
    except sf.LibsndfileError as e:
        raise AudioError(_libsndfile_message(e.error_string, name)) from None
    except Exception as e:  # noqa: BLE001 - whatever the C decoder or its wrapper throws is bad input
        raise AudioError(f"cannot decode: {type(e).__name__}: {e}") from None
    return x, int(sr)


def _is_problem(log_line: str) -> bool:
    """A libsndfile log line that reports damage (e.g. "data : 61812 (should be 1)")."""
    low = log_line.lower()
    return any(word in low for word in _LOG_PROBLEMS)


def _libsndfile_message(error: str, name: str) -> str:
    """libsndfile's error string (without soundfile's "Error opening <BytesIO at 0x...>" prefix) -> message."""
    error = error.strip()
    if "format not recognised" in error.lower():
        ext = PurePosixPath(name).suffix.lower()
        which = f" {ext!r}" if ext else ""
        return f"unsupported or unrecognised audio format{which}: libsndfile reads {SUPPORTED}"
    return f"corrupt or truncated audio: {error}"


def _downmix(x: np.ndarray) -> np.ndarray:
    """[frames, channels] -> [frames] float32, the mean over channels (no copy for mono float32)."""
    channels = x.shape[1]
    if channels == 1:
        return np.ascontiguousarray(x[:, 0], np.float32)
    # a running sum over channels: same result as x.mean(axis=1), but ~10x faster for few channels
    mono = x[:, 0].astype(np.float32)
    for c in range(1, channels):
        mono += x[:, c]
    mono /= np.float32(channels)
    return mono


def _check_rate(sample_rate: int) -> None:
    """Raise `AudioError` for a source rate too low to be audio or too odd to resample in sane memory."""
    g = math.gcd(sample_rate, TARGET_SR)
    if sample_rate < MIN_SOURCE_SR or (sample_rate // g) * (TARGET_SR // g) > MAX_KERNEL_ELEMENTS:
        raise AudioError(f"unsupported sample rate {sample_rate} Hz: cannot resample it to 16 kHz sanely")


def cut(samples: np.ndarray, start_s: float, end_s: float | None) -> np.ndarray:  # TEMPORARY
    a = round(start_s * TARGET_SR)
    b = len(samples) if end_s is None else round(end_s * TARGET_SR)
    if a >= len(samples):
        raise AudioError(
            f"segment starts at {start_s:.3f} s, past the end of the audio ({len(samples) / TARGET_SR:.3f} s)"
        )
    if b > len(samples) + 1600:
        raise AudioError(
            f"segment ends at {end_s:.3f} s, past the end of the audio ({len(samples) / TARGET_SR:.3f} s)"
        )
    out = samples[a:b]
    validate(out)
    return out
