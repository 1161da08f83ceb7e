"""Speech segments of a long recording with Silero VAD. Pure: no Ray, no storage, arrays in and out.

    from pipeline.vad import speech_segments
    segments = speech_segments(decoded.samples, config.audio.vad)  # [(start, end), ...] in samples

The input is the 16 kHz mono float32 signal the emotion model sees (`pipeline.audio.decode`). Silero
scores each 512-sample window (32 ms) for speech; `get_speech_timestamps_from_probs` (silero's own
hysteresis: `threshold`, `min_speech_ms`, `min_silence_ms`, `speech_pad_ms`) turns the scores into
spans. Those spans are then moved outward onto the model's frame grid (multiples of 320 samples, 20 ms,
from the start of `samples`: the file, or the manifest span that was cut from it, whose own start may lie
off the file's grid), so a segment's frames are frames of the signal it came from; a span longer than
`max_segment_s` is split at the quietest 320-sample frame in the second half before the limit. Segments
shorter than the model's 400-sample receptive field are dropped.

Silero's model is loaded once per process and reused (a lock guards it) and runs on one intra-op
thread. Its windows are scored in batches (`speech_probabilities`: the convolutional part at once,
only the LSTM state runs along the windows), not one model call per window. Importing silero_vad's
model code calls `torch.set_num_threads(1)` for the whole process; the thread count is restored after
the import, and after each call. Memory: besides the input, one batch of windows (`BATCH_WINDOWS`,
~33 s of audio) and one float per window (56 k floats for 30 minutes) are held.
"""

from __future__ import annotations

import importlib.util
import threading
import warnings
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np

from .audio import HOP, MIN_SAMPLES, TARGET_SR, import_torch
from .config import VadConfig

WINDOW = 512  # samples per silero score at 16 kHz (silero's fixed window)
CONTEXT = 64  # samples before each window that silero's 16 kHz model sees with it
# windows per batched encoder call (~33 s of audio, 2.4 MB of windows): bounds the memory of long files
BATCH_WINDOWS = 1024
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
    max_len = max_segment_samples(cfg.max_segment_s)
    segments = []
    for start, end in on_grid([(s["start"], s["end"]) for s in spans], len(x)):
        segments.extend(split_long(x, start, end, max_len))
    return [(s, e) for s, e in segments if e - s >= MIN_SAMPLES]


def speech_probabilities(x: np.ndarray) -> np.ndarray:
    """Silero's speech probability of each 512-sample window of `x` ([N] float32, 16 kHz), the last
    window zero-padded: [ceil(N / 512)] float32.

    Silero streams: each call sees its window plus the 64 samples before it (zeros before the first),
    and carries an LSTM state from window to window. Only the LSTM is sequential, so the windows go
    through silero's own STFT and convolutional encoder in batches of `BATCH_WINDOWS`, one
    `torch.nn.LSTM` call (silero's LSTM cell's weights) runs the state along them, and silero's head
    scores them all at once: ~10x less CPU than one model call per window. The scores match the
    window-by-window calls within float rounding (batched kernels sum in another order: |d| < 1e-5,
    tests/test_vad.py). A model without that layout is run window by window."""
    torch, _ = import_torch()
    model, _ = _load()
    with _lock, torch.no_grad():
        threads = torch.get_num_threads()
        # One intra-op thread: the batches are small, and on a busy machine extra threads only wait on
        # each other (a decode task has one core or less). The process's count is restored afterwards.
        torch.set_num_threads(1)
        try:
            parts = _parts(model, torch)
            return _streamed(x, model, torch) if parts is None else _batched(x, parts, torch)
        finally:
            torch.set_num_threads(threads)


def _batched(x: np.ndarray, parts: _Parts, torch) -> np.ndarray:
    n = -(-len(x) // WINDOW)
    probs = np.empty(n, dtype=np.float32)
    state = None  # (h, c): zeros before the first window, as silero's reset_states gives
    offsets = np.arange(CONTEXT + WINDOW)
    for first in range(0, n, BATCH_WINDOWS):
        count = min(BATCH_WINDOWS, n - first)
        # this batch's stretch of the signal with the 64 samples before it, zero-padded at both ends
        lo = first * WINDOW - CONTEXT  # signal index of stretch[0]
        stretch = np.zeros(CONTEXT + count * WINDOW, np.float32)
        part = x[max(lo, 0) : (first + count) * WINDOW]
        stretch[max(lo, 0) - lo :][: len(part)] = part
        # [count, 576]: window k with its context, as silero's forward concatenates them
        windows = torch.from_numpy(stretch[np.arange(count)[:, None] * WINDOW + offsets])
        features = parts.encoder(parts.stft(windows)).squeeze(-1)  # [count, F]
        h, state = parts.lstm(features.unsqueeze(1), state)  # [count, 1, 128]
        scores = parts.head(h.squeeze(1).unsqueeze(-1))  # [count, 1, 1]
        probs[first : first + count] = scores.squeeze(1).mean(1).numpy()
    return probs


def _streamed(x: np.ndarray, model: Any, torch) -> np.ndarray:
    """Silero's model called on one window at a time, as its `get_speech_timestamps` does."""
    probs = np.empty(-(-len(x) // WINDOW), dtype=np.float32)
    model.reset_states()
    for i in range(len(probs)):
        # a fresh small tensor per window: the model keeps the tail of its input as context
        window = np.zeros(WINDOW, dtype=np.float32)
        part = x[i * WINDOW : (i + 1) * WINDOW]
        window[: len(part)] = part
        probs[i] = model(torch.from_numpy(window), TARGET_SR).item()
    return probs


class _Parts(NamedTuple):
    """Silero's 16 kHz model taken apart: STFT, encoder, its LSTM cell as an LSTM layer, the head."""

    stft: Any
    encoder: Any
    lstm: Any
    head: Any


_parts_cache: dict[int, _Parts | None] = {}


def _parts(model: Any, torch) -> _Parts | None:
    """The parts of silero (6.x layout: `_model.stft/encoder/decoder.rnn/decoder.decoder`, 64 samples
    of context, an LSTM cell of 128), or None for a model laid out otherwise."""
    if id(model) not in _parts_cache:
        try:
            m = model._model
            cell, head = m.decoder.rnn, m.decoder.decoder
            if int(m.context_size_samples) != CONTEXT:
                raise ValueError(m.context_size_samples)
            lstm = torch.nn.LSTM(cell.weight_ih.shape[1], cell.weight_hh.shape[1])
            for ours, theirs in (("weight_ih_l0", "weight_ih"), ("weight_hh_l0", "weight_hh")):
                getattr(lstm, ours).data.copy_(getattr(cell, theirs))
            for ours, theirs in (("bias_ih_l0", "bias_ih"), ("bias_hh_l0", "bias_hh")):
                getattr(lstm, ours).data.copy_(getattr(cell, theirs))
            _parts_cache[id(model)] = _Parts(m.stft, m.encoder, lstm.eval(), head)
        except (AttributeError, ValueError, RuntimeError):
            _parts_cache[id(model)] = None
    return _parts_cache[id(model)]


def max_segment_samples(max_segment_s: float, hop: int = HOP) -> int:
    """`max_segment_s` in samples, down to the frame grid. Rounded to samples first: 32.3 s is
    516799.99999999994 samples in floats, which truncated to 32.28 s and split speech of exactly 32.3 s."""
    return round(max_segment_s * TARGET_SR) // hop * hop


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


def require() -> None:
    """Raise ImportError (what to install) where silero-vad is not installed: the driver checks this
    before anything runs, instead of every decode task failing on it mid-run. Looks the package up
    without importing it (its import loads torch)."""
    if importlib.util.find_spec("silero_vad") is None:
        raise ImportError(f"audio.segmentation: vad needs silero-vad, which is not installed: {_INSTALL}")


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
