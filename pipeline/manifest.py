"""Read a manifest (local or s3://) into a normalised Arrow table.

Formats: JSON lines, a JSON array, CSV, TSV, Parquet and Kaldi `wav.scp` (`<id> <path>` per line).
The id comes from `input.id_column` or the first of `id`, `key`, `utt_id`; the audio path from
`input.path_column` or the first of `path`, `audio_filepath`, `wav`, `source` (our, NeMo, FunASR and
EmoBox conventions). Relative paths resolve against `input.audio_root`, else against the
manifest's own directory. Every other column passes through unchanged; one whose name collides
with an output column is renamed `manifest_<name>`.
"""

from __future__ import annotations

import io
import json
import logging
from dataclasses import dataclass, field

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .config import InputConfig
from .schema import OUTPUT_COLUMNS
from .storage import Storage, is_s3, join

log = logging.getLogger(__name__)

ID_ALIASES = ("id", "key", "utt_id")
PATH_ALIASES = ("path", "audio_filepath", "wav", "source")


class ManifestError(ValueError):
    pass


@dataclass
class Manifest:
    table: pa.Table  # id: string, path: string (resolved), then passthrough columns
    source: str
    id_column: str  # names in the source manifest
    path_column: str
    renamed: dict[str, str] = field(default_factory=dict)

    @property
    def passthrough(self) -> list[str]:
        return self.table.column_names[2:]

    def __len__(self) -> int:
        return self.table.num_rows


def detect_format(uri: str, head: bytes) -> str:
    name = uri.rsplit("/", 1)[-1].lower()
    for suffix, fmt in (
        (".jsonl", "jsonl"),
        (".ndjson", "jsonl"),
        (".csv", "csv"),
        (".tsv", "tsv"),
        (".parquet", "parquet"),
        (".pq", "parquet"),
        (".scp", "scp"),
    ):
        if name.endswith(suffix):
            return fmt
    if name.endswith(".json"):
        return "json" if head.lstrip().startswith(b"[") else "jsonl"
    if head.startswith(b"PAR1"):
        return "parquet"
    raise ManifestError(
        f"{uri}: cannot tell the manifest format from the name; set input.format "
        f"(jsonl, json, csv, tsv, parquet, scp)"
    )


def _parse(data: bytes, fmt: str, uri: str) -> pa.Table:
    try:
        if fmt == "parquet":
            return pq.read_table(io.BytesIO(data))
        if fmt == "jsonl":
            return pajson.read_json(io.BytesIO(data))
        if fmt == "json":
            rows = json.loads(data)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ManifestError(f"{uri}: a JSON manifest must be an array of objects")
            return pa.Table.from_pylist(rows)
        if fmt in ("csv", "tsv"):
            opts = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
            return pacsv.read_csv(io.BytesIO(data), parse_options=opts)
        if fmt == "scp":
            ids, paths = [], []
            for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
                if not line.strip() or line.lstrip().startswith("#"):
                    continue
                parts = line.strip().split(maxsplit=1)
                if len(parts) != 2:
                    raise ManifestError(f"{uri}: line {n}: expected '<id> <path>', got {line.strip()!r}")
                ids.append(parts[0])
                paths.append(parts[1])
            return pa.table({"id": pa.array(ids, pa.string()), "path": pa.array(paths, pa.string())})
    except ManifestError:
        raise
    except (pa.ArrowInvalid, ValueError, UnicodeDecodeError) as e:
        raise ManifestError(f"{uri}: cannot parse as {fmt}: {e}") from None
    raise ManifestError(f"{uri}: unknown format {fmt!r}")


def _pick(columns: list[str], explicit: str | None, aliases: tuple[str, ...], what: str, uri: str) -> str:
    if explicit:
        if explicit not in columns:
            raise ManifestError(
                f"{uri}: input.{what}_column={explicit!r} is not a column (columns: {columns})"
            )
        return explicit
    for a in aliases:
        if a in columns:
            return a
    raise ManifestError(
        f"{uri}: no {what} column: expected one of {', '.join(aliases)} or set input.{what}_column (columns: {columns})"
    )


def read_manifest(cfg: InputConfig, storage: Storage) -> Manifest:
    uri = cfg.manifest
    try:
        data = storage.read_bytes(uri)
    except (FileNotFoundError, IsADirectoryError) as e:
        raise ManifestError(f"input.manifest: {e}") from None
    except OSError as e:
        raise ManifestError(f"input.manifest: cannot read {uri}: {e}") from None
    fmt = cfg.format if cfg.format != "auto" else detect_format(uri, data[:64])
    table = _parse(data, fmt, uri)
    if table.num_rows == 0:
        raise ManifestError(f"{uri}: the manifest has no rows")
    if cfg.limit:
        table = table.slice(0, cfg.limit)
    cols = table.column_names
    id_col = _pick(cols, cfg.id_column, ID_ALIASES, "id", uri)
    path_col = _pick(cols, cfg.path_column, PATH_ALIASES, "path", uri)

    ids = table[id_col].cast(pa.string())
    nulls = pc.sum(pc.is_null(ids)).as_py() or 0
    if nulls:
        first = pc.index(pc.is_null(ids), True).as_py()
        raise ManifestError(f"{uri}: {nulls} rows have no {id_col!r} (the first is row {first + 1})")
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        ex = dup[0]["values"].as_py()
        n = dup[0]["counts"].as_py()
        raise ManifestError(
            f"{uri}: duplicate ids: {len(dup)} ids occur more than once, e.g. {ex!r} ({n} times); ids must be unique"
        )

    root = cfg.audio_root
    if root is None:
        root = uri.rsplit("/", 1)[0] if is_s3(uri) else _local_dir(uri)
    paths = [
        None if p is None or not str(p).strip() else join(root, str(p).strip())
        for p in table[path_col].to_pylist()
    ]

    out = {"id": ids, "path": pa.array(paths, pa.string())}
    renamed = {}
    for name in cols:
        if name in (id_col, path_col):
            continue
        new = f"manifest_{name}" if name in OUTPUT_COLUMNS else name
        if new != name:
            renamed[name] = new
        out[new] = table[name]
    if renamed:
        log.warning("manifest columns renamed to avoid output columns: %s", renamed)
    return Manifest(pa.table(out), uri, id_col, path_col, renamed)


def _local_dir(uri: str) -> str:
    import os

    return os.path.dirname(os.path.abspath(os.path.expanduser(uri)))
