"""The output Parquet schema (DESIGN.md §3) and its file-level metadata."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

FRAME_RATE = 50  # frames per second of emotion2vec features (hop 320 samples at 16 kHz)

# Our columns, in order; `frames` only when output.frames is on.
OUTPUT_COLUMNS = (
    "id",
    "path",
    "error",
    "duration_s",
    "sample_rate",
    "channels",
    "num_frames",
    "label",
    "scores",
    "embedding",
    "segments",
    "frames",
)


def segments_type(num_classes: int) -> pa.DataType:
    """Emotion over time: one entry per processing window (`audio.max_chunk_s`); a clip that fits
    in one window has one segment covering it."""
    return pa.list_(
        pa.struct(
            [
                pa.field("start_s", pa.float32()),
                pa.field("end_s", pa.float32()),
                pa.field("label", pa.string()),
                pa.field("scores", pa.list_(pa.float32(), num_classes or 9)),
            ]
        )
    )


def output_schema(
    embed_dim: int,
    num_classes: int,
    frames: bool,
    passthrough: pa.Schema,
    metadata: dict[str, Any] | None = None,
) -> pa.Schema:
    fields = [
        pa.field("id", pa.string(), nullable=False),
        pa.field("path", pa.string()),
        pa.field("error", pa.string()),
        pa.field("duration_s", pa.float32()),
        pa.field("sample_rate", pa.int32()),
        pa.field("channels", pa.int32()),
        pa.field("num_frames", pa.int32()),
        pa.field("label", pa.string()),
        pa.field("scores", pa.list_(pa.float32(), num_classes or 9)),
        pa.field("embedding", pa.list_(pa.float32(), embed_dim)),
        pa.field("segments", segments_type(num_classes)),
    ]
    if frames:
        fields.append(pa.field("frames", pa.list_(pa.list_(pa.float16(), embed_dim))))
    fields.extend(passthrough)
    md = None
    if metadata is not None:
        md = {b"emotion2vec_pipeline": json.dumps(metadata, sort_keys=True).encode()}
    return pa.schema(fields, metadata=md)


def read_metadata(schema: pa.Schema) -> dict[str, Any] | None:
    raw = (schema.metadata or {}).get(b"emotion2vec_pipeline")
    return json.loads(raw) if raw else None


def passthrough_schema(table_schema: pa.Schema) -> pa.Schema:
    """The manifest columns after id and path."""
    return pa.schema([f for f in table_schema if f.name not in ("id", "path")])
