"""Normalising a manifest's columns: which holds the id, the audio (a path or the bytes), the span;
everything else passes through.

The audio comes from `input.path_column`; else from a column holding the audio itself (`binary`, or
the Hugging Face `Audio` struct<bytes, path>) when there is one, else from the first of `path`,
`audio_filepath`, `wav`, `source`, `audio`. Embedded bytes win over a path column beside them (Common
Voice ships a `path` naming a file that exists nowhere); a row without bytes is fetched from the
struct's path, else from that path column. With `input.path_template` the path is built from the
row's columns instead (`dia{Dialogue_ID}_utt{Utterance_ID}.mp4`; a row with an empty one is an error
row). A row may name a span of its file: NeMo `offset` + `duration`, or `start` + `end` (seconds), or
either start with the other's end or length (`offset` + `end`, `start` + `duration`); a null start
beside a length is 0 (NeMo's reading of a null offset).
Relative paths resolve against the source's root. The speaker comes from `input.speaker_column` or the
first of `speaker`, `Speaker` (null when there is none). A passthrough column whose name collides with
an output column (or `waveform`, the stages' decoded audio), or whose name starts with `_` like the
stages' private columns (MongoDB's `_id`), is renamed `manifest_<name>`.

The id comes from `input.id_column` or the first of `id`, `key`, `utt_id`. A manifest with none gets a
default id, stable across reruns: the audio's name as the manifest gives it (the struct's `path`, else
the path as written or built by the template), or, for a row with neither, `<manifest file name>:<row
number>` (from 1; the path under the manifest's folder for shards whose file names repeat); a row with a span (NeMo offsets, start/end columns) adds it: `a.wav@1.250-3.500`.
A name that is a URL with secrets (a presigned URL's signature, `user:password@`) is redacted and
gets a hash of the whole URL: `https://h/a.wav?X-Amz-Signature=abc` is named
`https://h/a.wav?X-Amz-Signature=***#69ecf1c58c42`.
"""

from __future__ import annotations

import string
from dataclasses import dataclass, replace
from urllib.parse import urlsplit

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc

from ..config import InputConfig
from ..redact import redact_names
from ..schema import AUDIO_BYTES, INPUT_ERROR, OUTPUT_COLUMNS, SPAN_END, WAVEFORM
from ..storage import join
from .errors import ManifestError

ID_ALIASES = ("id", "key", "utt_id")
PATH_ALIASES = ("path", "audio_filepath", "wav", "source", "audio")
SPEAKER_ALIASES = ("speaker", "Speaker")


@dataclass(frozen=True)
class Columns:
    """Which source columns hold what, resolved once per source from its schema."""

    id: str | None  # None: the default id (see the module docstring)
    audio: str  # a path column, or a column of audio bytes (see `embedded`)
    embedded: bool  # audio bytes in the manifest: binary, or struct<bytes: binary, path: string>
    fallback: str | None = None  # with embedded audio: a path column for rows without bytes
    start: str | None = None  # span start (NeMo offset, or start), seconds
    duration: str | None = None  # span length (NeMo duration, with offset), seconds
    end: str | None = None  # span end (with start), seconds
    recording: str | None = None  # a recording id given by the manifest
    speaker: str | None = None  # who speaks (absent from a table: null)
    overlap: str | None = None  # seconds of the span that overlap another speaker (diariser turns)
    template: str | None = None  # the audio path as a format string of columns, instead of `audio`
    # resolved from a manifest's own columns (`resolve`): a `_` column is the manifest's, not one of the
    # private columns a fixed-layout format adds (`_input_error`, `_channel`)
    free_form: bool = False


def resolve(schema: pa.Schema, cfg: InputConfig, uri: str) -> Columns:
    """A manifest's schema and the column settings -> its Columns. Raises ManifestError naming `uri`."""
    names = schema.names
    id_col = (
        _pick(names, cfg.id_column, ID_ALIASES, "id", uri) if cfg.id_column else _first(names, ID_ALIASES)
    )
    speaker = _pick(names, cfg.speaker_column, SPEAKER_ALIASES, "speaker", uri, required=False)
    template = cfg.path_template
    if template:
        missing = [f for f in template_fields(template) if f not in names]
        if missing:
            raise ManifestError(
                f"{uri}: input.path_template {template!r} names {missing[0]!r}, not a column (columns: {names})"
            )
        cols = Columns(id_col, "", False, speaker=speaker, template=template, free_form=True)
    else:
        inside = [n for n in (*PATH_ALIASES, *names) if n in names and _is_embedded(schema.field(n).type)]
        if cfg.path_column or not inside:
            audio = _pick(names, cfg.path_column, PATH_ALIASES, "path", uri) or ""
        else:
            audio = inside[0]
        embedded = _is_embedded(schema.field(audio).type)
        paths = [
            n for n in PATH_ALIASES if n in names and n != audio and pa.types.is_string(schema.field(n).type)
        ]
        fallback = paths[0] if embedded and paths else None
        cols = Columns(id_col, audio, embedded, fallback, speaker=speaker, free_form=True)
    # a span's start with its length or its end, under either name: NeMo's `offset` with an `end`
    # (no `duration`) is [offset, end), never the rest of the file; `duration` wins beside `offset`
    # (NeMo), `end` beside `start`
    if "offset" in names:
        if "duration" in names or "end" not in names:
            return replace(cols, start="offset", duration=_opt(names, "duration"))
        return replace(cols, start="offset", end="end")
    if "start" in names and "end" in names:
        return replace(cols, start="start", end="end")
    if "start" in names and "duration" in names:
        return replace(cols, start="start", duration="duration")
    return cols


def text_columns(schema: pa.Schema, cfg: InputConfig, uri: str) -> list[str]:
    """The columns of a CSV/TSV manifest that must be read as written, not as the numbers Arrow took
    them for: its id, speaker and path name things, and `007` read as a number is `7` (`01` and `1`
    then collide)."""
    cols = resolve(schema, cfg, uri)
    used = dict.fromkeys(c for c in (cols.id, cols.speaker, cols.audio) if c)
    return [c for c in used if not pa.types.is_string(schema.field(c).type)]


def template_fields(template: str) -> list[str]:
    """The column names a path template uses: `dia{Dialogue_ID}_utt{Utterance_ID}.mp4` -> both ids."""
    try:
        return [f for _, f, _, _ in string.Formatter().parse(template) if f is not None]
    except ValueError as e:
        raise ManifestError(f"input.path_template {template!r}: {e}") from None


def _is_embedded(t: pa.DataType) -> bool:
    return pa.types.is_binary(t) or pa.types.is_large_binary(t) or is_audio_struct(t)


def _first(names: list[str], aliases: tuple[str, ...]) -> str | None:
    return next((a for a in aliases if a in names), None)


def is_audio_struct(t: pa.DataType) -> bool:
    """The Hugging Face `Audio` feature as stored in Parquet: struct<bytes: binary, path: string>."""
    return pa.types.is_struct(t) and t.get_field_index("bytes") >= 0


def _opt(names: list[str], name: str) -> str | None:
    return name if name in names else None


def _pick(
    columns: list[str],
    explicit: str | None,
    aliases: tuple[str, ...],
    what: str,
    uri: str,
    required: bool = True,
) -> str | None:
    if explicit:
        if explicit not in columns:
            raise ManifestError(
                f"{uri}: input.{what}_column={explicit!r} is not a column (columns: {columns})"
            )
        return explicit
    for a in aliases:
        if a in columns:
            return a
    if not required:
        return None
    raise ManifestError(
        f"{uri}: no {what} column: expected one of {', '.join(aliases)} or set input.{what}_column "
        f"(columns: {columns})"
    )


def normalise(
    raw: pa.Table, cols: Columns, root: str, origin: str = "", first_row: int = 0, name: str = ""
) -> pa.Table:
    """Source columns -> id, path, recording_id, offset_s, [private audio/span/error], passthrough.
    `origin` (the manifest file, named in messages) and `first_row` (the row number of `raw`'s first
    row in it, from 0) name rows in default ids, as `<name or origin's file name>:<row>`."""
    n = raw.num_rows
    out: dict[str, pa.ChunkedArray | pa.Array] = {}
    consumed = {cols.id, cols.audio} - {None, ""}  # a fallback path column also passes through
    ours = INPUT_ERROR in raw.column_names and not cols.free_form
    errors = raw[INPUT_ERROR] if ours else pa.nulls(n, pa.string())
    if cols.template:
        built, problems = templated(raw, cols.template)
        written = pa.array(built, pa.string())
        out["path"] = pa.array([resolve_path(p, root) for p in built], pa.string())
        errors = pc.coalesce(errors, pa.array(problems, pa.string()))
    elif cols.embedded:
        data, named = _embedded_audio(raw[cols.audio])
        written = named if cols.fallback is None else pc.coalesce(named, raw[cols.fallback].cast(pa.string()))
        # with bytes, the path shown is the struct's (often just the name the file had where it was
        # packed); without, the row is fetched from the path the manifest gives
        fetch = pa.array([resolve_path(p, root) for p in written.to_pylist()], pa.string())
        out["path"] = pc.if_else(pc.is_null(data), fetch, named)
        out[AUDIO_BYTES] = data
    else:
        written = cast(raw[cols.audio], cols.audio, pa.string(), origin)
        out["path"] = pa.array([resolve_path(p, root) for p in written.to_pylist()], pa.string())
    out = {"id": _ids(raw, cols, written, origin, first_row, name), **out}
    out["recording_id"] = _column(raw, cols.recording, pa.string(), origin)
    out["speaker"] = _column(raw, cols.speaker, pa.string(), origin)
    start, end = span(raw, cols, origin)
    out["offset_s"] = start
    out[SPAN_END] = end
    out["overlap_s"] = _column(raw, cols.overlap, pa.float64(), origin)
    consumed |= {
        c for c in (cols.start, cols.duration, cols.end, cols.recording, cols.speaker, cols.overlap) if c
    }
    out[INPUT_ERROR] = errors
    if ours:
        consumed.add(INPUT_ERROR)
    for name in raw.column_names:
        if name not in consumed:
            # the stages' decoded audio travels as `waveform` too: a manifest column of that name clashes;
            # `_` names are the stages' private columns (never written): a manifest's own would be dropped
            private = cols.free_form and name.startswith("_")
            clash = name in OUTPUT_COLUMNS or name == WAVEFORM or private
            out[f"manifest_{name}" if clash else name] = raw[name]
    return pa.table(out)


def _column(
    raw: pa.Table, name: str | None, kind: pa.DataType, origin: str = ""
) -> pa.ChunkedArray | pa.Array:
    """`raw[name]` as `kind`, or nulls when there is no such column."""
    if name is None or name not in raw.column_names:
        return pa.nulls(raw.num_rows, kind)
    return cast(raw[name], name, kind, origin)


def cast(column: pa.ChunkedArray | pa.Array, name: str, kind: pa.DataType, origin: str = "") -> pa.Array:
    """A column the pipeline reads (an id, a path, a speaker, a span's times) as `kind`; values that are
    not (clock times for seconds, objects for text) are a bad manifest naming the file and column,
    not an Arrow error that fails the run."""
    try:
        return column.cast(kind)
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError, pa.ArrowTypeError) as e:
        want = "seconds (numbers)" if pa.types.is_floating(kind) else "text"
        where = f"{origin}: " if origin else ""
        raise ManifestError(f"{where}column {name!r} must hold {want}: {e}") from None


def templated(raw: pa.Table, template: str) -> tuple[list[str | None], list[str | None]]:
    """(the path of each row from `template`, or None with the reason in the second list)."""
    fields = list(dict.fromkeys(template_fields(template)))
    values = {f: raw[f].to_pylist() for f in fields}
    paths: list[str | None] = []
    problems: list[str | None] = []
    for i in range(raw.num_rows):
        row = {f: values[f][i] for f in fields}
        empty = [f for f, v in row.items() if v is None or (isinstance(v, str) and not v.strip())]
        if empty:
            paths.append(None)
            problems.append(f"input.path_template {template!r}: column {empty[0]!r} is empty in this row")
        else:
            paths.append(template.format_map(row))
            problems.append(None)
    return paths, problems


def _ids(
    raw: pa.Table, cols: Columns, written: pa.Array, origin: str, first_row: int, name: str = ""
) -> pa.Array:
    if cols.id is None:
        ids = default_ids([written], raw.num_rows, origin, first_row, name)
        return with_span(ids, *span(raw, cols, origin)) if cols.start else ids
    return given_ids(raw[cols.id], cols.id, origin, first_row)


def given_ids(column: pa.ChunkedArray | pa.Array, name: str, origin: str, first_row: int = 0) -> pa.Array:
    """The id column as strings; a row without one is refused, naming the file and the row."""
    ids = cast(column, name, pa.string(), origin)
    if ids.null_count:
        first = pc.index(pc.is_null(ids), True).as_py() + first_row + 1
        where = f"{origin}: " if origin else ""
        raise ManifestError(f"{where}{ids.null_count} rows have no {name!r} (the first is row {first})")
    return ids


def default_ids(names: list[pa.Array], n: int, origin: str, first_row: int, name: str = "") -> pa.Array:
    """The default id of `n` rows (see the module docstring): the first non-empty of `names` (the
    audio's names, in order of preference), else `<manifest file name>:<row number>` (`name`, where
    given: the file's path under the manifest's folder when file names repeat, `sources.row_names`).
    A name that is a URL with secrets in it is redacted, with a hash of the whole URL
    (`redact.redacted_name`): ids are written to the output, its commit markers and messages."""
    file = name or file_name(origin)
    rows = pa.array([f"{file}:{first_row + i + 1}" for i in range(n)], pa.string())
    empty = pa.scalar(None, pa.string())
    given = [pc.if_else(pc.equal(pc.utf8_trim_whitespace(a), ""), empty, a) for a in names]
    return redact_names(pc.coalesce(*given, rows))


def file_name(uri: str) -> str:
    """A file's name: the last segment of its path (an http(s) URL's query, a presigned URL's
    signature, is not part of it)."""
    if uri.lower().startswith(("http://", "https://")):
        uri = urlsplit(uri).path
    return uri.rsplit("/", 1)[-1]


def with_span(ids: pa.Array, start: pa.Array, end: pa.Array) -> pa.Array:
    """Default ids of span rows (NeMo offsets, start/end columns): several spans of one file are
    several rows, so the span joins the name: `a.wav@1.250-3.500` (`a.wav@1.250-` to the end)."""
    out = []
    for i, s, e in zip(ids.to_pylist(), start.to_pylist(), end.to_pylist(), strict=True):
        out.append(i if s is None else f"{i}@{s:.3f}-" + ("" if e is None else f"{e:.3f}"))
    return pa.array(out, pa.string())


def span(raw: pa.Table, cols: Columns, origin: str = "") -> tuple[pa.Array, pa.Array]:
    n = raw.num_rows
    if cols.start is None:
        return pa.nulls(n, pa.float64()), pa.nulls(n, pa.float64())
    start = cast(raw[cols.start], cols.start, pa.float64(), origin)
    if cols.end is not None:
        end = cast(raw[cols.end], cols.end, pa.float64(), origin)
        # Kaldi's convention: an end of -1 means "to the end of the file"; another negative end is a bad
        # time that the cut refuses (read as -1, it ran the rest of the file)
        end = pc.if_else(pc.equal(end, -1), pa.scalar(None, pa.float64()), end)
    elif cols.duration is not None:
        length = cast(raw[cols.duration], cols.duration, pa.float64(), origin)
        # NeMo reads a null (or absent) offset as 0: with a duration the row is [0, duration), not
        # the whole file; a null duration runs to the end, as NeMo reads it
        start = pc.if_else(pc.and_(pc.is_null(start), pc.is_valid(length)), pa.scalar(0.0), start)
        end = pc.add(start, length)
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


def resolve_path(path: str | None, root: str) -> str | None:
    if path is None or not str(path).strip():
        return None
    return join(root, str(path).strip())


def check_unique(ids: pa.ChunkedArray, uri: str, rows: bool = True) -> np.ndarray:
    """Refuse a file whose ids repeat, naming the rows of the first repeat (`rows`: the ids are in
    the file's row order; an RTTM's turns are sorted, so their positions name no line); -> a 64-bit
    hash of each id, in row order, for the check across the files of a manifest (`check_unique_across`)."""
    counts = pc.value_counts(ids)
    dup = counts.filter(pc.greater(counts.field("counts"), 1))
    if len(dup):
        ex, n = dup[0]["values"].as_py(), dup[0]["counts"].as_py()
        # a 10-million-row manifest is fixed by going to the rows, not by searching for the id
        where = ""
        if rows:
            first, second = np.flatnonzero(pc.equal(ids, ex).to_numpy(zero_copy_only=False))[:2] + 1
            where = f", at rows {first} and {second}"
        raise ManifestError(
            f"{uri}: duplicate ids: {len(dup)} ids occur more than once, e.g. {ex!r} ({n} times){where}; "
            f"ids must be unique"
        )
    return pd.util.hash_array(ids.to_numpy(zero_copy_only=False).astype(object), categorize=False)


def check_unique_across(uris: list[str], hashes: list[np.ndarray | None]) -> None:
    """Ids must be unique across all files of a manifest, not only within each. The driver holds 8
    bytes per row for this; equal hashes are the same id with overwhelming likelihood (2^-64 a pair)."""
    have = [(k, h) for k, h in enumerate(hashes) if h is not None and len(h)]
    if len(have) < 2:
        return
    values = np.concatenate([h for _, h in have])
    owner = np.concatenate([np.full(len(h), k, np.int64) for k, h in have])
    row = np.concatenate([np.arange(len(h)) for _, h in have])
    order = np.argsort(values, kind="stable")
    same = np.flatnonzero(values[order][1:] == values[order][:-1])
    if len(same):
        a, b = order[same[0]], order[same[0] + 1]
        raise ManifestError(
            f"duplicate ids across the manifest's files: row {row[a] + 1} of {uris[owner[a]]} and row "
            f"{row[b] + 1} of {uris[owner[b]]} have the same id ({len(same)} ids repeat); ids must be "
            f"unique across all files"
        )
