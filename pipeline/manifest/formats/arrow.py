"""Arrow IPC manifests: the `.arrow` files of a Hugging Face `datasets` folder kept with `save_to_disk`
(`state.json` lists them; a DatasetDict folder has `dataset_dict.json` and one such folder per split)
or of its cache. `datasets` writes the IPC *stream* format (no footer); the IPC *file* format (magic
`ARROW1`, the same stream inside) is read alike. Columns and ids are those of the same dataset written
with `to_parquet` (the Parquet reader's rules, parquet.row_ids); a DatasetDict's rows get the `split`
they come from.

Units start at row numbers, as in Parquet. A stream has no index of its record batches, so the count
pass makes one by reading the messages' headers only (the Arrow IPC encapsulated message: a
continuation marker, the length of a flatbuffer `Message`, the message, its body; `_index`), skipping
their bodies, and hands it to the pieces in the raw schema's metadata: a piece then reads the record
batches that hold its rows and no other. A local file is
memory-mapped, so a batch's columns are read only where they are used (the count pass never touches
the audio bytes). A remote file (S3, http) is read by ranges, batch by batch, but its count pass
reads every batch whole: the ids' columns lie inside each batch's body, beside the audio.
"""

from __future__ import annotations

import contextlib
import json
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

import pyarrow as pa
import pyarrow.compute as pc

from ...config import InputConfig
from ...storage import Storage, StorageUnavailable, is_remote, join, local_path
from ..columns import Columns, check_unique, is_audio_struct, normalise, resolve, template_fields
from ..errors import ManifestError
from .base import Count, Format
from .parquet import BATCH_ROWS, check_utf8, row_ids, text_names

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece

SPLIT = "split"  # the column a DatasetDict's rows get: the split they come from
STATE = "state.json"  # save_to_disk's list of a Dataset's files (`_data_files`)
DATASET_DICT = "dataset_dict.json"  # save_to_disk's list of a DatasetDict's splits
FILE_MAGIC = b"ARROW1"  # the IPC file format: magic, padding to 8 bytes, then the stream
CONTINUATION = 0xFFFFFFFF
SCHEMA, DICTIONARY, RECORD_BATCH = 1, 2, 3  # flatbuffer MessageHeader union types
INDEX_KEY = b"emotion2vec.arrow_messages"  # the count pass's messages, in the raw schema's metadata


def detect(name: str) -> str | None:
    return "arrow" if name.endswith(".arrow") else None


# -- save_to_disk folders ------------------------------------------------------------------------------


def saved_dataset(where: str, storage: Storage) -> list[tuple[str, str | None]] | None:
    """The `.arrow` files of a save_to_disk folder, in the dataset's order, each with the split it
    belongs to (None: a Dataset's folder, not a DatasetDict's); None when `where` is no such folder.
    A DatasetDict is read whole, every split in the order `dataset_dict.json` lists them, as a folder
    of Parquet shards of several splits is (name `<folder>/<split>` to read one)."""
    if storage.exists(join(where, STATE)):
        return [(f, None) for f in _data_files(where, storage)]
    if not storage.exists(join(where, DATASET_DICT)):
        return None
    splits = _json(join(where, DATASET_DICT), storage).get("splits")
    if not isinstance(splits, list) or not all(isinstance(s, str) for s in splits):
        raise ManifestError(f"{join(where, DATASET_DICT)}: expected a list of split names under 'splits'")
    out: list[tuple[str, str | None]] = []
    for split in splits:
        folder = join(where, split)
        if not storage.exists(join(folder, STATE)):
            raise ManifestError(
                f"{join(where, DATASET_DICT)} names split {split!r}, but {folder} has no {STATE} "
                f"(not a folder save_to_disk wrote)"
            )
        out += [(f, split) for f in _data_files(folder, storage)]
    return out


def _data_files(folder: str, storage: Storage) -> list[str]:
    state = join(folder, STATE)
    files = _json(state, storage).get("_data_files")
    if not isinstance(files, list) or not all(isinstance(f, dict) and "filename" in f for f in files):
        raise ManifestError(f"{state}: expected a list of {{'filename': ...}} under '_data_files'")
    if not files:
        raise ManifestError(f"{state}: the dataset has no data files")
    return [join(folder, f["filename"]) for f in files]


def _json(uri: str, storage: Storage) -> dict:
    try:
        value = json.loads(storage.read_bytes(uri))
    except StorageUnavailable:
        raise  # a store down through every retry is a failed run (rerun), not a bad manifest
    except OSError as e:
        raise ManifestError(f"{uri}: cannot read: {e}") from None
    except ValueError as e:
        raise ManifestError(f"{uri}: not JSON: {e}") from None
    if not isinstance(value, dict):
        raise ManifestError(f"{uri}: expected a JSON object")
    return value


# -- the messages of a stream --------------------------------------------------------------------------


@dataclass(frozen=True)
class Message:
    offset: int  # where the message starts in the file (its continuation marker)
    kind: int  # SCHEMA, DICTIONARY, RECORD_BATCH (others are not read)
    rows: int  # a record batch's rows (0 for other messages)
    body: int  # the body's bytes


def _index(f: IO[bytes] | pa.NativeFile, uri: str) -> list[Message]:
    """The messages of the file's stream, from their headers (the bodies are skipped, not read)."""
    f.seek(0)
    head = f.read(8)
    pos = 8 if head[:6] == FILE_MAGIC else 0
    out: list[Message] = []
    while True:
        f.seek(pos)
        prefix = f.read(8)
        if len(prefix) < 4:
            break  # a stream may end without its end-of-stream marker
        (length,) = struct.unpack("<I", prefix[:4])
        start = pos + 4
        if length == CONTINUATION:  # the format since Arrow 0.15; before, the length came first
            if len(prefix) < 8:
                break
            (length,) = struct.unpack("<i", prefix[4:8])
            start = pos + 8
        if length == 0:
            break  # end of stream (in the file format: the footer follows)
        if length < 0:
            raise _unparsed(uri, f"no message at byte {pos}")
        f.seek(start)
        meta = f.read(length)
        if len(meta) < length:
            raise _unparsed(uri, f"the message at byte {pos} is cut short")
        try:
            kind, rows, body = _header(meta)
        except (struct.error, IndexError):
            raise _unparsed(uri, f"no message at byte {pos}") from None
        out.append(Message(pos, kind, rows, body))
        pos = start + length + body
    if not out or out[0].kind != SCHEMA:
        raise _unparsed(uri, "no schema at its start")
    return out


def _unparsed(uri: str, why: str) -> ManifestError:
    return ManifestError(
        f"{uri}: cannot parse as Arrow IPC (the stream or file Hugging Face datasets writes): {why}"
    )


def _header(meta: bytes) -> tuple[int, int, int]:
    """(header type, rows, body length) of a flatbuffer `Message` (Arrow's Message.fbs: fields
    version, header_type, header, bodyLength; a RecordBatch's first field is its length)."""
    table = _u32(meta, 0)
    kind = _field(meta, table, 1, "<B")
    body = _field(meta, table, 3, "<q")
    rows = 0
    if kind == RECORD_BATCH:
        at = _slot(meta, table, 2)
        if at:
            rows = _field(meta, at + _u32(meta, at), 0, "<q")
    return kind, rows, body


def _u32(buf: bytes, at: int) -> int:
    return struct.unpack_from("<I", buf, at)[0]


def _slot(buf: bytes, table: int, index: int) -> int:
    """Where field `index` of the flatbuffer table at `table` lies (0: absent, its default)."""
    vtable = table - struct.unpack_from("<i", buf, table)[0]
    size = struct.unpack_from("<H", buf, vtable)[0]
    entry = 4 + 2 * index
    if entry >= size:
        return 0
    off = struct.unpack_from("<H", buf, vtable + entry)[0]
    return table + off if off else 0


def _field(buf: bytes, table: int, index: int, fmt: str) -> int:
    at = _slot(buf, table, index)
    return struct.unpack_from(fmt, buf, at)[0] if at else 0


# -- reading -------------------------------------------------------------------------------------------


def _noted(schema: pa.Schema, messages: list[Message]) -> pa.Schema:
    """The raw schema that every piece is read with, noting the messages the count pass found: a piece
    of a remote file seeks to its batches without scanning the headers again (a request each, whose
    read-ahead fetches megabytes of the bodies between them)."""
    note = json.dumps([[m.offset, m.kind, m.rows, m.body] for m in messages], separators=(",", ":"))
    return schema.with_metadata({**(schema.metadata or {}), INDEX_KEY: note.encode()})


def _noted_messages(raw_schema: pa.Schema | None) -> list[Message] | None:
    note = (raw_schema.metadata or {}).get(INDEX_KEY) if raw_schema is not None else None
    return None if note is None else [Message(*m) for m in json.loads(note)]


@contextlib.contextmanager
def _opened(
    source: Source, storage: Storage, messages: list[Message] | None = None
) -> Iterator[tuple[IO[bytes] | pa.NativeFile, list[Message]]]:
    """The file (memory-mapped when local) and its messages (`messages`: as the count pass found
    them); what cannot be opened or parsed (a git-lfs pointer named *.arrow, a truncated copy) is a
    ManifestError naming it."""
    try:
        if is_remote(source.uri):
            f = storage.open_input(source.uri)
        else:
            f = pa.memory_map(os.path.abspath(os.path.expanduser(local_path(source.uri))))
        with f:
            yield f, messages or _index(f, source.uri)
    except FileNotFoundError:
        raise ManifestError(f"input.manifest: no such file: {source.uri}") from None
    except StorageUnavailable:
        raise
    except pa.ArrowInvalid as e:
        raise _unparsed(source.uri, str(e)) from None
    except OSError as e:
        raise ManifestError(f"{source.uri}: cannot read: {e}") from None


def _batches(
    f: IO[bytes] | pa.NativeFile, messages: list[Message], first_row: int, source: Source
) -> Iterator[pa.RecordBatch]:
    """The record batches from the one that holds row `first_row` on, the first cut to start there."""
    f.seek(messages[0].offset)
    schema = pa.ipc.read_schema(pa.ipc.read_message(f))
    batches: Iterator[pa.RecordBatch]
    if any(m.kind == DICTIONARY for m in messages):
        # a dictionary-encoded column needs every dictionary message before a batch: read in order
        f.seek(messages[0].offset)
        batches = iter(pa.ipc.open_stream(f))
    else:
        row = 0
        kept = []
        for m in messages:
            if m.kind != RECORD_BATCH:
                continue
            if not kept and row + m.rows <= first_row:
                row += m.rows  # a batch before the piece: its body is never read
                continue
            kept.append(m)
        first_row -= row
        batches = (_batch(f, m, schema) for m in kept)
    for batch in batches:
        if first_row >= batch.num_rows:
            first_row -= batch.num_rows
            continue
        yield _with_split(batch.slice(first_row), source)
        first_row = 0


def _batch(f: IO[bytes] | pa.NativeFile, m: Message, schema: pa.Schema) -> pa.RecordBatch:
    f.seek(m.offset)
    return pa.ipc.read_record_batch(pa.ipc.read_message(f), schema)


def _with_split(batch: pa.RecordBatch, source: Source) -> pa.RecordBatch:
    """A DatasetDict's rows with their split (a dataset's own `split` column is left as it is)."""
    split = source.split
    if split is None or SPLIT in batch.schema.names:
        return batch
    return batch.append_column(SPLIT, pa.array([split] * batch.num_rows, pa.string()))


def count(source: Source, cfg: InputConfig, storage: Storage) -> Count:
    remote = is_remote(source.uri)
    with _opened(source, storage) as (f, messages):
        light: list[pa.RecordBatch] = []  # per batch, the columns of the ids and the text columns
        head, cols, raw_schema = None, None, None
        for batch in _batches(f, messages, 0, source):
            if cols is None:
                raw_schema, head = batch.schema, pa.Table.from_batches([batch.slice(0, 1)])
                cols = resolve(raw_schema, cfg, source.uri)
            light.append(_light(batch, cols, copy=remote))  # a remote body is let go here
        body = sum(m.body for m in messages if m.kind == RECORD_BATCH)
    if cols is None or head is None or raw_schema is None:
        return Count(0, pa.schema([]))
    check_utf8((b.select(text_names(raw_schema, cols)) for b in light), source.uri)
    rows = sum(b.num_rows for b in light)
    table = pa.Table.from_batches(light)

    def read(columns: list[str]) -> pa.Table:
        # `<audio>.path`: the struct reduced to its path (`_light`), as Parquet reads that field alone
        return table.select([c.partition(".")[0] for c in columns])

    hashes = check_unique(row_ids(read, raw_schema, rows, cols, source), source.uri)
    schema = normalise(head, cols, source.root, source.uri, name=source.name).schema
    starts = tuple(range(0, rows, cfg.rows_per_unit))
    return Count(rows, schema, body / max(rows, 1), _noted(raw_schema, messages), starts, hashes)


def _light(batch: pa.RecordBatch, cols: Columns, copy: bool) -> pa.RecordBatch:
    """What the count pass keeps of a batch: the text columns (checked for UTF-8) and the columns the
    ids are made of, the embedded audio struct reduced to its `path`, so its bytes are never touched
    (a memory-mapped file's pages of audio are not even read). `copy`: out of the batch's body, so
    that a remote file's bodies are not all held at once."""
    names = set(text_names(batch.schema, cols))
    names |= {c for c in (cols.id, cols.fallback, cols.start, cols.duration, cols.end) if c}
    if cols.template:
        names |= set(template_fields(cols.template))
    elif not cols.embedded:
        names.add(cols.audio)
    arrays, kept = [], []
    for name in batch.schema.names:
        column = batch.column(name)
        if cols.embedded and name == cols.audio:
            if not is_audio_struct(column.type) or column.type.get_field_index("path") < 0:
                continue
            column = pa.StructArray.from_arrays(
                [pc.struct_field(column, "path")], ["path"], mask=column.is_null()
            )
        elif name not in names:
            continue
        arrays.append(pa.concat_arrays([column, column.slice(0, 0)]) if copy else column)
        kept.append(name)
    return pa.RecordBatch.from_arrays(arrays, names=kept)


def read(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    """Normalised tables from row `piece.first_row + skip_rows` on (the caller stops once it has the
    rows it wants), of at most BATCH_ROWS rows each."""
    first_row = (0 if piece is None else piece.first_row) + skip_rows
    cols = None
    with _opened(source, storage, _noted_messages(raw_schema)) as (f, messages):
        for batch in _batches(f, messages, first_row, source):
            cols = cols or resolve(batch.schema, cfg, source.uri)
            for lo in range(0, batch.num_rows, BATCH_ROWS):
                raw = pa.Table.from_batches([batch.slice(lo, BATCH_ROWS)])
                yield normalise(raw, cols, source.root, source.uri, first_row, source.name)
                first_row += raw.num_rows


FORMAT = Format(("arrow",), detect, read, count)
