"""The GPU check reads the job's progress lines for its steady-state rates: the line as the job prints it
must parse (a changed format would leave the check without its numbers, with no error on the GPU)."""

import io
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "bench"))


@pytest.mark.parametrize(
    "rows,total,audio_s", [(1, 20000, 7.5), (12345, 20000, 123456.0), (300, 300, 2948.4)]
)
def test_gpu_job_parses_the_jobs_progress_line(rows, total, audio_s):
    from gpu_job import PROGRESS

    from pipeline.progress import Progress

    out = io.StringIO()
    p = Progress(total=total, interval_s=0.0, stream=out)
    p.update(rows, rows - 1, 1, audio_s)
    m = PROGRESS.search(out.getvalue())
    assert m, out.getvalue()
    assert (int(m[1]), int(m[2])) == (rows, total)
    assert abs(float(m[3]) * 3600 - audio_s) <= 1.8  # the line rounds hours to 3 decimals (3.6 s)
