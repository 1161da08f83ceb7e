"""The interface every format family implements, and the helpers they share.

A format family is one `Format`: `detect` (a file name -> the `input.format` value it reads, or None),
`count` (the count pass: rows, schema, where units start, checked cheaply) and `read` (normalised
tables of a source or of one piece of it, in file order). Each family resolves its own columns:
free-form manifests through `columns.resolve`, fixed layouts (Kaldi, Lhotse) with fixed Columns.
"""

from __future__ import annotations

import gzip
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa

from ...config import InputConfig
from ...storage import Storage
from ..columns import check_unique
from ..errors import ManifestError

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece


@dataclass(frozen=True)
class Count:
    """What the count pass learns about one source."""

    rows: int
    schema: pa.Schema  # normalised
    row_bytes: float = 0.0  # bytes per row (audio inside a Parquet manifest makes rows big)
    raw_schema: pa.Schema | None = None  # as parsed from the whole file: every piece is parsed with it
    starts: tuple[int, ...] | None = None  # where each unit starts (byte or row); None: not splittable
    ids: np.ndarray | None = None  # a 64-bit hash of each id, in row order (columns.check_unique)
    units: tuple[int, ...] | None = None  # rows of each unit where units differ in size (`whole_groups`)
    groups: tuple[int, ...] | None = None  # rows of each group, in order (a recording's turns: `runs`)


# count(source, cfg, storage) -> Count
Counter = Callable[["Source", InputConfig, Storage], Count]
# read(source, cfg, storage, piece (None: whole), raw_schema, skip_rows) -> normalised tables
Reader = Callable[
    ["Source", InputConfig, Storage, "Piece | None", "pa.Schema | None", int], Iterator[pa.Table]
]


@dataclass(frozen=True)
class Format:
    """One family of manifest formats (see the module docstring)."""

    names: tuple[str, ...]  # the input.format values it reads
    detect: Callable[[str], str | None]  # a file name (lower case) -> one of `names`, or None
    read: Reader
    count: Counter | None = None  # None: read the source whole and count that (`count_whole`)
    companions: frozenset[str] = frozenset()  # file names read beside its manifests, not manifests


def never(name: str) -> str | None:
    """`detect` of a family that discovery picks by layout, not by file name (folders)."""
    return None


def count_whole(tables: Iterable[pa.Table], uri: str, rows: bool = True) -> Count:
    """The count of a source read whole: its normalised tables' rows, checked for duplicate ids
    (`rows`: the tables hold the rows in the file's order, see `check_unique`)."""
    ids, schema = [], None
    for t in tables:
        ids.append(t["id"])
        schema = schema or t.schema
    column = pa.chunked_array(ids, pa.string()) if ids else pa.chunked_array([], pa.string())
    hashes = check_unique(column, uri, rows)
    return Count(len(column), schema or pa.schema([]), ids=hashes)


MAX_GROUP_UNITS = 10  # a group (a recording's turns) is cut only past this many times input.rows_per_unit


def runs(groups: Sequence[object]) -> tuple[int, ...]:
    """The lengths of the runs of equal values in `groups` (a recording's turns), in order."""
    out: list[int] = []
    for k, g in enumerate(groups):
        if k and g == groups[k - 1]:
            out[-1] += 1
        else:
            out.append(1)
    return tuple(out)


def whole_groups(groups: Sequence[object], size: int) -> tuple[int, ...]:
    """Rows of each unit for rows that come in groups (runs of equal values: a recording's turns),
    so that a group is never split between two units: a unit takes whole groups while it holds at most
    `size` rows; a group of more than `size` rows is a unit of its own; only a group of more than
    MAX_GROUP_UNITS x `size` rows is cut, into units of `size` (bounded units, whatever the input)."""
    units: list[int] = []
    held = 0
    for n in runs(groups):
        if held and held + n > size:
            units.append(held)
            held = 0
        if n <= size:
            held += n
        elif n <= MAX_GROUP_UNITS * size:
            units.append(n)
        else:
            units += [size] * (n // size) + ([n % size] if n % size else [])
    return tuple(units + [held] if held else units)


def read_bytes(
    uri: str,
    storage: Storage,
    start: int | None = None,
    end: int | None = None,
    unzip: bool = True,
    named_by: str = "input.manifest",
) -> bytes:
    """A manifest file's bytes (a range of them: never compressed, see lines.unit_starts), decompressed.
    `named_by`: what named the file, for the message when it is missing (a NeMo manifest's line)."""
    try:
        data = storage.read_bytes(uri, start, end)
    except FileNotFoundError:
        raise ManifestError(f"{named_by}: no such file: {uri}") from None
    except OSError as e:
        raise ManifestError(f"{uri}: cannot read: {e}") from None
    return gunzip(data, uri) if unzip and start is None else data


BOM = b"\xef\xbb\xbf"


def text(data: bytes, first: bool = True) -> bytes:
    """Text as Windows editors save it -> plain: a UTF-8 byte-order mark at the top of the file
    (`first`: these bytes start the file) is dropped, CRLF line ends become LF. Byte offsets of
    units are taken on the file as stored, so this runs on what is parsed, never on what is counted."""
    if first and data.startswith(BOM):
        data = data[len(BOM) :]
    return data.replace(b"\r\n", b"\n") if b"\r\n" in data else data


def gunzip(data: bytes, uri: str) -> bytes:
    """Decompress gzip data, whatever the file is called (tools differ on naming)."""
    try:
        return gzip.decompress(data) if is_gzip(data) else data
    except (EOFError, gzip.BadGzipFile, OSError) as e:
        raise ManifestError(f"{uri}: cannot decompress: {e}") from None


def is_gzip(data: bytes) -> bool:
    return data[:2] == b"\x1f\x8b"


def utf8(data: bytes, uri: str) -> str:
    """A text manifest's bytes as text; another encoding (Latin-1, GBK) is a ManifestError naming it."""
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{uri}: not UTF-8 text: {e}") from None


def two_columns(data: bytes, uri: str, form: str, empty: bool = False) -> tuple[pa.Array, pa.Array]:
    """Kaldi-style `<key> <rest of line>` lines (blank lines and # comments skipped). `empty`: a key
    alone has the value "" (Kaldi's `text`: an utterance without words)."""
    keys, values = [], []
    for n, line in enumerate(utf8(text(data), uri).splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        parts = line.strip().split(maxsplit=1)
        if empty and len(parts) == 1:
            parts.append("")
        if len(parts) != 2:
            raise ManifestError(f"{uri}: line {n}: expected '{form}', got {line.strip()!r}")
        keys.append(parts[0])
        values.append(parts[1])
    return pa.array(keys, pa.string()), pa.array(values, pa.string())
