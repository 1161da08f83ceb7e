"""Text manifests with one row per line: JSON lines (NeMo's `.json`), a JSON array, CSV, TSV and
`<id> <path>` scp files, each also gzipped (`.jsonl.gz`, `.csv.gz`, ...).

The count pass parses the whole file once and notes the byte offset of every unit's first line when
lines are rows one to one (no blank or comment lines, no quoted newlines), the file is not compressed
and its store honours ranged reads; each piece is then read as a byte range and parsed with the
column types of the whole file. Otherwise the file is read whole by one task.
"""

from __future__ import annotations

import io
import json
import re
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson

from ...config import InputConfig
from ...storage import Storage, scheme
from ..columns import check_unique, normalise, resolve, text_columns
from ..errors import ManifestError
from . import lhotse
from .base import Count, Format, gunzip, is_gzip, read_bytes, text, two_columns

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece

SUFFIXES = {
    ".jsonl": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".scp": "scp",
}
# gzip is told by its bytes and undone whatever the name (base.gunzip): `.gz` only hides the format
SUFFIXES.update({f"{suffix}.gz": fmt for suffix, fmt in SUFFIXES.items()})
SPLITTABLE = ("jsonl", "csv", "tsv", "scp")  # formats whose lines are rows
RANGE_SCHEMES = ("file", "s3", "gs", "az")  # stores that honour ranged reads (a plain HTTP server may not)


def detect(name: str) -> str | None:
    return next((fmt for suffix, fmt in SUFFIXES.items() if name.endswith(suffix)), None)


def count(source: Source, cfg: InputConfig, storage: Storage) -> Count:
    data = read_bytes(source.uri, storage, unzip=False)
    compressed = is_gzip(data)
    data = gunzip(data, source.uri)
    raw = _parse_whole(text(data), source, cfg)
    if not raw.num_columns:  # an empty shard (nothing but blank lines): no rows, nothing to resolve
        return Count(0, pa.schema([]))
    _not_diarisation(raw, cfg, source)
    try:
        cols = resolve(raw.schema, cfg, source.uri)
    except ManifestError:
        # no path: is it a Lhotse RecordingSet or SupervisionSet? Say how to make the CutSet
        lhotse.not_cuts(raw.column_names, source.uri)
        raise
    table = normalise(raw, cols, source.root, source.uri, name=source.name)
    hashes = check_unique(table["id"], source.uri)
    starts = None if compressed else unit_starts(data, source, raw.num_rows, cfg.rows_per_unit)
    return Count(table.num_rows, table.schema, 0.0, raw.schema, starts, hashes)


def _not_diarisation(raw: pa.Table, cfg: InputConfig, source: Source) -> None:
    """Never read rows that name an RTTM as clips unless told to: with `input.format: auto`, a NeMo
    diarisation manifest is recognised by its first line (sources._diarisation); one whose first line
    names no RTTM but a later one does is refused (its turns would be dropped without a word)."""
    if (
        cfg.format != "auto"
        or source.format not in ("json", "jsonl")
        or "rttm_filepath" not in raw.column_names
    ):
        return
    named = pc.fill_null(pc.not_equal(pc.cast(raw["rttm_filepath"], pa.string()), ""), False)
    if pc.any(named).as_py():
        row = pc.index(named, True).as_py() + 1
        raise ManifestError(
            f"{source.uri}: row {row} names an RTTM (rttm_filepath) but the first line of the manifest "
            f"does not: is it a NeMo diarisation manifest? Set input.format: rttm to read the turns of "
            f"each line's RTTM (every line then needs rttm_filepath), or input.format: {source.format} to "
            f"read each line as one clip"
        )


def unit_starts(data: bytes, source: Source, rows: int, size: int) -> tuple[int, ...] | None:
    """Byte offsets of the first line of every unit, when lines are rows one to one and the file can
    be read by ranges; else None (read whole)."""
    fmt = _line_format(data, source.format)
    if fmt not in SPLITTABLE or scheme(source.uri) not in RANGE_SCHEMES:
        return None
    buf = np.frombuffer(data, np.uint8)
    line_starts = np.concatenate(([0], np.flatnonzero(buf == 10) + 1))
    line_starts = line_starts[line_starts < len(data)]
    if fmt in ("csv", "tsv"):
        line_starts = line_starts[1:]  # the header
    if len(line_starts) != rows or rows == 0:
        return None
    return tuple(int(x) for x in line_starts[::size])


def read(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    if piece is None or piece.start is None:
        raw = _parse_whole(text(read_bytes(source.uri, storage)), source, cfg)
    else:
        data = text(read_bytes(source.uri, storage, piece.start, piece.end), first=piece.start == 0)
        if source.format in ("csv", "tsv"):
            data = _header(source, storage) + data
        raw = parse(data, source, raw_schema)
    first_row = (0 if piece is None else piece.first_row) + skip_rows
    cols = resolve(raw.schema, cfg, source.uri)
    yield normalise(raw.slice(skip_rows), cols, source.root, source.uri, first_row, source.name)


def _header(source: Source, storage: Storage) -> bytes:
    """A CSV/TSV manifest's header line, newline included."""
    head = text(read_bytes(source.uri, storage, 0, 1 << 16))
    cut = head.find(b"\n")
    if cut < 0:
        raise ManifestError(f"{source.uri}: the header line is longer than 64 KiB")
    return head[: cut + 1]


def _line_format(data: bytes, fmt: str) -> str:
    # NeMo names its JSON-lines manifests *.json; a JSON array may follow a byte-order mark
    return "jsonl" if fmt == "json" and not text(data[:65536]).lstrip().startswith(b"[") else fmt


def _parse_whole(data: bytes, source: Source, cfg: InputConfig) -> pa.Table:
    """A whole manifest file -> a table; a CSV/TSV whose id, speaker or path column Arrow read as numbers
    is parsed again with them as text (columns.text_columns): its pieces are parsed with this schema."""
    _utf8(data, source)
    raw = parse(data, source)
    if source.format not in ("csv", "tsv") or not raw.num_columns:
        return raw
    strings = text_columns(raw.schema, cfg, source.uri)
    return parse(data, source, strings=strings) if strings else raw


def _utf8(data: bytes, source: Source) -> None:
    """Refuse a manifest that is not UTF-8 (a Latin-1 CSV from a spreadsheet), naming the line and, in
    a CSV/TSV, the column: Arrow reads such a CSV column as binary (which would be taken for audio
    bytes) and JSON lines as they are (invalid strings in the output, that DuckDB refuses to read).
    Pieces are parsed after the count pass has checked the whole file."""
    try:
        data.decode("utf-8")
    except UnicodeDecodeError as e:
        line = data.count(b"\n", 0, e.start) + 1
        what = repr(data[e.start : e.end])
        if source.format in ("csv", "tsv") and line > 1:
            try:  # the columns Arrow read as binary are those holding the bytes
                binary = [f.name for f in parse(data, source).schema if pa.types.is_binary(f.type)]
            except ManifestError:
                binary = []
            what += f" in column {binary[0]!r}" if binary else ""
        raise ManifestError(
            f"{source.uri}: line {line}: not UTF-8 text ({what}); manifests must be UTF-8: convert it "
            f"(e.g. iconv -f latin1 -t utf-8)"
        ) from None


def parse(
    data: bytes, source: Source, raw_schema: pa.Schema | None = None, strings: list[str] | None = None
) -> pa.Table:
    """Manifest bytes (decompressed) -> a table. `raw_schema` (the whole file's, from the count pass)
    keeps the column types of a piece what they are in the whole file; `strings`: CSV/TSV columns read as
    strings, not numbers (columns.text_columns)."""
    uri, fmt = source.uri, _line_format(data, source.format)
    try:
        if fmt == "jsonl":
            if not data.strip():
                return pa.table({})  # Arrow refuses an empty file
            parse = pajson.ParseOptions(explicit_schema=raw_schema) if raw_schema is not None else None
            return pajson.read_json(
                io.BytesIO(data), read_options=pajson.ReadOptions(block_size=1 << 24), parse_options=parse
            )
        if fmt == "json":
            rows = json.loads(data)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ManifestError(f"{uri}: a JSON manifest must be an array of objects")
            # every object's keys, as JSON lines reads them (from_pylist keeps only the first object's)
            keys = dict.fromkeys(k for r in rows for k in r)
            return pa.Table.from_pydict({k: [r.get(k) for r in rows] for k in keys})
        if fmt in ("csv", "tsv"):
            # TSV has no quoting (Kaldi, Common Voice, MELD): a `"` opening a transcript is text
            opts = pacsv.ParseOptions(delimiter="\t", quote_char=False) if fmt == "tsv" else None
            types = {f.name: f.type for f in raw_schema} if raw_schema is not None else None
            types = types or {n: pa.string() for n in strings or ()}
            table = pacsv.read_csv(
                io.BytesIO(data), parse_options=opts, convert_options=pacsv.ConvertOptions(column_types=types)
            )
            _check_rows(table, data, fmt, uri)
            return table
        if fmt == "scp":
            ids, paths = two_columns(data, uri, "<id> <path>")
            return pa.table({"id": ids, "path": paths})
        raise ManifestError(f"{uri}: unknown format {fmt!r}")
    except (pa.ArrowInvalid, ValueError, UnicodeDecodeError, EOFError) as e:
        if isinstance(e, ManifestError):
            raise
        where = _jsonl_line(data, str(e)) if fmt == "jsonl" else None
        if where is not None:
            raise ManifestError(f"{uri}: {where}") from None
        raise ManifestError(f"{uri}: cannot parse as {fmt}: {e}") from None


_TYPE_CHANGE = re.compile(r"Column\((?P<path>[^)]*)\) changed from \w+ to \w+")


def _jsonl_line(data: bytes, error: str) -> str | None:
    """The line of a JSON-lines manifest that Arrow's error is about, said from 1 as every other
    manifest message counts lines: Arrow's "in row N" counts from 0 within its read block. Looked up
    only once parsing failed: the first line that is not a JSON object, or, for a column whose type
    changed, the first line whose value there is not of the type the first value had."""
    change = _TYPE_CHANGE.search(error)
    keys = [k for k in change.group("path").split("/") if k] if change else []
    first: str | None = None
    for n, line in enumerate(data.decode("utf-8", "replace").splitlines(), 1):
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except ValueError as e:
            return f"line {n}: not JSON ({e})"
        if not isinstance(value, dict):
            return f"line {n}: not a JSON object (a {_json_type(value)})"
        if not keys:
            continue
        for k in keys:
            value = value.get(k) if isinstance(value, dict) else None
        if value is None:
            continue
        kind = _json_type(value)
        first = first or kind
        if kind != first:
            return (
                f"line {n}: column {'.'.join(keys)!r} is a {kind} here but a {first} in the lines before; "
                f"a column must hold one type (quote the numbers, or write them all as numbers)"
            )
    return None


def _json_type(value: object) -> str:
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    if isinstance(value, str):
        return "string"
    return "list" if isinstance(value, list) else "object"


def _check_rows(table: pa.Table, data: bytes, fmt: str, uri: str) -> None:
    """A TSV (or a CSV without quotes) has one row per non-empty line after the header: any other
    count means rows were merged or lost, which must never pass silently."""
    if fmt == "csv" and b'"' in data:
        return  # quoted CSV fields may hold newlines
    buf = np.frombuffer(data, np.uint8)
    ends = np.concatenate((np.flatnonzero(buf == 10), [len(data)]))
    starts = np.concatenate(([0], ends[:-1] + 1))
    lines = int(np.count_nonzero(ends > starts)) - 1  # the header
    if table.num_rows != lines:
        raise ManifestError(
            f"{uri}: {table.num_rows} rows parsed from {lines} data lines; every line of a "
            f"{fmt.upper()} manifest must be one row (a stray line break or field separator?)"
        )


FORMAT = Format(("jsonl", "json", "csv", "tsv", "scp"), detect, read, count)
