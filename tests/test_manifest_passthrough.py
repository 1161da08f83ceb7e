"""Manifest columns whose names start with `_` (MongoDB's `_id`, or one named like a private column of
the stages: `_channel`, `_input_error`, `_unit`) pass through renamed, never dropped nor mistaken for ours."""

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.schema import passthrough_schema

from .test_manifest import read

ROWS = [
    {"_id": "64f0a1", "path": "a.wav", "_channel": 1, "_input_error": "note", "_unit": "u9", "n": 1},
    {"_id": "64f0a2", "path": "b.wav", "_channel": 0, "_input_error": None, "_unit": "u9", "n": 2},
]
UNDERSCORED = ("_id", "_channel", "_input_error", "_unit")


def write(tmp_path, form):
    if form == "jsonl":
        (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in ROWS))
        return tmp_path / "m.jsonl"
    pq.write_table(pa.Table.from_pylist(ROWS), tmp_path / "m.parquet")
    return tmp_path / "m.parquet"


@pytest.mark.parametrize("form", ["jsonl", "parquet"])
def test_underscored_manifest_columns_pass_through_renamed_and_clash_with_nothing(tmp_path, form):
    t = read(write(tmp_path, form))
    # none of the manifest's values is taken for the stages' own: no error rows, no channel picked
    assert t["_input_error"].to_pylist() == [None, None]
    assert "_channel" not in t.column_names or t["_channel"].to_pylist() == [None, None]
    kept = passthrough_schema(t.schema).names  # what reaches the output files
    for name in UNDERSCORED:
        assert f"manifest_{name}" in kept, (name, kept)
        assert t[f"manifest_{name}"].to_pylist() == [r[name] for r in ROWS]
    assert "n" in kept and t["path"].to_pylist() == [str(tmp_path / "a.wav"), str(tmp_path / "b.wav")]


def test_an_underscored_id_column_named_in_the_config_is_the_id(tmp_path):
    t = read(write(tmp_path, "jsonl"), id_column="_id")
    assert t["id"].to_pylist() == ["64f0a1", "64f0a2"]
    assert "manifest__id" not in t.column_names  # consumed as the id, like any id column
