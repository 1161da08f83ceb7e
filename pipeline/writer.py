"""Parquet output: sharded files committed atomically, the resume scan, the uniqueness check and
`_run.json`.

Exactly-once at the file level: a shard's name is a hash of the ids it holds, so a write task that
Ray retries (after a worker died) rewrites the same file instead of adding a second copy. Files
become visible atomically (hidden temp file + rename locally; one PUT on S3). After every run,
`dedupe` scans the `id` column of the whole output and, should any id appear twice (an error row
superseded by a later ok row on resume, or a crash between the two), keeps one row per id
(an ok row over an error row) and rewrites the affected files.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import time
from dataclasses import dataclass
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pyarrow.parquet as pq

from .schema import read_metadata
from .storage import Storage, join

log = logging.getLogger(__name__)

RUN_FILE = "_run.json"
# Private columns the stages add for the run summary; never written to the output files.
MODEL_NODE_COLUMN = "_model_node"  # which Ray node ran the model on each row
DECODE_TIME_COLUMN = "_decode_s"  # per-row share of its decode call's wall time
MODEL_TIME_COLUMN = "_model_s"  # per-row share of its model call's wall time
MODEL_RUNTIME_COLUMN = "_model_runtime"  # "<device> <dtype>" the model really ran in (ok rows)


def shard_name(ids: list[str]) -> str:
    h = hashlib.sha1("\n".join(sorted(ids)).encode("utf-8")).hexdigest()[:24]
    return f"part-{h}.parquet"


def _to_bytes(table: pa.Table, compression: str) -> bytes:
    sink = io.BytesIO()
    pq.write_table(
        table,
        sink,
        compression=None if compression == "none" else compression,
        row_group_size=max(1, min(table.num_rows, 1024)),
    )
    return sink.getvalue()


def write_shard(
    batch: pa.Table,
    *,
    output: str,
    schema: pa.Schema,
    storage: Storage,
    compression: str = "zstd",
    max_file_mb: float = 128.0,
) -> pa.Table:
    """Write one block of result rows as one or more Parquet files; return one summary row per file."""
    t0 = time.perf_counter()
    table = batch.select(schema.names).cast(schema)
    n = table.num_rows
    parts = max(1, math.ceil(table.nbytes / (max_file_mb * 1e6)))
    step = max(1, math.ceil(n / parts))
    rows: list[dict[str, Any]] = []
    for start in range(0, n, step):
        part = table.slice(start, step)
        name = shard_name(part["id"].to_pylist())
        storage.write_bytes_atomic(join(output, name), _to_bytes(part, compression))
        n_err = int(pc.sum(pc.is_valid(part["error"])).as_py() or 0)
        rows.append(
            {
                "file": name,
                "rows": part.num_rows,
                "ok": part.num_rows - n_err,
                "error": n_err,
                "audio_s": float(pc.sum(part["duration_s"]).as_py() or 0.0),
                "model_nodes": json.dumps(_counts(batch, MODEL_NODE_COLUMN, start, step)),
                "model_runtimes": json.dumps(_counts(batch, MODEL_RUNTIME_COLUMN, start, step)),
                "decode_s": _sum(batch, DECODE_TIME_COLUMN, start, step),
                "model_s": _sum(batch, MODEL_TIME_COLUMN, start, step),
            }
        )
    total = time.perf_counter() - t0
    for r in rows:
        r["write_s"] = total * r["rows"] / max(n, 1)
    return pa.Table.from_pylist(rows)


def _sum(batch: pa.Table, column: str, start: int, length: int) -> float:
    if column not in batch.column_names:
        return 0.0
    return float(pc.sum(batch[column].slice(start, length)).as_py() or 0.0)


def _counts(batch: pa.Table, column: str, start: int, length: int) -> dict[str, int]:
    if column not in batch.column_names:
        return {}
    return {
        r["values"]: r["counts"]
        for r in pc.value_counts(batch[column].slice(start, length)).to_pylist()
        if r["values"]
    }


# -- reading back -------------------------------------------------------------------------------


def output_files(storage: Storage, output: str) -> list[str]:
    return storage.list_files(output, ".parquet")


def scan_ids(storage: Storage, output: str) -> pa.Table:
    """-> table(id, error, file) over every output file (reads two columns only)."""
    files = output_files(storage, output)
    if not files:
        return pa.table(
            {
                "id": pa.array([], pa.string()),
                "error": pa.array([], pa.string()),
                "file": pa.array([], pa.string()),
            }
        )
    fs, _ = storage.resolve(output)
    paths = [storage.resolve(f)[1] for f in files]
    ds = pads.dataset(paths, filesystem=fs, format="parquet")
    t = ds.to_table(columns=["id", "error", "__filename"])
    return t.rename_columns(["id", "error", "file"])


def existing_metadata(storage: Storage, output: str) -> dict[str, Any] | None:
    """Pipeline metadata of the output already there: `_run.json` if present, else the first file."""
    run = join(output, RUN_FILE)
    if storage.exists(run):
        try:
            return json.loads(storage.read_bytes(run)).get("output_metadata")
        except (ValueError, OSError):
            pass
    files = output_files(storage, output)
    if not files:
        return None
    fs, path = storage.resolve(files[0])
    return read_metadata(pq.read_schema(path, filesystem=fs))


@dataclass
class DedupeReport:
    rows: int
    unique_ids: int
    removed: int
    files_rewritten: int


def dedupe(storage: Storage, output: str, newer: set[str] = frozenset()) -> DedupeReport:
    """Prove that ids are unique across the output; repair duplicates by keeping one row per id
    and rewriting the files that lose rows. The row kept: an ok row over an error row, then a row
    in one of the `newer` files (names written by the current run), then the first file by name."""
    t = scan_ids(storage, output)
    n = t.num_rows
    if n == 0:
        return DedupeReport(0, 0, 0, 0)
    counts = pc.value_counts(t["id"])
    dup_ids = counts.filter(pc.greater(counts.field("counts"), 1)).field("values")
    if len(dup_ids) == 0:
        return DedupeReport(n, n, 0, 0)
    sub = t.filter(pc.is_in(t["id"], value_set=dup_ids)).to_pylist()
    sub.sort(
        key=lambda r: (r["id"], r["error"] is not None, r["file"].rsplit("/", 1)[-1] not in newer, r["file"])
    )
    drop: dict[str, list[str]] = {}  # file -> ids to remove from it
    seen: set[str] = set()
    for r in sub:
        if r["id"] in seen:
            drop.setdefault(r["file"], []).append(r["id"])
        else:
            seen.add(r["id"])
    fs, _ = storage.resolve(output)
    removed = 0
    for path, ids in drop.items():
        table = pq.read_table(path, filesystem=fs)
        keep = table.filter(pc.invert(pc.is_in(table["id"], value_set=pa.array(ids, pa.string()))))
        removed += table.num_rows - keep.num_rows
        uri = _uri_like(output, path)
        if keep.num_rows == 0:
            storage.delete(uri)
        else:
            storage.write_bytes_atomic(uri, _to_bytes(keep, "zstd"))
    log.info("dedupe: removed %d duplicate rows from %d files", removed, len(drop))
    return DedupeReport(n, n - removed, removed, len(drop))


def _uri_like(output: str, fs_path: str) -> str:
    if output.startswith(("s3://", "s3a://")):
        return "s3://" + fs_path.lstrip("/")
    return fs_path


def write_run_json(storage: Storage, output: str, info: dict[str, Any]) -> None:
    storage.write_bytes_atomic(join(output, RUN_FILE), json.dumps(info, indent=2, sort_keys=False).encode())
