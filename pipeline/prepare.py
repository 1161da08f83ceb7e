"""The CPU stage: fetch or unpack each row's audio, decode it to 16 kHz mono, cut its span, split it
into speech segments when asked, or record why not.

Input: normalised manifest blocks (see pipeline/manifest/). Output: one row per span to run through the
model (a recording split by voice activity becomes several rows), with `error`, `duration_s`,
`sample_rate`, `channels`, `recording_id`, `offset_s`, `start_s`, `end_s` and `waveform`
(large_list<float32>, null when there is nothing to run). No exception escapes for a bad row: every
failure becomes `error = "stage: ExceptionType: message"` naming the file. Rows of one recording
that follow each other (segments of a long file) share one fetch and one decode. Output blocks are
cut by decoded audio size, so the model stage gets similar amounts of work per call.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace

import numpy as np
import pyarrow as pa

from .audio import DEFAULT_RESAMPLER, TARGET_SR, AudioError, DecodedAudio, cut, decode
from .poison import NAMESPACE, Guard, maybe_crash
from .schema import (
    AUDIO_BYTES,
    CHANNEL,
    DECODE_TIME,
    INPUT_ERROR,
    MANIFEST_ID,
    SEGMENT_TOTAL,
    SPAN_END,
    STORAGE_RETRIES,
    WAVEFORM,
)
from .storage import FileTooLarge, Storage

Segmenter = Callable[[np.ndarray], list[tuple[int, int]]]  # 16 kHz samples -> [start, end) spans


@dataclass(frozen=True)
class Limits:
    """Refuse audio that would take a worker down: too big from its size before it is downloaded,
    too long from its header before it is decoded (where the header tells)."""

    max_duration_s: float | None = None
    max_file_mb: float | None = None


@dataclass
class Span:
    """One output row in the making."""

    source: int  # index of its manifest row in the block
    id: str
    error: str | None = None
    audio: DecodedAudio | None = None
    samples: np.ndarray | None = None  # what the model runs on, until it is copied into the block
    length: int | None = None  # its samples in the block (None: nothing to run)
    start_s: float | None = None  # this row's span in the recording (a VAD segment's, or the manifest's)
    end_s: float | None = None
    offset_s: float | None = None  # where the manifest row's span starts (null: a whole file)
    recording_id: str | None = None
    first: bool = True  # the first row its manifest row became
    duration_s: float | None = None  # a row with nothing to run: its span's seconds (None: the file's)


def prepare_block(
    batch: pa.Table,
    *,
    storage: Storage,
    limits: Limits = Limits(),
    segmenter: Segmenter | None = None,
    block_mb: float = 64.0,
    poison_scope: str = NAMESPACE,
    resampler: str = DEFAULT_RESAMPLER,
) -> Iterator[pa.Table]:
    """A block of manifest rows -> blocks of model-ready rows (see the module docstring); other rates
    than 16 kHz go through `resampler` (`audio.RESAMPLERS`)."""
    t0 = time.perf_counter()
    budget = int(block_mb * 2**20 / 4)  # float32 samples per output block
    pending: list[Span] = []
    block = _Samples(budget)
    loader = _Loader(storage, limits, resampler)
    guard = Guard("decode", batch["id"].to_pylist(), poison_scope)
    for i, row in enumerate(_rows(batch)):
        if row["id"] in guard.poisoned:
            # the span the manifest asked for stays on this error row, as on any other (_asked)
            spans = [replace(_asked(i, row), error=f"decode: {guard.message(row['path'] or row['id'])}")]
        else:
            guard.before(row["id"])
            maybe_crash("decode", row["path"] or row["id"])
            spans = _spans(i, row, loader, segmenter)
        for span in spans:
            pending.append(span)
            if span.samples is not None:
                span.length = block.add(span.samples)
                span.samples = None  # the block holds them now: the decoded array can go
        if block.size >= budget:
            yield _table(batch, pending, block.take(), time.perf_counter() - t0, loader.retries())
            pending, block, t0 = [], _Samples(budget), time.perf_counter()
    if pending:
        yield _table(batch, pending, block.take(), time.perf_counter() - t0, loader.retries())
    guard.done()


class _Samples:
    """The output block's samples, one after another, in a buffer that Arrow then uses as it is.

    Each span's samples are copied in as soon as they are made, while they are still in the CPU's
    caches: concatenating them when the block is full read every sample back from memory, ~10 % of a
    decode task's CPU under Ray (bench/RESULTS.md). The buffer comes from a per-process pool (`_POOL`)
    and goes back to it when the last Arrow array over it is gone."""

    SLACK = 60 * TARGET_SR  # the span that fills a block goes past the budget by up to its length

    def __init__(self, budget: int):
        self._buf = _POOL.get(budget + self.SLACK)
        self.size = 0

    def add(self, samples: np.ndarray) -> int:
        end = self.size + len(samples)
        if end > len(self._buf):  # a long recording: grow (one copy of what is there)
            grown = np.empty(max(end, 2 * len(self._buf)), np.float32)
            grown[: self.size] = self._buf[: self.size]
            _POOL.put(self._buf)  # nothing else holds it yet: not exported to Arrow
            self._buf = grown
        self._buf[self.size : end] = samples
        self.size = end
        return len(samples)

    def take(self) -> pa.Array:
        """The samples as a float32 Arrow array over the buffer (no copy); the buffer goes back to the
        pool when that array and every slice of it are released. This object is spent then."""
        buf, self._buf = self._buf, None
        data = pa.foreign_buffer(buf.ctypes.data, self.size * buf.itemsize, base=_Lease(buf, _POOL))
        return pa.Array.from_buffers(pa.float32(), self.size, [None, data])


class _Pool:
    """Block buffers kept between blocks. A fresh buffer's pages are zeroed by the kernel on first
    touch, which cost a decode task under Ray more CPU than reading 16 kHz wav (bench/RESULTS.md);
    a buffer used before costs nothing. The pool only gets back what Arrow released, so a buffer that
    anything still holds (Ray before it has copied the block into its object store, a caller keeping
    the table) is never written again. It keeps `keep` buffers of at most `max_len` samples (two, as
    Ray holds the last block while the next is made: two blocks' worth of memory per decode worker
    process, resident between blocks; a buffer grown for a long recording past 128 MB is freed)."""

    def __init__(self, keep: int = 2, max_len: int = 2**25):
        self.keep, self.max_len = keep, max_len
        self.free: list[np.ndarray] = []

    def get(self, n: int) -> np.ndarray:
        while self.free:
            try:
                buf = self.free.pop()
            except IndexError:  # another thread took the last one
                break
            if len(buf) >= n:
                return buf
        return np.empty(n, np.float32)

    def put(self, buf: np.ndarray) -> None:  # no global lookups: may run as the interpreter shuts down
        if len(self.free) < self.keep and len(buf) <= self.max_len:
            self.free.append(buf)


class _Lease:
    """Holds a pooled buffer for as long as Arrow holds its memory; gives it back after."""

    __slots__ = ("buf", "pool")

    def __init__(self, buf: np.ndarray, pool: _Pool):
        self.buf, self.pool = buf, pool

    def __del__(self):
        self.pool.put(self.buf)


_POOL = _Pool()


def _rows(batch: pa.Table) -> Iterator[dict]:
    names = ["id", "path", "recording_id", "offset_s", SPAN_END, AUDIO_BYTES, INPUT_ERROR, CHANNEL]
    cols = {n: batch[n].to_pylist() if n in batch.column_names else [None] * batch.num_rows for n in names}
    for i in range(batch.num_rows):
        yield {n: cols[n][i] for n in names}


class _Loader:
    """Fetch + decode, remembering the last recording (segments of one file come in a row)."""

    def __init__(self, storage: Storage, limits: Limits, resampler: str = DEFAULT_RESAMPLER):
        self.storage, self.limits, self.resampler = storage, limits, resampler
        self._key: tuple[str, int | None] | None = None
        self._last: DecodedAudio | str | None = None
        self._counted = sum(storage.retries.values())

    def retries(self) -> int:
        """Storage retries since the last call (the Storage object lives on across blocks)."""
        total = sum(self.storage.retries.values())
        new, self._counted = total - self._counted, total
        return new

    def _max_bytes(self) -> int | None:
        mb = self.limits.max_file_mb
        return None if mb is None else int(mb * 2**20)

    def load(self, row: dict) -> DecodedAudio | str:
        """-> the decoded audio, or the error string for the row."""
        # a turn analysed on its own channel (schema.CHANNEL) is another decode of the same file
        key = (row["path"], row[CHANNEL]) if row[AUDIO_BYTES] is None and row["path"] is not None else None
        if key is not None and key == self._key:
            return self._last  # type: ignore[return-value]
        result = self._load(row)
        self._key, self._last = key, result
        return result

    def _load(self, row: dict) -> DecodedAudio | str:
        path, data = row["path"], row[AUDIO_BYTES]
        name = path or row["id"]
        if data is None:
            if not path:
                return "input: ValueError: the manifest row has no audio path"
            try:
                data = self.storage.read_bytes(path, max_bytes=self._max_bytes())
            except FileTooLarge as e:
                return f"fetch: FileTooLarge: {e} (audio.max_file_mb)"
            except Exception as e:  # noqa: BLE001 - any fetch failure is this row's error
                return f"fetch: {type(e).__name__}: {_msg(e, path)}"
        try:
            return decode(
                data,
                name=name,
                max_duration_s=self.limits.max_duration_s,
                max_bytes=self._max_bytes(),
                resampler=self.resampler,
                channel=row[CHANNEL],
            )
        except Exception as e:  # noqa: BLE001 - whatever the decoder raises is this row's error
            return f"decode: {type(e).__name__}: {name}: {e}"


def _asked(i: int, row: dict) -> Span:
    """The manifest row's span as the manifest asked for it: what its error rows keep."""
    offset, end = row["offset_s"], row[SPAN_END]
    start = (offset or 0.0) if offset is not None or end is not None else None
    return Span(i, row["id"], recording_id=row["recording_id"], start_s=start, end_s=end, offset_s=start)


def _spans(i: int, row: dict, loader: _Loader, segmenter: Segmenter | None) -> list[Span]:
    offset, end = row["offset_s"], row[SPAN_END]
    base = _asked(i, row)  # what the manifest asked for, kept on error rows too
    spanned = base.start_s is not None
    if row[INPUT_ERROR]:
        return [replace(base, error=f"input: ValueError: {row[INPUT_ERROR]}")]
    audio = loader.load(row)
    if isinstance(audio, str):
        return [replace(base, error=audio)]
    base.audio = audio
    samples = audio.samples
    if spanned:
        try:
            samples = cut(samples, offset or 0.0, end)
        except AudioError as e:
            inside = _inside(len(samples), offset or 0.0, end)  # the span's duration, not the file's
            return [
                replace(base, error=f"decode: AudioError: {row['path'] or row['id']}: {e}", duration_s=inside)
            ]
        base.end_s = base.start_s + len(samples) / TARGET_SR
    whole = replace(base, samples=samples)
    if segmenter is None:
        return [whole]
    return _segment(whole, segmenter)


def _inside(n: int, start_s: float, end_s: float | None) -> float:
    """Seconds of the span [start_s, end_s) that lie within `n` samples at 16 kHz (0 for bad times)."""
    if not all(t is None or (math.isfinite(t) and t >= 0) for t in (start_s, end_s)):
        return 0.0
    a = round(start_s * TARGET_SR)
    b = n if end_s is None else min(n, round(end_s * TARGET_SR))
    return max(0, b - a) / TARGET_SR


def _segment(whole: Span, segmenter: Segmenter) -> list[Span]:
    """One span -> its speech segments, ids `<id>-<start cs>-<end cs>` (Kaldi's style, stable)."""
    assert whole.samples is not None
    sr = TARGET_SR
    origin = whole.start_s or 0.0
    rec = whole.id
    spans = []
    for a, b in segmenter(whole.samples):
        start, end = origin + a / sr, origin + b / sr
        sid = f"{rec}-{round(start * 100):07d}-{round(end * 100):07d}"
        spans.append(
            Span(
                whole.source,
                sid,
                audio=whole.audio,
                samples=whole.samples[a:b],
                start_s=start,
                end_s=end,
                offset_s=whole.offset_s,
                recording_id=rec,
                first=not spans,
            )
        )
    if not spans:  # no speech: the recording still appears once, with nothing to run
        seconds = len(whole.samples) / sr  # the span's, not its file's
        return [
            Span(
                whole.source,
                rec,
                audio=whole.audio,
                recording_id=rec,
                offset_s=whole.offset_s,
                duration_s=seconds,
            )
        ]
    return spans


def _table(batch: pa.Table, spans: list[Span], values: pa.Array, seconds: float, retries: int) -> pa.Table:
    """The block's rows; `values` holds the samples of the spans that have any, one after another."""
    n = len(spans)
    private = (AUDIO_BYTES, SPAN_END, INPUT_ERROR, CHANNEL)
    # dropped before the rows are taken: a manifest row becomes one row per speech segment, and taking
    # its audio bytes first copied the whole recording once per segment
    base = batch.drop_columns([c for c in private if c in batch.column_names])
    base = base.take(pa.array([s.source for s in spans], pa.int64()))
    audio = [s.audio for s in spans]
    known = np.array([a is not None for a in audio])
    has_wave = np.array([s.length is not None for s in spans])
    lengths = np.array([s.length or 0 for s in spans], np.int64)
    offsets = np.concatenate([[0], np.cumsum(lengths)])
    unrun = [
        a.duration_s if s.duration_s is None and a else s.duration_s or 0.0
        for s, a in zip(spans, audio, strict=True)
    ]
    duration = np.where(has_wave, lengths / TARGET_SR, unrun)
    columns = {
        MANIFEST_ID: base["id"],
        "id": pa.array([s.id for s in spans], pa.string()),
        "recording_id": pa.array([s.recording_id for s in spans], pa.string()),
        "start_s": pa.array([s.start_s for s in spans], pa.float64()),
        "end_s": pa.array([s.end_s for s in spans], pa.float64()),
        "offset_s": pa.array([s.offset_s for s in spans], pa.float64()),
    }
    for name, arr in columns.items():
        at = base.schema.get_field_index(name)
        base = base.set_column(at, name, arr) if at >= 0 else base.append_column(name, arr)
    extra = {
        "error": pa.array([s.error for s in spans], pa.string()),
        "duration_s": pa.array(duration, pa.float32(), mask=~known),
        "sample_rate": pa.array([a.sample_rate if a else 0 for a in audio], pa.int32(), mask=~known),
        "channels": pa.array([a.channels if a else 0 for a in audio], pa.int32(), mask=~known),
        WAVEFORM: pa.LargeListArray.from_arrays(
            pa.array(offsets, pa.int64()), values, mask=pa.array(~has_wave)
        ),
        SEGMENT_TOTAL: pa.array(_totals(spans), pa.int64()),
        DECODE_TIME: pa.array(np.full(n, seconds / max(n, 1)), pa.float64()),
        STORAGE_RETRIES: pa.array([retries] + [0] * (n - 1), pa.int64()),
    }
    for name, arr in extra.items():
        base = base.append_column(name, arr)
    return base


def _totals(spans: list[Span]) -> list[int]:
    """On each manifest row's first output row: how many output rows it became (0 on the others), so
    the writer can tell when every row of a unit has arrived, however blocks were split on the way."""
    totals = [0] * len(spans)
    first = 0
    for k, s in enumerate(spans):
        if s.first:
            first = k
        totals[first] += 1
    return totals


def _msg(e: Exception, path: str) -> str:
    s = str(e).strip() or repr(e)
    return s if path in s else f"{path}: {s}"
