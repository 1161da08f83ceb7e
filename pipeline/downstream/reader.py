"""Streaming reads of the job's output for training: a catalog of the usable rows, epoch plans, and a
prefetching reader that turns a plan into padded batches with bounded memory.

    cat = build_catalog(cfg)                              # pass 1: small columns only
    plan = train_plan(cat, rows, batch_size, capacity)    # [batch] -> catalog rows, decided up front
    for x, mask, y in stream_batches(cat, plan, ...):     # pass 2: frames, one row group at a time
        ...

Why this shape. The catalog (id, label, group, split, frame count and the row group of every row) is a
few dozen bytes a row, so it is read whole; the frames are not. An epoch's order is computed from the
catalog before any frame is read, which makes it a pure function of (seed, catalog, capacity): a resumed
run rebuilds the same order and skips the batches already done, and the reader knows which rows of a
row group it will ever need, so it keeps only those.

Order. When the rows of a split fit in `capacity` bytes (frames as stored: T x D float16) the order is
the in-memory trainer's (a torch DataLoader over the same row list draws the same permutation from the
global RNG), so both trainers give identical results with the same seed. When they do not, row groups
are visited in a random order and their rows pass through a rolling shuffle buffer of `capacity`
bytes (a random row leaves whenever the buffer is over capacity): the usual bounded-memory shuffle.
Evaluation keeps the given order when it fits, and file order otherwise.

Memory. The reader loads a row group the first time the plan needs one of its rows and keeps a copy
of the rows the plan still needs from it; a row leaves when its batch is built. What it holds is what
the simulated buffer holds, less rows of row groups not yet needed, plus the batch being built: at most
`capacity` + one row group + one batch (tests/test_downstream_stream.py checks it), plus the
`read_ahead` row groups being decoded and the `prefetch` padded batches waiting for the model.

Batches: frames `[B, T, D]` float32 zero-padded, padding mask `[B, T]` (True at padding), labels `[B]`;
built from one concatenation of the rows' `[T, D]` arrays and index arithmetic, no loop over frames.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections import deque
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ..storage import Storage

log = logging.getLogger(__name__)


@dataclass
class Catalog:
    """The usable rows of an output, in (`order_by`, id) order, and where their features lie.

    Row k: ids[k], y[k] (label index), groups[k] (fold_column value or None), splits[k] (split_column
    value or None), lengths[k] (frames; 1 for embeddings), in row group units[unit[k]] = (file index,
    row group index) at position row_in_unit[k] of it."""

    kind: str  # "frames" | "utterance"
    feature_col: str
    dim: int
    fs: Any  # pyarrow FileSystem
    paths: list[str]
    metadata: list[pq.FileMetaData]
    units: list[tuple[int, int]]
    ids: list[str]
    y: np.ndarray
    groups: np.ndarray
    splits: np.ndarray
    lengths: np.ndarray
    unit: np.ndarray
    row_in_unit: np.ndarray
    label_names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    def __len__(self) -> int:
        return len(self.ids)

    def row_bytes(self, rows: np.ndarray) -> np.ndarray:
        """Bytes each row holds in the reader (frames T x D float16; an embedding D float32)."""
        per = 2 * self.dim if self.kind == "frames" else 4 * self.dim
        return self.lengths[rows] * per


def read_light(storage: Storage, uri: str, columns: list[str]) -> tuple[pa.Table, Any, list, list]:
    """The small columns of every Parquet file under `uri`, one table, plus `_file`, `_rg`, `_row`
    (file index, row group, row within it) per row; -> (table, fs, paths, file metadata)."""
    files = storage.list_files(uri, ".parquet")
    if not files:
        raise FileNotFoundError(f"no Parquet files under {uri}")
    fs, _ = storage.resolve(uri)
    paths = [storage.resolve(f)[1] for f in files]
    tables, metas = [], []
    for i, path in enumerate(paths):
        with fs.open_input_file(path) as f:
            pf = pq.ParquetFile(f)
            meta = pf.metadata
            names = set(pf.schema_arrow.names)
            t = pf.read(columns=[c for c in columns if c in names])
            if "num_frames" in columns and "num_frames" not in names and "frames" in names:
                # frames written by another tool, without the job's count: count them, one row group
                # at a time (null frames count 0: a no_frames row)
                counts = [pc.list_value_length(pf.read_row_group(g, columns=["frames"]).column(0)).chunks
                          for g in range(meta.num_row_groups)]  # fmt: skip
                t = t.append_column(
                    "num_frames", pa.chunked_array([c for cs in counts for c in cs], pa.int32())
                )
        metas.append(meta)
        rg_rows = np.array([meta.row_group(g).num_rows for g in range(meta.num_row_groups)], np.int64)
        rg = np.repeat(np.arange(len(rg_rows)), rg_rows)
        row = np.arange(int(rg_rows.sum())) - np.repeat(np.cumsum(rg_rows) - rg_rows, rg_rows)
        t = t.append_column("_file", pa.array(np.full(t.num_rows, i, np.int64)))
        t = t.append_column("_rg", pa.array(rg)).append_column("_row", pa.array(row))
        tables.append(t)
    return pa.concat_tables(tables, promote_options="default"), fs, paths, metas


# -- plans ----------------------------------------------------------------------------------------


def _chunks(order: np.ndarray, batch_size: int) -> list[np.ndarray]:
    return [order[i : i + batch_size] for i in range(0, len(order), batch_size)]


def _loader_batches(n: int, batch_size: int, shuffle: bool) -> list[np.ndarray]:
    """Positions 0..n-1 batched by a torch DataLoader exactly as the in-memory trainer's loader does,
    drawing the same numbers from the global RNG (its base seed, and the sampler's seed when shuffled)."""
    from torch.utils.data import DataLoader

    loader = DataLoader(range(n), batch_size=batch_size, shuffle=shuffle, collate_fn=list)
    return [np.asarray(b, np.int64) for b in loader]


def train_plan(cat: Catalog, rows: np.ndarray, batch_size: int, capacity: int) -> list[np.ndarray]:
    """One training epoch's batches of catalog rows (draws from the torch global RNG)."""
    import torch

    rows = np.asarray(rows, np.int64)
    if int(cat.row_bytes(rows).sum()) <= capacity:
        return [rows[b] for b in _loader_batches(len(rows), batch_size, shuffle=True)]
    rng = np.random.default_rng(int(torch.empty((), dtype=torch.int64).random_().item()))
    units = cat.unit[rows]
    by_unit = np.argsort(units, kind="stable")
    bounds = np.flatnonzero(np.diff(units[by_unit])) + 1
    groups = np.split(rows[by_unit], bounds)  # rows of each unit, file order
    sizes = cat.row_bytes(rows)
    size_of = dict(zip(rows.tolist(), sizes.tolist(), strict=True))
    buf: list[int] = []
    held = 0
    order: list[int] = []
    for g in rng.permutation(len(groups)):
        for r in groups[g].tolist():
            buf.append(r)
            held += size_of[r]
        while held > capacity and buf:  # a random row leaves (swap with the last, pop)
            i = int(rng.integers(len(buf)))
            buf[i], buf[-1] = buf[-1], buf[i]
            r = buf.pop()
            held -= size_of[r]
            order.append(r)
    order.extend(np.asarray(buf, np.int64)[rng.permutation(len(buf))].tolist())
    return _chunks(np.asarray(order, np.int64), batch_size)


def eval_plan(cat: Catalog, rows: np.ndarray, batch_size: int, capacity: int) -> list[np.ndarray]:
    """Evaluation batches: the given order when the rows fit in `capacity`, else file order (one row
    group at a time). Draws what the in-memory trainer's sequential loader draws."""
    rows = np.asarray(rows, np.int64)
    batches = _loader_batches(len(rows), batch_size, shuffle=False)
    if int(cat.row_bytes(rows).sum()) <= capacity:
        return [rows[b] for b in batches]
    order = rows[np.lexsort((cat.row_in_unit[rows], cat.unit[rows]))]
    return _chunks(order, batch_size)


# -- reading --------------------------------------------------------------------------------------


def read_unit(cat: Catalog, u: int, positions: np.ndarray) -> list[np.ndarray]:
    """Rows at `positions` of row group `u`: a compact copy of each one's features ([T, D] float16
    frames or [D] float32 embedding), so the row group itself is freed when this returns."""
    file_index, rg = cat.units[u]
    with cat.fs.open_input_file(cat.paths[file_index]) as f:
        pf = pq.ParquetFile(f, metadata=cat.metadata[file_index])
        col = pf.read_row_group(rg, columns=[cat.feature_col]).column(0)
    if cat.kind == "frames":
        from .train import frames_to_numpy

        values, lengths = frames_to_numpy(col)  # [sum T, D] float16, [rows]
        starts = np.cumsum(lengths) - lengths
        rows = [values[starts[p] : starts[p] + lengths[p]].copy() for p in positions.tolist()]
        del values
    else:
        col = col.combine_chunks()
        emb = col.flatten().to_numpy(zero_copy_only=False).reshape(-1, cat.dim)  # [valid rows, D]
        at = (
            np.cumsum(col.is_valid().to_numpy(zero_copy_only=False)) - 1
        )  # row -> its index in emb (error rows are null)
        rows = [np.asarray(emb[at[p]], np.float32).copy() for p in positions.tolist()]
    del col
    # Arrow's allocator keeps freed pages for reuse; a row group's decode buffers are large and
    # short-lived, so hand them back (peak RSS follows the buffer setting, not the allocator's history)
    pa.default_memory_pool().release_unused()
    return rows


def frames_missing(where: str, row_id: str, num_frames: int) -> ValueError:
    """A row kept for its `num_frames` whose frames are null or empty (features pieced together outside
    the job, which writes both or neither): padded, it would be all padding, 0/0 in the masked mean, and
    NaN losses would ruin the model without a word."""
    return ValueError(
        f"{where}: row {row_id!r} has num_frames {num_frames} but no frames (null or empty): the features "
        "disagree with themselves; rewrite them, or drop the row"
    )


def collate(cat: Catalog, arrays: list[np.ndarray], y: np.ndarray):
    """Row arrays -> (x, mask, y) tensors; frames zero-padded to the longest row."""
    import torch

    if cat.kind != "frames":
        return torch.from_numpy(np.stack(arrays).astype(np.float32, copy=False)), None, torch.from_numpy(y)
    lens = np.fromiter((len(a) for a in arrays), np.int64, len(arrays))  # [B]
    b, t, total = len(arrays), int(lens.max()), int(lens.sum())
    flat = np.concatenate(arrays)  # [sum L, D] float16
    row = np.repeat(np.arange(b), lens)  # [sum L] destination row of each frame
    pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)  # [sum L] time index in its row
    x = np.zeros((b, t, cat.dim), np.float32)
    x[row, pos] = flat
    mask = np.arange(t)[None, :] >= lens[:, None]  # [B, T]
    return torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(y)


_END = object()


class _Failed:
    def __init__(self, e: BaseException) -> None:
        self.e = e


def stream_batches(
    cat: Catalog,
    plan: list[np.ndarray],
    *,
    skip: int = 0,
    prefetch: int = 2,
    read_ahead: int = 2,
    stats: dict[str, float] | None = None,
) -> Iterator[tuple[Any, Any, Any]]:
    """Batches of `plan[skip:]`, built by a background thread that reads row groups `read_ahead` at a
    time (pyarrow decodes without the GIL) and keeps up to `prefetch` batches ready. `stats` (if given)
    gets `wait_s`: seconds the caller waited for a batch, and `peak_held_bytes`: the most row bytes held."""
    todo = plan[skip:]
    if not todo:
        return
    flat = np.concatenate(todo)
    need: dict[int, list[int]] = {}  # unit -> rows still needed from it, file order
    for r in flat[np.lexsort((cat.row_in_unit[flat], cat.unit[flat]))].tolist():
        need.setdefault(int(cat.unit[r]), []).append(r)
    load_order: list[int] = []  # units in the order their first row is needed
    seen: set[int] = set()
    for u in cat.unit[flat].tolist():
        if u not in seen:
            seen.add(u)
            load_order.append(u)
    out: queue.Queue = queue.Queue(maxsize=max(1, prefetch))
    stop = threading.Event()
    peak = [0]

    def put(item: Any) -> bool:
        while not stop.is_set():
            try:
                out.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        held: dict[int, np.ndarray] = {}
        held_bytes = 0
        pending: deque = deque()
        next_unit = 0
        try:
            with ThreadPoolExecutor(max(1, read_ahead), thread_name_prefix="e2v-read") as pool:

                def top_up() -> None:
                    nonlocal next_unit
                    while next_unit < len(load_order) and len(pending) < max(1, read_ahead):
                        u = load_order[next_unit]
                        rows = need[u]
                        pos = cat.row_in_unit[np.asarray(rows, np.int64)]
                        pending.append((rows, pool.submit(read_unit, cat, u, pos)))
                        next_unit += 1

                for batch in todo:
                    for r in batch.tolist():
                        while r not in held:  # load units in plan order until this row is there
                            top_up()
                            rows, fut = pending.popleft()
                            for rr, a in zip(rows, fut.result(), strict=True):
                                if len(a) == 0:  # kept for its num_frames >= 1: see frames_missing
                                    where = cat.paths[cat.units[int(cat.unit[rr])][0]]
                                    raise frames_missing(where, cat.ids[rr], int(cat.lengths[rr]))
                                held[rr] = a
                                held_bytes += a.nbytes
                            peak[0] = max(peak[0], held_bytes)
                            top_up()
                    arrays = [held.pop(r) for r in batch.tolist()]
                    held_bytes -= sum(a.nbytes for a in arrays)
                    if not put(collate(cat, arrays, cat.y[batch])):
                        return
                    if stop.is_set():
                        return
            put(_END)
        except BaseException as e:  # noqa: BLE001 - handed to the consumer, which re-raises it
            put(_Failed(e))

    import time

    thread = threading.Thread(target=produce, name="e2v-batches", daemon=True)
    thread.start()
    try:
        while True:
            t0 = time.perf_counter()
            item = out.get()
            if stats is not None:
                stats["wait_s"] = stats.get("wait_s", 0.0) + time.perf_counter() - t0
            if item is _END:
                break
            if isinstance(item, _Failed):
                raise item.e
            yield item
    finally:
        stop.set()
        thread.join()
        if stats is not None:
            stats["peak_held_bytes"] = max(stats.get("peak_held_bytes", 0), peak[0])


def pad_frames(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """A frames column as any reader returns it (the job's `list<fixed_size_list<float16, D>>`, Polars'
    large lists, DuckDB's `list<list<float>>`) -> (x [B, T, D] float32 zero-padded, mask [B, T] True at
    padding). From the Arrow list offsets: no loop over rows or frames. Null rows have length 0."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    lens = pc.fill_null(pc.list_value_length(col), 0).to_numpy(zero_copy_only=False).astype(np.int64)  # [B]
    inner = col.flatten()  # [sum T] one [D] list per frame (respects slicing, skips nulls)
    if pa.types.is_fixed_size_list(inner.type):
        dim = inner.type.list_size
    else:
        dim = int(pc.max(pc.list_value_length(inner)).as_py() or 0) if len(inner) else 0
    flat = inner.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim)  # [sum T, D]
    b, t, total = len(lens), int(lens.max(initial=0)), int(lens.sum())
    row = np.repeat(np.arange(b), lens)  # [sum T] destination row of each frame
    pos = np.arange(total) - np.repeat(np.cumsum(lens) - lens, lens)  # [sum T] time index in its row
    x = np.zeros((b, t, dim), np.float32)
    x[row, pos] = flat
    return x, np.arange(t)[None, :] >= lens[:, None]
