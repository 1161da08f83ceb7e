"""The bodies of the manifest's Ray tasks (count, read). Ray imports a task's module in the worker
that runs it: kept here, away from the model and torch, a count or read task's worker is ready in a
fraction of a second instead of the ~2 s that importing the job module costs (bench/startup.py)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pyarrow as pa

from ..errors import find
from ..storage import StorageUnavailable
from .errors import ManifestError
from .formats import Count, count_rows
from .units import read_pieces


def read_task(batch: pa.Table, **kwargs: Any) -> Iterator[pa.Table]:
    """The read task (see read_pieces); storage that stayed down is told apart from a bad manifest."""
    try:
        yield from read_pieces(batch, **kwargs)
    except ManifestError as e:
        raise _storage_down(e) from None


def count_task(*args: Any) -> Count:
    """The count task (see count_rows), telling storage that stayed down apart the same way."""
    try:
        return count_rows(*args)
    except ManifestError as e:
        raise _storage_down(e) from None


def _storage_down(e: ManifestError) -> BaseException:
    """A manifest that could not be read because its store kept failing through every retry is not
    bad input: StorageUnavailable (the message of `e`) restarts the pipeline or asks for a rerun. Told
    here, in the task: the chain that says so does not survive Ray's pickling."""
    return StorageUnavailable(str(e)) if find(e, StorageUnavailable) else e
