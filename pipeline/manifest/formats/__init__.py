"""The format families, one module each, and their registry.

Adding a format: a module with a `FORMAT = Format(names, detect, read[, count])` (see base.py), and
one line in REGISTRY. Detection by file name asks the families in registry order (Lhotse's
`cuts.jsonl` before plain JSON lines).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from ...config import InputConfig
from ...storage import Storage
from ..columns import file_name
from ..errors import ManifestError
from . import arrow, audio_folder, kaldi, lhotse, lines, parquet, rttm
from .base import Count, Format, count_whole

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece

REGISTRY: tuple[Format, ...] = (
    lhotse.FORMAT,
    lines.FORMAT,
    parquet.FORMAT,
    arrow.FORMAT,
    kaldi.FORMAT,
    audio_folder.FORMAT,
    rttm.FORMAT,
)
NAMES = tuple(name for f in REGISTRY for name in f.names)


def named_format(uri: str) -> str | None:
    """The `input.format` value a file's name says it holds, or None: not a manifest's name."""
    name = file_name(uri).lower()
    return next((found for fmt in REGISTRY if (found := fmt.detect(name))), None)


def detect_format(uri: str) -> str:
    """A manifest file's `input.format` value, from its name."""
    found = named_format(uri)
    if found:
        return found
    raise ManifestError(
        f"{uri}: cannot tell the manifest format from the name; set input.format ({', '.join(NAMES)})"
    )


def family(name: str) -> Format:
    for fmt in REGISTRY:
        if name in fmt.names:
            return fmt
    raise ManifestError(f"unknown input.format {name!r} (one of {', '.join(NAMES)})")


def count_rows(source: Source, cfg: InputConfig, storage: Storage) -> Count:
    """Rows of one source, its normalised schema and where its units start, checking on the way
    what can be checked cheaply: that it parses, has an id and an audio column, and has no
    duplicate ids. Raises ManifestError naming the file."""
    fmt = family(source.format)
    if fmt.count is None:
        # a CutSet's rows are its supervisions, not its lines: a row number would point nowhere
        return count_whole(fmt.read(source, cfg, storage), source.uri, rows=source.format != "lhotse")
    return fmt.count(source, cfg, storage)


def tables(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    """Normalised tables of one source (or of one piece of it, from its `skip_rows`-th row on), in
    file order."""
    return family(source.format).read(source, cfg, storage, piece, raw_schema, skip_rows)


__all__ = ["REGISTRY", "Count", "Format", "count_rows", "detect_format", "family", "named_format", "tables"]
