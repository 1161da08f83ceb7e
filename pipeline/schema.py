"""The output Parquet schema, its file-level metadata, and the private columns the stages add.

The public columns are described in docs/architecture.md (Output). Private columns start with `_`:
they carry bookkeeping between the stages (which unit of work a row belongs to, timings) and are
never written to the output files."""

from __future__ import annotations

import json
from typing import Any

import pyarrow as pa

# Our columns, in order; `frames` only when output.frames is on.
OUTPUT_COLUMNS = (
    "id",
    "path",
    "error",
    "recording_id",
    "speaker",
    "offset_s",
    "start_s",
    "end_s",
    "overlap_s",
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


# -- private columns (between stages only) --------------------------------------------------------
AUDIO_BYTES = "_audio_bytes"  # audio carried inside the manifest (binary), instead of a path to fetch
SPAN_END = "_end_s"  # end of the manifest row's span in its file, seconds (null: to the end)
CHANNEL = "_channel"  # the 0-based channel to analyse (a diariser turn's); null: the mix of all channels
INPUT_ERROR = "_input_error"  # a manifest row that cannot be processed, with the reason
MANIFEST_ID = (
    "_manifest_id"  # the id of the manifest row an output row came from (a VAD segment's is not its own)
)
UNIT = "_unit"  # the unit of work (a committed group of rows) the row belongs to
UNIT_ROWS = "_unit_rows"  # manifest rows of that unit processed by this run
SEGMENT_TOTAL = "_seg_total"  # on a recording's first output row: how many rows it became; else 0
DECODE_TIME = "_decode_s"  # per-row share of its decode call's wall time
MODEL_TIME = "_model_s"  # per-row share of its model call's wall time
MODEL_NODE = "_model_node"  # which Ray node ran the model on the row (ok rows)
MODEL_RUNTIME = "_model_runtime"  # "<device> <dtype>" the model really ran in (ok rows)
STORAGE_RETRIES = "_storage_retries"  # transient storage errors retried while preparing the rows
WAVEFORM = "waveform"  # 16 kHz mono float32 samples, between decode and the model


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
        pa.field("recording_id", pa.string()),
        pa.field("speaker", pa.string()),
        pa.field("offset_s", pa.float64()),
        pa.field("start_s", pa.float64()),
        pa.field("end_s", pa.float64()),
        pa.field("overlap_s", pa.float64()),
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


def passthrough_schema(table_schema: pa.Schema | None) -> pa.Schema:
    """The manifest's own columns: all but ours and the private ones."""
    if table_schema is None:
        return pa.schema([])
    return pa.schema([f for f in table_schema if f.name not in OUTPUT_COLUMNS and not f.name.startswith("_")])
