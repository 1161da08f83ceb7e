"""The progress line the driver prints while it consumes the write stage's summaries (run._execute)."""

from __future__ import annotations

import io
import json

import pyarrow as pa
import pytest

from pipeline.progress import Progress
from pipeline.run import RunFailed, _execute
from pipeline.writer import COUNTS


def summary(unit: str, file: str, rows: int, ok: int, unit_rows: int) -> dict:
    """One staged file's summary, as write_parts returns it."""
    s = dict.fromkeys(COUNTS, 0)
    s.update(
        unit=unit,
        unit_rows=unit_rows,
        file=file,
        sources=rows,
        expected=rows,
        rows=rows,
        ok=ok,
        error=rows - ok,
        audio_s=2.0 * rows,
        model_nodes=json.dumps({}),
        model_runtimes=json.dumps({}),
        error_rows=json.dumps({}),
    )
    return s


class DiesAfterOneBlock:
    """A dataset whose execution fails (a worker died) after one block of summaries."""

    def __init__(self, summaries: list[dict]):
        self.summaries = summaries

    def iter_batches(self, **_):
        yield pa.Table.from_pylist(self.summaries)
        raise RuntimeError("a worker died")


def test_rows_of_a_failed_attempt_leave_every_count_of_the_progress_line(ray_session):
    """A unit that had not received all its rows when the attempt failed is redone by the next one;
    what its rows added to the line (rows, ok, errors, audio) must go, or the redone rows count twice:
    the last line said `ok 13` of 10 rows."""
    stream = io.StringIO()
    progress = Progress(total=10, interval_s=3600.0, stream=stream)
    ds = DiesAfterOneBlock([summary("u-000000", "a.parquet", rows=3, ok=2, unit_rows=10)])
    with pytest.raises(RunFailed):
        _execute(ds, None, None, progress, None, None, set(), stream)
    assert (progress.rows, progress.ok, progress.error, progress.audio_s) == (0, 0, 0, 0.0)
    # the restarted attempt: all ten rows of the unit, once
    progress.update(10, 9, 1, 20.0)
    assert "10/10 rows (100%) | ok 9 err 1 | 0.006 h audio" in progress.line()
