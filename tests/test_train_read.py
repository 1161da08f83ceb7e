"""README's "Reading the output for training" stays true: every block runs against a real output of the
job, and what it streamed (ids, frames) is checked against the same rows read independently with
pyarrow; `pad_frames` against a row-wise padding by hand."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pytest

from pipeline.downstream.reader import pad_frames

from .downstream_corpus import SKIP_IDS, extracted_output

README = Path(__file__).resolve().parent.parent / "README.md"
BLOCK = re.compile(r"<!-- train-read: (\w+) -->\s*```python\n(.*?)```", re.S)
DOC_PATH = "outputs/iemocap"


def blocks() -> dict[str, str]:
    found = dict(BLOCK.findall(README.read_text(encoding="utf-8")))
    assert set(found) == {"duckdb", "polars", "hf_datasets", "ray_data"}, sorted(found)
    return found


@pytest.fixture(scope="module")
def out(ray_session, tiny_model_dir, tmp_path_factory):
    return extracted_output(tmp_path_factory, tiny_model_dir)


@pytest.mark.parametrize("name", ["duckdb", "polars", "hf_datasets", "ray_data"])
def test_readme_training_read_recipe(name, out):
    text = blocks()[name]
    assert DOC_PATH in text
    scope: dict = {}
    exec(compile(text.replace(DOC_PATH, str(out)), f"README:{name}", "exec"), scope)  # noqa: S102
    cols = ["id", "error", "num_frames", "emotion"]
    rows = pads.dataset(str(out), format="parquet").to_table(columns=cols).to_pylist()
    want = {r["id"]: r["num_frames"] for r in rows if r["error"] is None and r["num_frames"] and r["emotion"]}
    assert SKIP_IDS["error"] not in scope["ids"] and SKIP_IDS["no_label"] not in scope["ids"]
    assert sorted(scope["ids"]) == sorted(want)  # every usable row once
    assert scope["frames_total"] == sum(want.values())
    x, mask = scope["x"], scope["mask"]
    assert x.dtype == np.float32 and x.ndim == 3 and x.shape[2] == 48 and mask.shape == x.shape[:2]


def test_pad_frames_matches_rowwise_padding():
    rng = np.random.default_rng(0)
    rows = [rng.normal(size=(n, 3)).astype(np.float16) for n in (2, 5, 1)]
    job_type = pa.list_(pa.list_(pa.float16(), 3))
    col = pa.array([r.tolist() for r in rows] + [None], job_type)
    empty = np.zeros((0, 3), np.float16)
    duck = pa.array([r.astype(np.float32).tolist() for r in rows], pa.list_(pa.list_(pa.float32())))
    cases = [
        (col, [*rows, empty]),
        (col.slice(1), [rows[1], rows[2], empty]),
        (pa.chunked_array([col.slice(0, 2), col.slice(2)]), [*rows, empty]),
        (duck, rows),  # DuckDB's list<list<float>>
    ]
    for c, want in cases:
        x, mask = pad_frames(c)
        assert x.shape == (len(want), 5, 3) and mask.shape == (len(want), 5)
        for b, r in enumerate(want):
            np.testing.assert_array_equal(x[b, : len(r)], r.astype(np.float32))
            assert not x[b, len(r) :].any() and mask[b, len(r) :].all() and not mask[b, : len(r)].any()


def test_writer_row_groups_bounded_in_bytes_for_frames():
    """Frames rows get row groups of ~ROW_GROUP_MB (a streaming reader fetches whole row groups); small
    rows keep 1024-row groups."""
    import io

    import pyarrow.parquet as pq

    from pipeline.writer import ROW_GROUP_MB, encode_parquet

    big = pa.table({"id": [str(i) for i in range(300)],
                    "frames": pa.array([np.zeros(100_000, np.float16)] * 300, pa.list_(pa.float16()))})  # fmt: skip
    meta = pq.ParquetFile(io.BytesIO(encode_parquet(big, "none"))).metadata  # 200 KB a row, 60 MB in all
    sizes = [meta.row_group(g).total_byte_size for g in range(meta.num_row_groups)]
    assert meta.num_row_groups >= 2 and max(sizes) <= 1.1 * ROW_GROUP_MB * 2**20, sizes
    small = pa.table({"id": [str(i) for i in range(3000)]})
    meta = pq.ParquetFile(io.BytesIO(encode_parquet(small, "zstd"))).metadata
    assert [meta.row_group(g).num_rows for g in range(meta.num_row_groups)] == [1024, 1024, 952]
