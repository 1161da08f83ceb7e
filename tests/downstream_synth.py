"""A small learnable frames output written directly in the job's schema (pipeline/schema.py), without
the model or Ray: for the streaming trainer's tests (resume, splits, bounded shuffles), which need
several files and row groups more than real speech.

Each class has its own mean frame; a row is that mean plus noise, 3-12 frames long. Rows carry a
`session` (group), a `split` (train / validation / test) and an `emotion` label. Bad rows are added as
the job writes them: an error row (no features), a row without a label, one labelled outside the set,
and one whose frames are missing (num_frames 0, frames null)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from pipeline.schema import output_schema

LABELS = ["ang", "hap", "neu", "sad"]
BAD = {
    "error": "bad-error",
    "no_label": "bad-nolabel",
    "label_not_in_set": "bad-fru",
    "no_frames": "bad-noframes",
}


def rows_table(schema: pa.Schema, n: int, dim: int, start: int, rng: np.random.Generator, means) -> pa.Table:
    """n good rows: id r-<start+i>, label 3i % 4, session (i // 4) % 4 + 1, split by id (70/10/20 %)."""
    ids = [f"r-{start + i:05d}" for i in range(n)]
    y = (np.arange(start, start + n) * 7) % len(LABELS)
    lengths = rng.integers(3, 13, n)
    frames = []
    for k in range(n):  # test data: a loop over rows is fine here
        f = means[y[k]] + rng.normal(0, 1.0, (lengths[k], dim))
        frames.append(f.astype(np.float16))
    flat = np.concatenate(frames).reshape(-1)
    inner = pa.FixedSizeListArray.from_arrays(pa.array(flat, pa.float16()), dim)
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int32)
    frames_col = pa.ListArray.from_arrays(pa.array(offsets), inner)
    emb = np.stack([f.astype(np.float32).mean(0) for f in frames])
    pos = np.arange(start, start + n)
    split = np.where(pos % 10 < 7, "train", np.where(pos % 10 < 8, "validation", "test"))
    data = {
        "id": ids,
        "path": [f"{i}.wav" for i in ids],
        "num_frames": lengths.astype(np.int32),
        "duration_s": (lengths * 0.02).astype(np.float32),
        "embedding": pa.FixedSizeListArray.from_arrays(pa.array(emb.reshape(-1), pa.float32()), dim),
        "frames": frames_col,
        "emotion": [LABELS[c] for c in y],
        "session": ((pos // 4) % 4 + 1).astype(np.int64),
        "split": split.tolist(),
    }
    cols = []
    for f in schema:
        if f.name in data:
            cols.append(
                pa.array(data[f.name], f.type) if not isinstance(data[f.name], pa.Array) else data[f.name]
            )
        else:
            cols.append(pa.nulls(n, f.type))
    return pa.Table.from_arrays(cols, schema=schema)


def write_synthetic(
    out: Path, n: int = 240, dim: int = 16, files: int = 3, row_group: int = 16, seed: int = 0
) -> Path:
    """`files` Parquet files of good rows (row groups of `row_group` rows) plus the bad rows."""
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    means = rng.normal(0, 0.6, (len(LABELS), dim))
    passthrough = pa.schema([("emotion", pa.string()), ("session", pa.int64()), ("split", pa.string())])
    schema = output_schema(dim, 9, True, passthrough)
    per = -(-n // files)
    for k in range(files):
        t = rows_table(schema, min(per, n - k * per), dim, k * per, rng, means)
        if k == 0:
            bad = rows_table(schema, 4, dim, 90_000, rng, means)
            bad = bad.set_column(0, schema.field("id"), pa.array(list(BAD.values()), pa.string()))
            err = pa.array(["decode failed", None, None, None], pa.string())
            bad = bad.set_column(schema.get_field_index("error"), schema.field("error"), err)
            emo = pa.array(["ang", None, "fru", "ang"], pa.string())
            bad = bad.set_column(schema.get_field_index("emotion"), schema.field("emotion"), emo)
            frames = bad["frames"].to_pylist()
            frames[0] = frames[3] = None  # the error row and the row whose frames are missing
            nf = pa.array([0 if f is None else len(f) for f in frames], pa.int32())
            bad = bad.set_column(schema.get_field_index("num_frames"), schema.field("num_frames"), nf)
            fr = pa.array(frames, schema.field("frames").type)
            bad = bad.set_column(schema.get_field_index("frames"), schema.field("frames"), fr)
            t = pa.concat_tables([t, bad])
        # files written in reverse id order, so file order != id order
        pq.write_table(t, out / f"part-{files - k:03d}.parquet", row_group_size=row_group)
    return out
