"""Manifests as corpora ship them -> normalised Arrow blocks, grouped into units of work.

What `input.manifest` may name (see docs/corpora.md for one recipe each):
- a manifest file: JSON lines (also `.jsonl.gz`), a JSON array, CSV, TSV, Parquet (audio paths, or the
  audio bytes themselves: a `binary` column or the Hugging Face `Audio` struct<bytes, path>),
  Kaldi `wav.scp`, a Lhotse CutSet (`cuts.jsonl[.gz]`: one row per supervision);
- a Kaldi data directory (`wav.scp`, optional `segments`, `utt2spk`, `text`, other `utt2*` files);
- a glob or a directory of manifest files (all of one format, read as one manifest);
- a glob or a directory of audio files, or one audio file: every file is a row, id = its path
  relative to the directory without the extension.

A row may name a span of its file: NeMo `offset` + `duration`, or `start` + `end` (seconds).
The id comes from `input.id_column` or the first of `id`, `key`, `utt_id`; the audio from
`input.path_column` or the first of `path`, `audio_filepath`, `wav`, `source`, `audio`. Relative
paths resolve against `input.audio_root`, else against the manifest's own directory. Every other
column passes through; one whose name collides with an output column is renamed `manifest_<name>`.

Scale: the driver only lists sources and holds per-source counts. Each source is cut into *units*:
runs of `input.rows_per_unit` consecutive rows of one source, named `<source key>-<index>`. A unit is
what the writer commits (or redoes) as a whole. The count pass (a Ray task per source) also notes
where each unit starts: the byte offset of its first line in an uncompressed line-based manifest
(JSON lines, CSV, TSV, scp), its first row in Parquet. The driver turns the units not yet committed
into *pieces*, each read by one Ray task (`read_units`): one decode block of a unit, so a single
10M-row manifest is read in parallel and a rerun of a finished job reads nothing. Compressed
manifests, JSON arrays, Kaldi directories and CutSets are read whole by one task each.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import io
import json
import math
import posixpath
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.json as pajson
import pyarrow.parquet as pq

from .config import InputConfig
from .schema import AUDIO_BYTES, INPUT_ERROR, OUTPUT_COLUMNS, SPAN_END, UNIT, UNIT_ROWS
from .storage import Storage, join, scheme

ID_ALIASES = ("id", "key", "utt_id")
PATH_ALIASES = ("path", "audio_filepath", "wav", "source", "audio")
MANIFEST_SUFFIXES = {
    ".jsonl": "jsonl",
    ".jsonl.gz": "jsonl",
    ".ndjson": "jsonl",
    ".json": "json",
    ".csv": "csv",
    ".tsv": "tsv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".scp": "scp",
}
AUDIO_SUFFIXES = frozenset(
    ".wav .flac .ogg .oga .opus .mp3 .m4a .mp4 .aac .webm .mkv .mka .wma .amr .flv .mov .avi "
    ".3gp .aif .aiff .au .caf .ac3 .mpga".split()
)
GLOB_CHARS = "*?["
MAX_BLOCK_BYTES = 64 << 20  # embedded audio bytes per block handed to the decode stage
LINE_FORMATS = ("jsonl", "csv", "tsv", "scp")
RANGE_SCHEMES = ("file", "s3", "gs", "az")  # stores that honour ranged reads (a plain HTTP server may not)


class ManifestError(ValueError):
    pass


@dataclass(frozen=True)
class Source:
    """One thing a read task reads: a manifest file, a Kaldi data dir, or a slice of an audio listing."""

    uri: str
    format: str  # jsonl json csv tsv parquet scp lhotse kaldi audio
    key: str  # stable short name: units are named `<key>-<index>`
    root: str  # relative audio paths resolve against this
    audio: pa.Table | None = None  # format "audio": the listed files (id, path)


@dataclass(frozen=True)
class Count:
    """What the count pass learns about one source."""

    rows: int
    schema: pa.Schema  # normalised
    row_bytes: float = 0.0  # bytes per row (audio inside a Parquet manifest makes rows big)
    raw_schema: pa.Schema | None = None  # as parsed from the whole file: every piece is parsed with it
    starts: tuple[int, ...] | None = None  # where each unit starts (byte or row); None: not splittable


@dataclass(frozen=True)
class Piece:
    """What one read task reads: whole units of one source (units first_unit.., rows first_row.. of
    the source, `rows` of them), from byte `start` to `end` of a line manifest (None: from the top, or
    by row for Parquet). A unit done whole by this run is cut into `parts` pieces of one decode block
    each: this task yields block `part`, so decoding spreads over tasks without a repartition."""

    source: int
    first_unit: int
    units: int
    first_row: int
    rows: int
    start: int | None = None
    end: int | None = None
    part: int = 0
    parts: int = 1

    def item(self) -> dict[str, int]:
        """As a row of the read stage's input (None as -1: Arrow columns stay int64)."""
        d = dataclasses.asdict(self)
        return {k: -1 if v is None else v for k, v in d.items()}

    @classmethod
    def from_item(cls, d: dict[str, int]) -> Piece:
        return cls(**{k: None if k in ("start", "end") and v == -1 else v for k, v in d.items()})


@dataclass
class Plan:
    """What the driver knows about the manifest: its sources and their row counts, never the rows."""

    where: str
    sources: list[Source]
    counts: list[int] = field(default_factory=list)  # rows per source, after input.limit
    passthrough: pa.Schema = field(default_factory=lambda: pa.schema([]))  # manifest columns carried through
    row_bytes: float = 0.0  # the largest bytes per row of a source (audio inside the manifest)
    details: list[Count] = field(default_factory=list)  # per source, from the count pass

    def pieces(
        self, size: int, skip: dict[str, int | set[str]] | None = None, block_rows: int = 0
    ) -> list[Piece]:
        """The read tasks' work, leaving out the units committed by an earlier run (`skip[unit]` is
        their row count, see read_units), so a finished job reads nothing again. A source that can
        be read by ranges gives a piece per unit, or, with `block_rows`, a piece per decode block
        of a unit done whole; any other source is one piece."""
        skip = skip or {}
        out = []
        for i, (source, n) in enumerate(zip(self.sources, self.counts, strict=True)):
            count = self.details[i] if i < len(self.details) else None
            starts = count.starts if count is not None else None
            units = math.ceil(n / size)
            todo = [u for u in range(units) if skip.get(f"{source.key}-{u:06d}") != min(size, n - u * size)]
            if not todo:
                continue
            if not starts or source.format == "audio":
                out.append(Piece(i, 0, units, 0, n))
                continue
            for u in todo:
                rows = min(size, n - u * size)
                start = None if source.format == "parquet" else starts[u]
                end = starts[u + 1] if start is not None and u + 1 < len(starts) else None
                parts = 1
                if block_rows and not isinstance(skip.get(f"{source.key}-{u:06d}"), set):
                    parts = math.ceil(rows / block_rows)
                out += [Piece(i, u, 1, u * size, rows, start, end, k, parts) for k in range(parts)]
        return out

    def needs_recut(self, pieces: list[Piece], block_rows: int) -> bool:
        """Whether a read task may yield more than one decode block (Ray merges what a task yields
        into one block: it must then be re-cut for decoding to run in parallel)."""
        return any(p.parts == 1 and p.rows > block_rows for p in pieces)

    def block_rows(self, most: int) -> int:
        """Rows per block handed to a decode task: at most `most`, and about MAX_BLOCK_BYTES."""
        return max(1, min(most, int(MAX_BLOCK_BYTES // max(self.row_bytes, 1.0))))

    @property
    def rows(self) -> int:
        return sum(self.counts)


# -- discovery (driver) --------------------------------------------------------------------------


def discover(cfg: InputConfig, storage: Storage) -> list[Source]:
    """`input.manifest` -> the sources to read, in a stable order. Raises ManifestError."""
    where = cfg.manifest.rstrip("/") if not cfg.manifest.endswith("://") else cfg.manifest
    try:
        if any(c in where for c in GLOB_CHARS):
            files, base = storage.glob(where), _glob_base(where)
            if not files:
                raise ManifestError(f"input.manifest: no files match {where}")
        elif storage.is_dir(where):
            if storage.exists(join(where, "wav.scp")) and cfg.format in ("auto", "kaldi"):
                return [Source(where, "kaldi", _key("kaldi"), cfg.audio_root or where)]
            files, base = storage.list_files(where), where
            if not files:
                raise ManifestError(f"input.manifest: {where} is an empty directory")
        elif not storage.exists(where):
            raise ManifestError(f"input.manifest: no such file: {where}")
        else:
            files, base = [where], _parent(where)
    except OSError as e:
        raise ManifestError(f"input.manifest: cannot read {where}: {e}") from None
    return _classify(files, base, cfg)


def _classify(files: list[str], base: str, cfg: InputConfig) -> list[Source]:
    audio = [f for f in files if _suffix(f) in AUDIO_SUFFIXES]
    manifests = [f for f in files if f not in set(audio)]
    if cfg.format == "audio" or (audio and not manifests and cfg.format == "auto"):
        return [_audio_source(audio or files, base, cfg)]
    if audio and manifests and len(files) > 1:
        raise ManifestError(
            f"input.manifest: {base} mixes manifests ({_name(manifests[0])}) and audio files "
            f"({_name(audio[0])}); point input.manifest at one kind (a glob such as {base}/*.jsonl)"
        )
    sources = []
    for f in manifests:
        fmt = cfg.format if cfg.format != "auto" else detect_format(f)
        sources.append(Source(f, fmt, _key(_relative(f, base)), cfg.audio_root or _parent(f)))
    formats = {s.format for s in sources}
    if len(formats) > 1:
        raise ManifestError(
            f"input.manifest: {base} holds manifests of several formats ({', '.join(sorted(formats))}); "
            f"all manifest files must share one format"
        )
    return sources


def _audio_source(files: list[str], base: str, cfg: InputConfig) -> Source:
    if len(files) == 1 and not _is_under(files[0], base):
        base = _parent(files[0])
    ids = [posixpath.splitext(_relative(f, base))[0] for f in files]
    table = pa.table({"id": pa.array(ids, pa.string()), "path": pa.array(files, pa.string())})
    return Source(base, "audio", "audio", cfg.audio_root or base, table)


def detect_format(uri: str) -> str:
    name = uri.rsplit("/", 1)[-1].lower()
    if name.endswith((".jsonl", ".jsonl.gz")) and "cuts" in name:
        return "lhotse"
    for suffix, fmt in MANIFEST_SUFFIXES.items():
        if name.endswith(suffix):
            return fmt
    raise ManifestError(
        f"{uri}: cannot tell the manifest format from the name; set input.format "
        f"(jsonl, json, csv, tsv, parquet, scp, lhotse, kaldi, audio)"
    )


# -- reading (Ray tasks) ---------------------------------------------------------------------------


def count_rows(source: Source, cfg: InputConfig, storage: Storage) -> Count:
    """Rows of one source, its normalised schema and where its units start, checking on the way
    what can be checked cheaply: that it parses, has an id and an audio column, and has no
    duplicate ids. Raises ManifestError naming the file."""
    size = cfg.rows_per_unit
    if source.format == "parquet":
        with storage.open_input(source.uri) as f:
            pf = pq.ParquetFile(f)
            cols = _columns(pf.schema_arrow, cfg, source.uri)
            ids = pf.read(columns=[cols.id]).column(0).cast(pa.string())
            head = next(pf.iter_batches(batch_size=1), None)
            meta = pf.metadata
            row_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
        _check_unique(ids, source.uri)
        if head is None:
            return Count(0, pa.schema([]))
        schema = normalise(pa.Table.from_batches([head]), cols, source.root).schema
        starts = tuple(range(0, len(ids), size))
        return Count(len(ids), schema, row_bytes / max(len(ids), 1), pf.schema_arrow, starts)
    if source.format in LINE_FORMATS + ("json",):
        data = _read_manifest(source, storage, unzip=False)
        compressed = _is_gzip(data)
        data = _gunzip(data, source.uri)
        raw = _parse(data, source)
        table = normalise(raw, _columns(raw.schema, cfg, source.uri), source.root)
        _check_unique(table["id"], source.uri)
        starts = None if compressed else _unit_starts(data, source, raw.num_rows, size)
        return Count(table.num_rows, table.schema, 0.0, raw.schema, starts)
    ids, schema = [], None
    for t in _tables(source, cfg, storage):
        ids.append(t["id"])
        schema = schema or t.schema
    column = pa.chunked_array(ids, pa.string()) if ids else pa.chunked_array([], pa.string())
    _check_unique(column, source.uri)
    return Count(len(column), schema or pa.schema([]))


def _unit_starts(data: bytes, source: Source, rows: int, size: int) -> tuple[int, ...] | None:
    """Byte offsets of the first line of every unit, when lines are rows one to one (no blank or
    comment lines, no quoted newlines) and the file can be read by ranges; else None (read whole)."""
    fmt = _line_format(data, source.format)
    if fmt not in LINE_FORMATS or scheme(source.uri) not in RANGE_SCHEMES:
        return None
    buf = np.frombuffer(data, np.uint8)
    line_starts = np.concatenate(([0], np.flatnonzero(buf == 10) + 1))
    line_starts = line_starts[line_starts < len(data)]
    if fmt in ("csv", "tsv"):
        line_starts = line_starts[1:]  # the header
    if len(line_starts) != rows or rows == 0:
        return None
    return tuple(int(x) for x in line_starts[::size])


def read_units(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    *,
    piece: Piece,
    skip: dict[str, int | set[str]],
    block_rows: int,
    raw_schema: pa.Schema | None = None,
) -> Iterator[pa.Table]:
    """Stream one piece of a source as normalised blocks tagged with their unit.

    `skip` says what a resumed run leaves out: unit -> its committed row count (the unit is done and is
    skipped when the manifest still gives it that many rows), or unit -> a set of ids (only those
    rows are redone: the unit's error rows). Each block holds rows of one unit; `UNIT_ROWS` is the
    number of that unit's rows this run processes, so the writer knows when the unit is complete."""
    if piece.parts > 1:  # one block of a unit done whole
        lo = piece.part * block_rows
        rows = min(block_rows, piece.rows - lo)
        tables = _tables(source, cfg, storage, piece, raw_schema, skip_rows=lo)
        block = pa.concat_tables(list(_unit_tables(tables, rows, rows)), promote_options="permissive")
        yield _tag(block, f"{source.key}-{piece.first_unit:06d}", piece.rows)
        return
    size = cfg.rows_per_unit
    tables = _tables(source, cfg, storage, piece, raw_schema)
    for k, unit_table in enumerate(_unit_tables(tables, size, piece.rows)):
        unit = f"{source.key}-{piece.first_unit + k:06d}"
        todo = _resume_filter(unit_table, skip.get(unit))
        if todo.num_rows:
            yield from _blocks(_tag(todo, unit, todo.num_rows), block_rows)


def _tag(table: pa.Table, unit: str, unit_rows: int) -> pa.Table:
    table = table.append_column(UNIT, pa.array([unit] * table.num_rows, pa.string()))
    return table.append_column(UNIT_ROWS, pa.array([unit_rows] * table.num_rows, pa.int64()))


def read_pieces(batch: pa.Table, *, plan: Plan, **kwargs) -> Iterator[pa.Table]:
    """A read task: the pieces in `batch` (rows of Piece.item())."""
    for d in batch.to_pylist():
        p = Piece.from_item(d)
        raw_schema = plan.details[p.source].raw_schema if plan.details else None
        yield from read_units(plan.sources[p.source], piece=p, raw_schema=raw_schema, **kwargs)


def whole(rows: int, size: int) -> Piece:
    """The piece that is a whole source of `rows` rows."""
    return Piece(0, 0, math.ceil(rows / size), 0, rows)


def _resume_filter(table: pa.Table, skip: int | set[str] | None) -> pa.Table:
    if skip is None:
        return table
    if isinstance(skip, int):
        return table.slice(0, 0) if skip == table.num_rows else table
    return table.filter(pc.is_in(table["id"], value_set=pa.array(sorted(skip), pa.string())))


def _unit_tables(tables: Iterable[pa.Table], size: int, limit: int | None) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into tables of exactly `size` rows (the last may be shorter)."""
    pending: list[pa.Table] = []
    have = 0
    left = limit if limit is not None else -1
    for t in tables:
        if left == 0:
            break
        if left > 0:
            t = t.slice(0, left)
            left -= t.num_rows
        pending.append(t)
        have += t.num_rows
        while have >= size:
            whole = pa.concat_tables(pending, promote_options="permissive")
            yield whole.slice(0, size)
            rest = whole.slice(size)
            pending, have = [rest], rest.num_rows
    if have:
        yield pa.concat_tables(pending, promote_options="permissive")


def _blocks(table: pa.Table, block_rows: int) -> Iterator[pa.Table]:
    """Split a unit into blocks of at most `block_rows` rows and about MAX_BLOCK_BYTES."""
    per_row = table.nbytes / max(table.num_rows, 1)
    step = max(1, min(block_rows, int(MAX_BLOCK_BYTES // max(per_row, 1))))
    for start in range(0, table.num_rows, step):
        yield table.slice(start, step)


def _tables(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    """Normalised tables of one source (or of one piece of it, from its `skip_rows`-th row on), in
    file order."""
    if source.format == "audio":
        assert source.audio is not None
        yield source.audio
        return
    if source.format == "kaldi":
        yield _kaldi(source, storage)
        return
    if source.format == "lhotse":
        yield from _lhotse(source, storage)
        return
    columns: Columns | None = None
    for raw in _raw_tables(source, storage, piece, raw_schema, skip_rows):
        columns = columns or _columns(raw.schema, cfg, source.uri)
        yield normalise(raw, columns, source.root)


def _raw_tables(
    source: Source,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    first_row = 0 if piece is None else piece.first_row
    if source.format == "parquet":
        yield from _parquet_tables(source, storage, first_row + skip_rows)
        return
    if piece is None or piece.start is None:
        table = _parse(_read_manifest(source, storage), source)
    else:
        data = _read_manifest(source, storage, piece.start, piece.end)
        if source.format in ("csv", "tsv"):
            data = _header(source, storage) + data
        table = _parse(data, source, raw_schema)
    yield table.slice(skip_rows)


def _parquet_tables(source: Source, storage: Storage, first_row: int) -> Iterator[pa.Table]:
    """Record batches of a Parquet manifest from `first_row` on: the row groups before it are not
    read (the caller stops once it has the rows it wants)."""
    try:
        with storage.open_input(source.uri) as f:
            pf = pq.ParquetFile(f)
            groups, skip = [], first_row
            for g in range(pf.metadata.num_row_groups):
                n = pf.metadata.row_group(g).num_rows
                if not groups and skip >= n:
                    skip -= n
                else:
                    groups.append(g)
            for batch in pf.iter_batches(batch_size=4096, row_groups=groups):
                t = pa.Table.from_batches([batch])
                t, skip = t.slice(min(skip, t.num_rows)), max(skip - t.num_rows, 0)
                if t.num_rows:
                    yield t
    except FileNotFoundError:
        raise ManifestError(f"input.manifest: no such file: {source.uri}") from None
    except pa.ArrowInvalid as e:
        raise ManifestError(f"{source.uri}: cannot parse as parquet: {e}") from None
    except OSError as e:
        raise ManifestError(f"{source.uri}: cannot read: {e}") from None


def _read_manifest(
    source: Source, storage: Storage, start: int | None = None, end: int | None = None, unzip: bool = True
) -> bytes:
    """The file's bytes (a range of them: never compressed, see _unit_starts), decompressed."""
    try:
        data = storage.read_bytes(source.uri, start, end)
    except FileNotFoundError:
        raise ManifestError(f"input.manifest: no such file: {source.uri}") from None
    except OSError as e:
        raise ManifestError(f"{source.uri}: cannot read: {e}") from None
    return _gunzip(data, source.uri) if unzip and start is None else data


def _header(source: Source, storage: Storage) -> bytes:
    """A CSV/TSV manifest's header line, newline included."""
    head = _read_manifest(source, storage, 0, 1 << 16)
    cut = head.find(b"\n")
    if cut < 0:
        raise ManifestError(f"{source.uri}: the header line is longer than 64 KiB")
    return head[: cut + 1]


def _line_format(data: bytes, fmt: str) -> str:
    # NeMo names its JSON-lines manifests *.json
    return "jsonl" if fmt == "json" and not data[:65536].lstrip().startswith(b"[") else fmt


def _parse(data: bytes, source: Source, raw_schema: pa.Schema | None = None) -> pa.Table:
    """Manifest bytes (decompressed) -> a table. `raw_schema` (the whole file's, from the count pass) keeps the
    column types of a piece what they are in the whole file."""
    uri, fmt = source.uri, _line_format(data, source.format)
    try:
        if fmt == "jsonl":
            parse = pajson.ParseOptions(explicit_schema=raw_schema) if raw_schema is not None else None
            return pajson.read_json(
                io.BytesIO(data), read_options=pajson.ReadOptions(block_size=1 << 24), parse_options=parse
            )
        if fmt == "json":
            rows = json.loads(data)
            if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
                raise ManifestError(f"{uri}: a JSON manifest must be an array of objects")
            return pa.Table.from_pylist(rows)
        if fmt in ("csv", "tsv"):
            opts = pacsv.ParseOptions(delimiter="\t" if fmt == "tsv" else ",")
            types = {f.name: f.type for f in raw_schema} if raw_schema is not None else None
            return pacsv.read_csv(
                io.BytesIO(data), parse_options=opts, convert_options=pacsv.ConvertOptions(column_types=types)
            )
        if fmt == "scp":
            ids, paths = _two_columns(data, uri, "<id> <path>")
            return pa.table({"id": ids, "path": paths})
        raise ManifestError(f"{uri}: unknown format {fmt!r}")
    except (pa.ArrowInvalid, ValueError, UnicodeDecodeError, EOFError, gzip.BadGzipFile) as e:
        if isinstance(e, ManifestError):
            raise
        raise ManifestError(f"{uri}: cannot parse as {fmt}: {e}") from None


# -- columns -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Columns:
    """Which source columns hold what, resolved once per source from its schema."""

    id: str
    audio: str  # a path column, or a column of audio bytes (see `embedded`)
    embedded: bool  # audio bytes in the manifest: binary, or struct<bytes: binary, path: string>
    start: str | None = None  # span start (NeMo offset, or start), seconds
    duration: str | None = None  # span length (NeMo duration, with offset), seconds
    end: str | None = None  # span end (with start), seconds
    recording: str | None = None  # a recording id given by the manifest


def _columns(schema: pa.Schema, cfg: InputConfig, uri: str) -> Columns:
    names = schema.names
    id_col = _pick(names, cfg.id_column, ID_ALIASES, "id", uri)
    audio = _pick(names, cfg.path_column, PATH_ALIASES, "path", uri)
    t = schema.field(audio).type
    embedded = pa.types.is_binary(t) or pa.types.is_large_binary(t) or _is_audio_struct(t)
    if "offset" in names:
        return Columns(id_col, audio, embedded, start="offset", duration=_opt(names, "duration"))
    if "start" in names and "end" in names:
        return Columns(id_col, audio, embedded, start="start", end="end")
    return Columns(id_col, audio, embedded)


def _is_audio_struct(t: pa.DataType) -> bool:
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def _opt(names: list[str], name: str) -> str | None:
    return name if name in names else None


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
        f"{uri}: no {what} column: expected one of {', '.join(aliases)} or set input.{what}_column "
        f"(columns: {columns})"
    )


def normalise(raw: pa.Table, cols: Columns, root: str) -> pa.Table:
    """Source columns -> id, path, recording_id, offset_s, [private audio/span/error], passthrough."""
    n = raw.num_rows
    ids = raw[cols.id].cast(pa.string())
    if ids.null_count:
        first = pc.index(pc.is_null(ids), True).as_py()
        raise ManifestError(f"{n} rows have no {cols.id!r} (the first is row {first + 1})")
    out: dict[str, pa.ChunkedArray | pa.Array] = {"id": ids}
    consumed = {cols.id, cols.audio}
    errors = raw[INPUT_ERROR] if INPUT_ERROR in raw.column_names else pa.nulls(n, pa.string())
    if cols.embedded:
        data, paths = _embedded_audio(raw[cols.audio])
        out["path"] = paths
        out[AUDIO_BYTES] = data
        # the path beside embedded bytes is often just the name the file had where it was packed
        missing = pa.scalar(
            f"the manifest's audio column {cols.audio!r} holds no bytes for this row", pa.string()
        )
        errors = pc.if_else(pc.is_null(data), pc.coalesce(errors, missing), errors)
    else:
        out["path"] = pa.array([_resolve(p, root) for p in raw[cols.audio].to_pylist()], pa.string())
    recording = raw[cols.recording] if cols.recording else pa.nulls(n, pa.string())
    out["recording_id"] = recording.cast(pa.string())
    start, end = _span(raw, cols)
    out["offset_s"] = start
    out[SPAN_END] = end
    consumed |= {c for c in (cols.start, cols.duration, cols.end, cols.recording) if c}
    out[INPUT_ERROR] = errors
    consumed.add(INPUT_ERROR)
    for name in raw.column_names:
        if name not in consumed:
            out[f"manifest_{name}" if name in OUTPUT_COLUMNS else name] = raw[name]
    return pa.table(out)


def _span(raw: pa.Table, cols: Columns) -> tuple[pa.Array, pa.Array]:
    n = raw.num_rows
    if cols.start is None:
        return pa.nulls(n, pa.float64()), pa.nulls(n, pa.float64())
    start = raw[cols.start].cast(pa.float64())
    if cols.end is not None:
        end = raw[cols.end].cast(pa.float64())
        # Kaldi's convention: an end of -1 means "to the end of the file"
        end = pc.if_else(pc.less(end, 0), pa.scalar(None, pa.float64()), end)
    elif cols.duration is not None:
        end = pc.add(start, raw[cols.duration].cast(pa.float64()))
    else:
        end = pa.nulls(n, pa.float64())
    return start, end


def _embedded_audio(column: pa.ChunkedArray) -> tuple[pa.Array, pa.Array]:
    """A binary column, or the HF `Audio` struct<bytes, path> -> (bytes, path shown in the output)."""
    col = column.combine_chunks()
    if pa.types.is_struct(col.type):
        data = col.field("bytes")
        paths = (
            col.field("path") if col.type.get_field_index("path") >= 0 else pa.nulls(len(col), pa.string())
        )
        valid = col.is_valid()
        data = pc.if_else(valid, data, pa.scalar(None, data.type))
        paths = pc.if_else(valid, paths.cast(pa.string()), pa.scalar(None, pa.string()))
        return data.cast(pa.large_binary()), paths
    return col.cast(pa.large_binary()), pa.nulls(len(col), pa.string())


def _resolve(path: str | None, root: str) -> str | None:
    if path is None or not str(path).strip():
        return None
    return join(root, str(path).strip())


def _check_unique(ids: pa.ChunkedArray, uri: str) -> None:
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        ex, n = dup[0]["values"].as_py(), dup[0]["counts"].as_py()
        raise ManifestError(
            f"{uri}: duplicate ids: {len(dup)} ids occur more than once, e.g. {ex!r} ({n} times); "
            f"ids must be unique"
        )


# -- Kaldi data directories ----------------------------------------------------------------------


def _kaldi(source: Source, storage: Storage) -> pa.Table:
    """wav.scp [+ segments] [+ utt2spk, text, utt2*] -> one row per utterance (segment or recording)."""
    d = source.uri

    def read(name: str) -> bytes | None:
        uri = join(d, name)
        return storage.read_bytes(uri) if storage.exists(uri) else None

    rec_ids, rec_paths = _two_columns(read("wav.scp") or b"", join(d, "wav.scp"), "<recording-id> <path>")
    where = dict(zip(rec_ids.to_pylist(), rec_paths.to_pylist(), strict=True))
    segments = read("segments")
    if segments is None:
        ids, recs = rec_ids, pa.nulls(len(rec_ids), pa.string())
        start = end = pa.nulls(len(rec_ids), pa.float64())
    else:
        ids, recs, start, end = _kaldi_segments(segments, join(d, "segments"))
    paths, errors = [], []
    for utt, rec in zip(ids.to_pylist(), (recs if segments is not None else ids).to_pylist(), strict=True):
        path = where.get(rec)
        error = None
        if path is None:
            error = f"segments: recording {rec!r} of {utt!r} is not in wav.scp"
        elif path.rstrip().endswith("|"):
            error = f"wav.scp: {rec!r} is a pipe command ({path.strip()!r}); give a file path instead"
            path = None
        paths.append(_resolve(path, source.root) if path else None)
        errors.append(error)
    table = pa.table(
        {
            "id": ids,
            "path": pa.array(paths, pa.string()),
            "recording_id": recs,
            "offset": start,
            "end": end,
            INPUT_ERROR: pa.array(errors, pa.string()),
        }
    )
    for name in _kaldi_extras(storage, d):
        table = _join_per_utterance(table, read(name) or b"", join(d, name), _kaldi_column(name))
    cols = Columns("id", "path", False, start="offset", end="end", recording="recording_id")
    return normalise(table, cols, "")


def _kaldi_segments(data: bytes, uri: str) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    utts, recs, starts, ends = [], [], [], []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise ManifestError(f"{uri}: line {n}: expected '<utt> <recording> <start> <end>', got {line!r}")
        try:
            s, e = float(parts[2]), float(parts[3])
        except ValueError:
            raise ManifestError(f"{uri}: line {n}: start and end must be seconds, got {line!r}") from None
        utts.append(parts[0])
        recs.append(parts[1])
        starts.append(s)
        ends.append(e)
    return (
        pa.array(utts, pa.string()),
        pa.array(recs, pa.string()),
        pa.array(starts, pa.float64()),
        pa.array(ends, pa.float64()),
    )


def _kaldi_extras(storage: Storage, d: str) -> list[str]:
    names = [f.rsplit("/", 1)[-1] for f in storage.list_files(d)]
    return sorted(n for n in names if n == "text" or (n.startswith("utt2") and "." not in n))


def _kaldi_column(name: str) -> str:
    return {"utt2spk": "speaker", "text": "text"}.get(
        name, name[len("utt2") :] if name.startswith("utt2") else name
    )


def _join_per_utterance(table: pa.Table, data: bytes, uri: str, column: str) -> pa.Table:
    keys, values = _two_columns(data, uri, "<utt> <value>")
    lookup = dict(zip(keys.to_pylist(), values.to_pylist(), strict=True))
    return table.append_column(
        column, pa.array([lookup.get(i) for i in table["id"].to_pylist()], pa.string())
    )


def _two_columns(data: bytes, uri: str, form: str) -> tuple[pa.Array, pa.Array]:
    """Kaldi-style `<key> <rest of line>` lines (blank lines and # comments skipped)."""
    keys, values = [], []
    for n, line in enumerate(data.decode("utf-8").splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().split(maxsplit=1)
        if len(parts) != 2:
            raise ManifestError(f"{uri}: line {n}: expected '{form}', got {line.strip()!r}")
        keys.append(parts[0])
        values.append(parts[1])
    return pa.array(keys, pa.string()), pa.array(values, pa.string())


# -- Lhotse CutSets --------------------------------------------------------------------------------

LHOTSE_BATCH = 4096


def _lhotse(source: Source, storage: Storage) -> Iterator[pa.Table]:
    """cuts.jsonl[.gz] -> one row per supervision (a cut without supervisions is one row)."""
    data = _read_manifest(source, storage)
    rows: list[dict] = []
    for n, line in enumerate(io.BytesIO(data), 1):
        if not line.strip():
            continue
        try:
            cut = json.loads(line)
        except ValueError as e:
            raise ManifestError(f"{source.uri}: line {n}: not JSON: {e}") from None
        rows.extend(_cut_rows(cut, source, n))
        if len(rows) >= LHOTSE_BATCH:
            yield _lhotse_table(rows, source)
            rows = []
    if rows:
        yield _lhotse_table(rows, source)


def _cut_rows(cut: dict, source: Source, line: int) -> list[dict]:
    if "id" not in cut:
        raise ManifestError(f"{source.uri}: line {line}: a cut without an 'id'")
    rec = cut.get("recording") or {}
    path, error = _recording_path(rec)
    if cut.get("type") == "MixedCut" or "tracks" in cut:
        path, error = None, f"Lhotse cut {cut['id']!r} is a MixedCut; only single-recording cuts are read"
    base = {"path": path, "recording_id": rec.get("id"), INPUT_ERROR: error}
    start = float(cut.get("start", 0.0))
    sups = cut.get("supervisions") or []
    if not sups:
        dur = cut.get("duration")
        return [
            {**base, "id": cut["id"], "offset": start, "end": None if dur is None else start + float(dur)}
        ]
    out = []
    for s in sups:
        if "id" not in s:
            raise ManifestError(f"{source.uri}: line {line}: a supervision of cut {cut['id']!r} has no 'id'")
        begin = start + float(s.get("start", 0.0))  # supervision times are relative to the cut
        custom = s.get("custom")
        out.append(
            {
                **base,
                "id": s["id"],
                "offset": begin,
                "end": begin + float(s["duration"]) if s.get("duration") is not None else None,
                "speaker": s.get("speaker"),
                "language": s.get("language"),
                "text": s.get("text"),
                "custom": None if custom is None else json.dumps(custom, sort_keys=True),
            }
        )
    return out


def _recording_path(rec: dict) -> tuple[str | None, str | None]:
    sources = rec.get("sources") or []
    if not sources:
        return None, f"Lhotse recording {rec.get('id')!r} has no sources"
    src = sources[0]
    if src.get("type") in ("file", "url"):
        return src.get("source"), None
    return (
        None,
        f"Lhotse recording {rec.get('id')!r}: source type {src.get('type')!r} is not supported (file, url)",
    )


def _lhotse_table(rows: list[dict], source: Source) -> pa.Table:
    names = [
        "id",
        "path",
        "recording_id",
        "offset",
        "end",
        INPUT_ERROR,
        "speaker",
        "language",
        "text",
        "custom",
    ]
    types = [pa.string()] * 3 + [pa.float64()] * 2 + [pa.string()] * 5
    table = pa.table({n: pa.array([r.get(n) for r in rows], t) for n, t in zip(names, types, strict=True)})
    cols = Columns("id", "path", False, start="offset", end="end", recording="recording_id")
    return normalise(table, cols, source.root)


def _gunzip(data: bytes, uri: str) -> bytes:
    """Decompress gzip data, whatever the file is called (tools differ on naming)."""
    try:
        return gzip.decompress(data) if _is_gzip(data) else data
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        raise ManifestError(f"{uri}: cannot decompress: {e}") from None


def _is_gzip(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


# -- names -------------------------------------------------------------------------------------------


def _key(relative: str) -> str:
    return hashlib.sha1(relative.encode("utf-8")).hexdigest()[:10]


def _suffix(uri: str) -> str:
    name = uri.rsplit("/", 1)[-1].lower()
    return name[name.rfind(".") :] if "." in name else ""


def _name(uri: str) -> str:
    return uri.rsplit("/", 1)[-1]


def _parent(uri: str) -> str:
    if "://" in uri:
        return uri.rsplit("/", 1)[0]
    import os

    return os.path.dirname(os.path.abspath(os.path.expanduser(uri)))


def _glob_base(pattern: str) -> str:
    """The directory part of a glob before its first wildcard."""
    head = pattern[: min(pattern.find(c) for c in GLOB_CHARS if c in pattern)]
    return head.rsplit("/", 1)[0] if "/" in head else "."


def _relative(uri: str, base: str) -> str:
    b = base.rstrip("/") + "/"
    if "://" not in uri and "://" not in base:
        import os

        return os.path.relpath(os.path.abspath(uri), os.path.abspath(base))
    return uri[len(b) :] if uri.startswith(b) else uri.rsplit("/", 1)[-1]


def _is_under(uri: str, base: str) -> bool:
    return _relative(uri, base) != uri.rsplit("/", 1)[-1] or _parent(uri) == base
