"""A glob, a folder or one file of audio: every file is a row. The driver lists the files (see
sources.py): its table (`id`, `path`) is the manifest, handed over whole."""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from ...config import InputConfig
from ...storage import Storage
from ..columns import check_unique
from .base import Count, Format, never

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece


def count(source: Source, cfg: InputConfig, storage: Storage) -> Count:
    assert source.audio is not None
    # the ids' hashes: a rerun tells a unit whose files changed from one committed (run.unit_digests)
    ids = check_unique(source.audio["id"], source.uri)
    return Count(source.audio.num_rows, source.audio.schema, ids=ids)


def read(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    assert source.audio is not None
    yield source.audio.slice(skip_rows)


FORMAT = Format(("audio",), never, read, count)
