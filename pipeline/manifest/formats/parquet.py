"""Parquet manifests: audio paths, or the audio itself (a `binary` column, or the Hugging Face `Audio`
struct<bytes, path> that `datasets` writes; see columns.py for how the audio column is chosen).

Units start at row numbers, so any piece is read from its row on: the row groups before it are not
read at all.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from ...config import InputConfig
from ...storage import Storage
from ..columns import (
    Columns,
    cast,
    check_unique,
    default_ids,
    given_ids,
    is_audio_struct,
    normalise,
    resolve,
    span,
    template_fields,
    templated,
    with_span,
)
from ..errors import ManifestError
from .base import Count, Format

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece

BATCH_ROWS = 4096


def detect(name: str) -> str | None:
    return "parquet" if name.endswith((".parquet", ".pq")) else None


def count(source: Source, cfg: InputConfig, storage: Storage) -> Count:
    with _opened(source, storage) as pf:
        cols = resolve(pf.schema_arrow, cfg, source.uri)
        ids = _ids(pf, cols, source)
        _check_utf8(pf, cols, source)
        head = next(pf.iter_batches(batch_size=1), None)
        meta = pf.metadata
        row_bytes = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    hashes = check_unique(ids, source.uri)
    if head is None:
        return Count(0, pa.schema([]))
    schema = normalise(pa.Table.from_batches([head]), cols, source.root, source.uri, name=source.name).schema
    starts = tuple(range(0, len(ids), cfg.rows_per_unit))
    return Count(len(ids), schema, row_bytes / max(len(ids), 1), pf.schema_arrow, starts, hashes)


def read(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    """Normalised record batches from row `piece.first_row + skip_rows` on (the caller stops once it
    has the rows it wants)."""
    first_row = (0 if piece is None else piece.first_row) + skip_rows
    cols = None
    for raw in _batches(source, storage, first_row):
        cols = cols or resolve(raw.schema, cfg, source.uri)
        yield normalise(raw, cols, source.root, source.uri, first_row, source.name)
        first_row += raw.num_rows


def _ids(pf: pq.ParquetFile, cols: Columns, source: Source) -> pa.ChunkedArray | pa.Array:
    """Every row's id, reading only the columns it is made of (never the audio bytes)."""
    return row_ids(lambda names: pf.read(columns=names), pf.schema_arrow, pf.metadata.num_rows, cols, source)


def row_ids(
    read: Callable[[list[str]], pa.Table], schema: pa.Schema, rows: int, cols: Columns, source: Source
) -> pa.ChunkedArray | pa.Array:
    """Every row's id from the columns `read` gives (a list of column names -> a table of them, the
    struct's `path` field asked for as `<audio>.path`, as Parquet names it), so a reader need not
    read the audio bytes. Shared by the Parquet and Arrow readers: the same dataset gets the same ids."""
    if cols.id is not None:
        return given_ids(read([cols.id]).column(0), cols.id, source.uri)
    names = []
    if cols.template:  # the path as built from the row's columns (an empty one: none)
        fields = sorted(set(template_fields(cols.template)))
        built, _ = templated(read(fields), cols.template)
        names.append(pa.array(built, pa.string()))
    elif not cols.embedded:
        names.append(cast(read([cols.audio]).column(0).combine_chunks(), cols.audio, pa.string(), source.uri))
    elif is_audio_struct(t := schema.field(cols.audio).type) and t.get_field_index("path") >= 0:
        struct = read([f"{cols.audio}.path"]).column(0).combine_chunks()
        names.append(pc.if_else(struct.is_valid(), struct.field("path"), pa.scalar(None, pa.string())))
    if cols.fallback:
        names.append(read([cols.fallback]).column(0).combine_chunks().cast(pa.string()))
    ids = default_ids(names, rows, source.uri, 0, source.name)
    if cols.start is None:
        return ids
    spans = [c for c in (cols.start, cols.duration, cols.end) if c]
    return with_span(ids, *span(read(spans), cols, source.uri))


def _has_text(t: pa.DataType) -> bool:
    if pa.types.is_string(t) or pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return True
    if pa.types.is_struct(t):
        return any(_has_text(t.field(i).type) for i in range(t.num_fields))
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_fixed_size_list(t):
        return _has_text(t.value_type)
    if pa.types.is_map(t):
        return _has_text(t.key_type) or _has_text(t.item_type)
    return False


def _check_utf8(pf: pq.ParquetFile, cols: Columns, source: Source) -> None:
    """Refuse text columns that are not UTF-8, naming the row and column. Parquet declares a column's
    type, not that its bytes are valid (a writer other than Arrow may store Latin-1 as `string`), and
    Arrow does not check on reading: such a path fails its decode as no error row can say, and such a
    passthrough value reaches the output, which DuckDB and Polars then refuse to read. The embedded
    audio column is left out (its bytes are not read in the count pass)."""
    names = text_names(pf.schema_arrow, cols)
    if names:
        check_utf8(pf.iter_batches(batch_size=BATCH_ROWS, columns=names), source.uri)


def text_names(schema: pa.Schema, cols: Columns) -> list[str]:
    """The columns that hold text, but for the embedded audio (`_check_utf8`)."""
    return [f.name for f in schema if _has_text(f.type) and not (cols.embedded and f.name == cols.audio)]


def check_utf8(batches: Iterable[pa.RecordBatch], uri: str) -> None:
    """Refuse the first value of `batches` (the file's text columns, in row order) that is not UTF-8,
    naming the row and the column."""
    row = 0
    for batch in batches:
        for name, column in zip(batch.schema.names, batch.columns, strict=True):
            try:
                column.validate(full=True)
            except pa.ArrowInvalid:
                bad = next(
                    i for i in range(len(column)) if not _valid(column.take([i]))
                )  # a row's own values
                at = row + bad + 1  # counted from 1, as every other manifest message counts rows
                raise ManifestError(
                    f"{uri}: row {at}: column {name!r} is not UTF-8 text; manifests must be "
                    f"UTF-8: rewrite the column (e.g. decoded from latin-1)"
                ) from None
        row += batch.num_rows


def _valid(a: pa.Array) -> bool:
    try:
        a.validate(full=True)
        return True
    except pa.ArrowInvalid:
        return False


def _batches(source: Source, storage: Storage, first_row: int) -> Iterator[pa.Table]:
    with _opened(source, storage) as pf:
        groups, skip = [], first_row
        for g in range(pf.metadata.num_row_groups):
            n = pf.metadata.row_group(g).num_rows
            if not groups and skip >= n:
                skip -= n
            else:
                groups.append(g)
        for batch in pf.iter_batches(batch_size=BATCH_ROWS, row_groups=groups):
            t = pa.Table.from_batches([batch])
            t, skip = t.slice(min(skip, t.num_rows)), max(skip - t.num_rows, 0)
            if t.num_rows:
                yield t


@contextlib.contextmanager
def _opened(source: Source, storage: Storage) -> Iterator[pq.ParquetFile]:
    """The Parquet file of a source; what cannot be opened or parsed (a git-lfs pointer named
    *.parquet, a truncated upload) is a ManifestError naming it, in the count pass as in a read."""
    try:
        with storage.open_input(source.uri) as f:
            yield pq.ParquetFile(f)
    except FileNotFoundError:
        raise ManifestError(f"input.manifest: no such file: {source.uri}") from None
    except pa.ArrowInvalid as e:
        raise ManifestError(f"{source.uri}: cannot parse as parquet: {e}") from None
    except OSError as e:
        raise ManifestError(f"{source.uri}: cannot read: {e}") from None


FORMAT = Format(("parquet",), detect, read, count)
