"""Speech segments of a long recording with Silero VAD. Pure: no Ray, no storage, arrays in and out.

    from pipeline.vad import speech_segments
    segments = speech_segments(decoded.samples, config.audio.vad)  # [(start, end), ...] in samples

The input is the 16 kHz mono float32 signal the emotion model sees (`pipeline.audio.decode`). Silero
scores each 512-sample window (32 ms) for speech; `get_speech_timestamps_from_probs` (silero's own
hysteresis: `threshold`, `min_speech_ms`, `min_silence_ms`, `speech_pad_ms`) turns the scores into
spans. Those spans are then moved outward onto the model's frame grid (multiples of 320 samples, 20 ms,
from the recording start), so a segment's frames are frames of the whole recording; a span longer than
`max_segment_s` is split at the quietest 320-sample frame in the second half before the limit. Segments
shorter than the model's 400-sample receptive field are dropped.

Silero's model is loaded once per process and reused (a lock guards it: the model keeps state between
windows) and runs on one intra-op thread. Importing silero_vad's model code calls
`torch.set_num_threads(1)` for the whole process; the thread count is restored after the import, and
after each call. Memory: besides the input, only one window at a time and one
float per window (56 k floats for 30 minutes) are held.
"""

from __future__ import annotations

import threading
import warnings
from collections.abc import Callable
from typing import Any

import numpy as np

from .audio import HOP, MIN_SAMPLES, TARGET_SR, import_torch
from .config import VadConfig

WINDOW = 512  # samples per silero score at 16 kHz (silero's fixed window)
_INSTALL = "pip install 'emotion2vec-pipeline[vad]' (silero-vad>=6)"

_lock = threading.Lock()
_silero: tuple[Any, Callable[..., list[dict[str, int]]]] | None = None


def speech_segments(
    samples: np.ndarray, cfg: VadConfig, sample_rate: int = TARGET_SR
) -> list[tuple[int, int]]:
    """[start, end) sample indices of speech in `samples` ([N] float32 mono at 16 kHz), sorted, disjoint.

    Every start is a multiple of 320 (the model's hop); every end is too, or N. Each segment has at
    least 400 samples and at most `cfg.max_segment_s` seconds. No speech (or N < 400) gives [].
    Other dtypes than float32 are converted (a copy of the signal).
    """
    if sample_rate != TARGET_SR:
        raise ValueError(f"speech_segments needs {TARGET_SR} Hz samples, got {sample_rate} Hz")
    x = np.asarray(samples, dtype=np.float32)
    if x.ndim != 1:
        raise ValueError(f"speech_segments needs mono samples [N], got shape {x.shape}")
    if len(x) < MIN_SAMPLES:
        return []
    _, timestamps = _load()
    spans = timestamps(
        speech_probabilities(x).tolist(),
        sampling_rate=TARGET_SR,
        threshold=cfg.threshold,
        min_speech_duration_ms=cfg.min_speech_ms,
        min_silence_duration_ms=cfg.min_silence_ms,
        speech_pad_ms=cfg.speech_pad_ms,
        audio_length_samples=len(x),
    )
    max_len = int(cfg.max_segment_s * TARGET_SR) // HOP * HOP
    segments = []
    for start, end in on_grid([(s["start"], s["end"]) for s in spans], len(x)):
        segments.extend(split_long(x, start, end, max_len))
    return [(s, e) for s, e in segments if e - s >= MIN_SAMPLES]


def speech_probabilities(x: np.ndarray) -> np.ndarray:
    """Silero's speech probability of each 512-sample window of `x` ([N] float32, 16 kHz), the last
    window zero-padded: [ceil(N / 512)] float32."""
    torch, _ = import_torch()
    model, _ = _load()
    probs = np.empty(-(-len(x) // WINDOW), dtype=np.float32)
    with _lock, torch.no_grad():
        threads = torch.get_num_threads()
        # One intra-op thread: a 512-sample window is too small to share, and on a busy machine extra
        # threads only wait on each other (20 s of audio takes 0.8 s on one thread, 24 s on two threads
        # of 2 loaded cores). The process's count is restored afterwards.
        torch.set_num_threads(1)
        try:
            model.reset_states()
            for i in range(len(probs)):
                # a fresh small tensor per window: the model keeps the tail of its input as context
                window = np.zeros(WINDOW, dtype=np.float32)
                part = x[i * WINDOW : (i + 1) * WINDOW]
                window[: len(part)] = part
                probs[i] = model(torch.from_numpy(window), TARGET_SR).item()
        finally:
            torch.set_num_threads(threads)
    return probs


def on_grid(spans: list[tuple[int, int]], num_samples: int, hop: int = HOP) -> list[tuple[int, int]]:
    """Sorted spans moved outward onto multiples of `hop` (ends capped at `num_samples`); a start that
    snapping pushed into the previous span begins where that one ends, so the result stays disjoint."""
    out: list[tuple[int, int]] = []
    for s, e in spans:
        start = s // hop * hop
        end = min(num_samples, -(-e // hop) * hop)
        if out and start < out[-1][1]:
            start = out[-1][1]
        if end > start:
            out.append((start, end))
    return out


def split_long(x: np.ndarray, start: int, end: int, max_len: int, hop: int = HOP) -> list[tuple[int, int]]:
    """[start, end) as pieces of at most `max_len` samples (a multiple of `hop`, >= 2 x 400), each cut at
    the start of the lowest-energy `hop`-sample frame between half of `max_len` and `max_len` past the
    piece's start. `start` is on the grid, so every cut is; every piece keeps at least 400 samples."""
    pieces = []
    while end - start > max_len:
        lo = start + (max_len // 2) // hop * hop
        hi = start + (min(max_len, end - start - MIN_SAMPLES) // hop * hop)  # last candidate cut
        frames = x[lo : hi + hop].reshape(-1, hop).astype(np.float64)
        cut = lo + int(np.argmin((frames * frames).sum(axis=1))) * hop
        pieces.append((start, cut))
        start = cut
    pieces.append((start, end))
    return pieces


def _load() -> tuple[Any, Callable[..., list[dict[str, int]]]]:
    """(silero's JIT model, its `get_speech_timestamps_from_probs`), loaded once per process."""
    global _silero
    with _lock:
        if _silero is None:
            torch, _ = import_torch()
            threads = torch.get_num_threads()
            try:
                from silero_vad import get_speech_timestamps_from_probs, load_silero_vad
            except ImportError as e:
                raise ImportError(f"audio.segmentation: vad needs silero-vad: {_INSTALL} ({e})") from e
            finally:
                torch.set_num_threads(threads)  # silero_vad.model sets 1 for the whole process
            with warnings.catch_warnings():  # silero's loader uses deprecated importlib/jit APIs
                warnings.simplefilter("ignore", DeprecationWarning)
                _silero = (load_silero_vad(onnx=False), get_speech_timestamps_from_probs)
        return _silero


class Segmenter:
    """`speech_segments` with its settings bound: what the decode stage calls on each recording
    (picklable, so it travels to the Ray tasks; silero loads there on first use)."""

    def __init__(self, cfg: VadConfig):
        self.cfg = cfg

    def __call__(self, samples: np.ndarray) -> list[tuple[int, int]]:
        return speech_segments(samples, self.cfg)
