"""What the job writes and reports, against the README's and docs/architecture.md's Output and `_run.json`
contracts, on real outputs of the job (tiny random model, generated audio)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import soundfile as sf

from pipeline.cli import extract

from .conftest import random_clips


def clips(d: Path, n: int) -> list[Path]:
    paths = []
    for i, x in enumerate(random_clips([16000 + 4000 * i for i in range(n)], seed=7)):
        paths.append(d / f"c{i}.wav")
        sf.write(paths[-1], x, 16000)
    return paths


def job(tmp_path: Path, manifest: Path, model_dir, extra: str = "") -> tuple[Path, Path]:
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n"
        f"model:\n  source: {model_dir}\n  device: cpu\n  dtype: float32\n"
        f"output:\n  path: {out}\n  max_error_fraction: 1.0\n" + extra
    )
    return cfg, out


def write_jsonl(path: Path, rows: list[dict]) -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_passthrough_columns_of_every_shard_reach_the_output(ray_session, tiny_model_dir, tmp_path):
    """A manifest of shards: a column that is null throughout the first shard and a column only the
    second one has are passthrough columns like any other ("every other manifest column")."""
    wav = clips(tmp_path, 3)
    shards = tmp_path / "manifest"
    shards.mkdir()
    write_jsonl(
        shards / "part-0.jsonl",
        [{"id": "a0", "path": str(wav[0]), "note": None}, {"id": "a1", "path": str(wav[1]), "note": None}],
    )
    write_jsonl(shards / "part-1.jsonl", [{"id": "b0", "path": str(wav[2]), "note": "loud", "lang": "en"}])
    cfg, out = job(tmp_path, shards, tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    rows = {r["id"]: r for r in pads.dataset(str(out), format="parquet").to_table().to_pylist()}
    assert sorted(rows) == ["a0", "a1", "b0"]
    assert all(r["error"] is None for r in rows.values())
    assert [(rows[i]["note"], rows[i]["lang"]) for i in ("a0", "a1", "b0")] == [
        (None, None),
        (None, None),
        ("loud", "en"),
    ]


def test_parquet_shards_with_a_dictionary_encoded_column_and_a_plain_one(
    ray_session, tiny_model_dir, tmp_path
):
    """Parquet shards written by different tools: one stores a text column dictionary-encoded (a pandas
    category), the other as plain strings. Both are the same passthrough column."""
    wav = clips(tmp_path, 2)
    shards = tmp_path / "manifest"
    shards.mkdir()
    emotion = pa.array(["ang"]).dictionary_encode()
    pq.write_table(pa.table({"id": ["a0"], "path": [str(wav[0])], "emotion": emotion}), shards / "a.parquet")
    pq.write_table(pa.table({"id": ["b0"], "path": [str(wav[1])], "emotion": ["sad"]}), shards / "b.parquet")
    cfg, out = job(tmp_path, shards, tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    table = pads.dataset(str(out), format="parquet").to_table().sort_by("id")
    assert table["id"].to_pylist() == ["a0", "b0"] and table["error"].null_count == 2
    assert table["emotion"].to_pylist() == ["ang", "sad"]


def test_shards_whose_column_types_conflict_exit_2_naming_the_column(
    ray_session, tiny_model_dir, tmp_path, capsys
):
    wav = clips(tmp_path, 2)
    shards = tmp_path / "manifest"
    shards.mkdir()
    write_jsonl(shards / "part-0.jsonl", [{"id": "a0", "path": str(wav[0]), "session": 1}])
    write_jsonl(shards / "part-1.jsonl", [{"id": "b0", "path": str(wav[1]), "session": "two"}])
    cfg, out = job(tmp_path, shards, tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: input.manifest: "), err
    assert "session" in err[-1], err
    assert not list(out.glob("*.parquet"))


ARCH = Path(__file__).resolve().parent.parent / "docs" / "architecture.md"


@pytest.fixture(scope="module")
def mixed(ray_session, tiny_model_dir, tmp_path_factory):
    """One output of a manifest with ok rows and error rows of each early stage: a missing file
    (fetch), an empty wav (decode), a span past the end of its file (decode)."""
    d = tmp_path_factory.mktemp("mixed")
    wav = clips(d, 3)
    sf.write(d / "empty.wav", np.zeros(0, np.float32), 16000)
    rows = [{"id": f"ok{i}", "path": str(p)} for i, p in enumerate(wav)]
    rows += [
        {"id": "missing", "path": str(d / "nope.wav")},
        {"id": "empty", "path": str(d / "empty.wav")},
        {"id": "past", "path": str(wav[0]), "offset": 100.0, "duration": 1.0},
    ]
    write_jsonl(d / "manifest.jsonl", rows)
    cfg, out = job(d, d / "manifest.jsonl", tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    return out


def run_json_table() -> list[str]:
    """The keys the `_run.json` contract table of docs/architecture.md names."""
    text = ARCH.read_text(encoding="utf-8").split("### `_run.json` (contract)", 1)[1].split("\n#", 1)[0]
    keys = []
    for line in text.splitlines():
        if line.startswith("| `"):
            keys += re.findall(r"`([a-z_]+)`", line.split("|")[1])
    return keys


def test_run_json_has_exactly_the_keys_of_the_contract_table(mixed):
    run = json.loads((mixed / "_run.json").read_text())
    documented = run_json_table()
    assert len(documented) > 10  # the table was found
    assert sorted(documented) == sorted(run), "docs/architecture.md's _run.json table and _run.json differ"


def test_rows_per_model_node_and_runtime_count_the_ok_rows(mixed):
    """docs/architecture.md: `rows_per_model_node`, `rows_per_model_runtime`: ok rows per node and
    per runtime; rows that failed before the model never ran on a node's model."""
    run = json.loads((mixed / "_run.json").read_text())
    table = pads.dataset(str(mixed), format="parquet").to_table()
    ok = sum(e is None for e in table["error"].to_pylist())
    assert (ok, table.num_rows) == (3, 6)
    assert run["rows"]["ok"] == ok
    assert sum(run["rows_per_model_runtime"].values()) == ok
    assert sum(run["rows_per_model_node"].values()) == ok, run["rows_per_model_node"]


def test_a_unit_with_error_rows_whose_manifest_gained_rows_is_redone_whole(
    ray_session, tiny_model_dir, tmp_path
):
    """README: a rerun redoes the error rows of a unit, "and a unit whose row count changed in the
    manifest is redone". A row appended to a manifest whose (last) unit has an error row must reach
    the output on the rerun, not only the error row's redo."""
    wav = clips(tmp_path, 2)
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"id": "r0", "path": str(wav[0])}, {"id": "r1", "path": str(tmp_path / "nope.wav")}]
    write_jsonl(manifest, rows)
    cfg, out = job(tmp_path, manifest, tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    write_jsonl(manifest, [*rows, {"id": "r2", "path": str(wav[1])}])
    assert extract.main(["--config", str(cfg)]) == 0
    table = pads.dataset(str(out), format="parquet").to_table()
    got = sorted(zip(table["id"].to_pylist(), [e is None for e in table["error"].to_pylist()], strict=True))
    assert got == [("r0", True), ("r1", False), ("r2", True)]
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"]["input"] == 3 and run["output_totals"]["rows"] == 3


def test_the_progress_of_a_rerun_that_redoes_error_rows_reaches_its_total(
    ray_session, tiny_model_dir, tmp_path, capsys
):
    """A rerun redoes only the error rows of a committed unit: its progress line counts those rows
    against those rows, and ends at 100 %, not at the share of error rows in the unit."""
    wav = clips(tmp_path, 3)
    manifest = tmp_path / "manifest.jsonl"
    rows = [{"id": f"r{i}", "path": str(p)} for i, p in enumerate(wav)]
    write_jsonl(manifest, [*rows, {"id": "bad", "path": str(tmp_path / "nope.wav")}])
    cfg, out = job(tmp_path, manifest, tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    capsys.readouterr()
    assert extract.main(["--config", str(cfg)]) == 0
    lines = [line for line in capsys.readouterr().err.splitlines() if " rows (" in line]
    assert lines and lines[-1].startswith("[emotion2vec] 1/1 rows (100%) | ok 0 err 1 |"), lines


def test_a_manifest_column_named_like_the_stages_waveform_passes_through_renamed(
    ray_session, tiny_model_dir, tmp_path
):
    """`waveform` is the column that carries the decoded audio between decoding and the model; a
    manifest column of that name is renamed `manifest_waveform`, as a clash with an output column is,
    instead of failing every block of the run on a duplicated column."""
    wav = clips(tmp_path, 1)
    write_jsonl(tmp_path / "manifest.jsonl", [{"id": "r0", "path": str(wav[0]), "waveform": "mono"}])
    cfg, out = job(tmp_path, tmp_path / "manifest.jsonl", tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    (row,) = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    assert (row["id"], row["error"], row["manifest_waveform"]) == ("r0", None, "mono")
    assert "waveform" not in row


def test_a_failed_row_whose_id_changed_in_the_manifest_is_processed_on_the_rerun(
    ray_session, tiny_model_dir, tmp_path
):
    """A manifest without an id column names each row by its path. Fixing the path of a row that failed
    (a typo) changes its id: the rerun must process the fixed row and drop the old error row, not look
    for the old id in vain and leave the unit as it was on every rerun."""
    clips(tmp_path, 2)
    manifest = tmp_path / "manifest.jsonl"
    write_jsonl(manifest, [{"path": "c0.wav"}, {"path": "c1.wvv"}])  # a typo in the second path
    cfg, out = job(tmp_path, manifest, tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    assert pads.dataset(str(out), format="parquet").to_table()["error"].null_count == 1
    write_jsonl(manifest, [{"path": "c0.wav"}, {"path": "c1.wav"}])
    assert extract.main(["--config", str(cfg)]) == 0
    table = pads.dataset(str(out), format="parquet").to_table()
    assert sorted(table["id"].to_pylist()) == ["c0.wav", "c1.wav"]
    assert table["error"].null_count == 2
    run = json.loads((out / "_run.json").read_text())
    assert run["output_totals"]["rows"] == 2 and run["output_totals"]["error"] == 0
