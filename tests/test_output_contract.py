"""What the job writes and reports, against the README's and docs/architecture.md's Output and `_run.json`
contracts, on real outputs of the job (tiny random model, generated audio)."""

from __future__ import annotations

import json
from pathlib import Path

import pyarrow.dataset as pads
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
