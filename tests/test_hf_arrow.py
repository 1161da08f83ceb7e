"""Hugging Face `datasets` kept as Arrow (`save_to_disk` folders, DatasetDicts, the cache's `.arrow`
files): written by `datasets` itself from espeak-ng clips; the rows read must be those of the same
dataset written with `to_parquet` (the Parquet reader's contract), cut into the same units."""

import json
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.manifest import ManifestError, Plan, count_rows, discover, read_pieces
from pipeline.storage import Storage

from .test_manifest import http_folder, read  # noqa: F401 - a fixture used below

datasets = pytest.importorskip("datasets")

TEXTS = ["oh no not again", "fine thanks", "he said stop twice", "yes", "what a day", "never mind"]


@pytest.fixture(scope="module")
def clips(tmp_path_factory):
    """Six spoken sentences, s0.wav .. s5.wav (espeak-ng + sox), at several sample rates."""
    from pipeline.testing.samples import synthesize

    d = tmp_path_factory.mktemp("clips")
    return [
        synthesize(t, d / f"s{i}.wav", pitch=30 + 10 * i, sample_rate=(16000, 22050)[i % 2])
        for i, t in enumerate(TEXTS)
    ]


def audio_dataset(clips, **extra):
    ds = datasets.Dataset.from_dict(
        {
            "audio": [str(c) for c in clips],
            "text": TEXTS[: len(clips)],
            "emotion": list(range(len(clips))),
            **extra,
        }
    )
    return ds.cast_column("audio", datasets.Audio())


def parquet_shards(folder, out, num_shards):
    """The dataset of a save_to_disk folder written with `to_parquet`, cut into the shards
    save_to_disk cut it into (contiguous), so each file holds the same rows in both forms."""
    ds = datasets.load_from_disk(str(folder))
    out.mkdir()
    for k in range(num_shards):
        ds.shard(num_shards, k, contiguous=True).to_parquet(str(out / f"part-{k}.parquet"))
    return out


def same_rows(got: pa.Table, want: pa.Table, extra: tuple[str, ...] = ()):
    """Equal rows but for the unit names (named after each file) and the columns in `extra`."""
    drop = {"_unit", *extra}
    assert (
        got.drop_columns([c for c in got.column_names if c in drop]).to_pylist()
        == want.drop_columns([c for c in want.column_names if c in drop]).to_pylist()
    )


def test_a_save_to_disk_folder_reads_as_its_parquet(clips, tmp_path):
    """Two shards (num_shards=2) with the audio embedded: the same ids (the Audio struct's path), bytes,
    passthrough columns and unit sizes as `load_from_disk(...).to_parquet(...)` gives."""
    audio_dataset(clips).save_to_disk(str(tmp_path / "ds"), num_shards=2)
    assert sorted(p.name for p in (tmp_path / "ds").glob("*.arrow")) == [
        "data-00000-of-00002.arrow",
        "data-00001-of-00002.arrow",
    ]
    parquet = parquet_shards(tmp_path / "ds", tmp_path / "pq", 2)
    for rows_per_unit, block_rows in ((1000, 1000), (2, 1), (2, 1000)):
        got = read(tmp_path / "ds", rows_per_unit=rows_per_unit, block_rows=block_rows)
        want = read(parquet, rows_per_unit=rows_per_unit, block_rows=block_rows)
        assert got["id"].to_pylist() == [c.name for c in clips]
        assert got["_audio_bytes"].to_pylist() == [c.read_bytes() for c in clips]
        same_rows(got, want)
    # units per file: 3 rows each, cut at 2 rows: 2 + 1 in each shard
    assert read(tmp_path / "ds", rows_per_unit=2)["_unit_rows"].to_pylist() == [2, 2, 1] * 2


def test_counts_and_unit_starts_are_the_same_on_every_run(clips, tmp_path):
    """Resume relies on them: the rows, unit starts and id hashes of each file are the same when the
    folder is counted again (by another process: nothing here depends on this one)."""
    audio_dataset(clips).save_to_disk(str(tmp_path / "ds"), num_shards=2)
    cfg = InputConfig(manifest=str(tmp_path / "ds"), rows_per_unit=2)
    first = [count_rows(s, cfg, Storage()) for s in discover(cfg, Storage())]
    again = [count_rows(s, cfg, Storage()) for s in discover(cfg, Storage())]
    assert [c.rows for c in first] == [3, 3] and [c.starts for c in first] == [(0, 2), (0, 2)]
    assert [(c.rows, c.starts, c.ids.tolist()) for c in first] == [
        (c.rows, c.starts, c.ids.tolist()) for c in again
    ]
    assert [s.key for s in discover(cfg, Storage())] == [s.key for s in discover(cfg, Storage())]


def test_a_cache_file_of_many_record_batches_is_read_from_the_batch_that_holds_a_unit(clips, tmp_path):
    """An `.arrow` file as the `datasets` cache holds it (ArrowWriter, a record batch every 2 rows):
    units of 3 rows start inside batches; each piece reads its own batches and no other."""
    from datasets.arrow_writer import ArrowWriter
    from datasets.table import embed_table_storage

    ds = audio_dataset(clips)
    table = embed_table_storage(ds.data.table)
    path = tmp_path / "cache" / "name-train.arrow"
    path.parent.mkdir()
    with ArrowWriter(path=str(path), features=ds.features, writer_batch_size=2) as w:
        w.write_table(table)
        w.finalize()
    with pa.ipc.open_stream(pa.memory_map(str(path))) as r:
        assert [b.num_rows for b in r] == [2, 2, 2]
    pq.write_table(table, tmp_path / "same.parquet", row_group_size=4)
    for rows_per_unit, block_rows in ((3, 1000), (3, 1), (1, 1)):
        got = read(path, rows_per_unit=rows_per_unit, block_rows=block_rows)
        assert got["id"].to_pylist() == [c.name for c in clips]
        same_rows(got, read(tmp_path / "same.parquet", rows_per_unit=rows_per_unit, block_rows=block_rows))
    # counted, then the first record batch (header and body) overwritten: the pieces of the second unit
    # of 3 rows (rows 4..6: the second and third batches) seek to their batches with the count's
    # index, never scanning or reading the first; the first unit's piece, which needs it, fails
    cfg = InputConfig(manifest=str(path), rows_per_unit=3)
    sources = discover(cfg, Storage())
    counts = [count_rows(s, cfg, Storage()) for s in sources]
    plan = Plan(str(path), sources, [c.rows for c in counts], details=counts)
    with pa.ipc.open_stream(pa.memory_map(str(path))) as r:
        schema_msg, batch_msg = r.schema.serialize(), next(iter(r)).serialize()
    data = bytearray(path.read_bytes())
    lo, hi = len(schema_msg), len(schema_msg) + len(batch_msg)
    assert data[:lo] == schema_msg and data[lo:hi] == batch_msg  # where pyarrow says the batch lies
    data[lo:hi] = b"\xff" * (hi - lo)
    path.write_bytes(bytes(data))
    first, second = plan.pieces(3, None, 1000)
    item = pa.Table.from_pylist([second.item()])
    got = pa.concat_tables(
        read_pieces(item, plan=plan, cfg=cfg, storage=Storage(), skip=None, block_rows=1000)
    )
    assert got["_audio_bytes"].to_pylist() == [c.read_bytes() for c in clips[3:]]
    with pytest.raises((ManifestError, pa.ArrowInvalid)):
        item = pa.Table.from_pylist([first.item()])
        list(read_pieces(item, plan=plan, cfg=cfg, storage=Storage(), skip=None, block_rows=1000))


@pytest.mark.parametrize("kind", ["stream", "file", "legacy stream", "dictionary"])
def test_arrow_ipc_streams_and_files_read_as_their_parquet(tmp_path, kind):
    """Both IPC forms (the stream `datasets` writes; the file, `ARROW1` with a footer), the stream
    written before Arrow 0.15 (no continuation marker), and a dictionary-encoded column (read in
    order). Many record batches; units start inside them."""
    n = 23
    table = pa.table(
        {
            "path": [f"clips/{i}.wav" for i in range(n)],
            "speaker": [f"spk{i % 3}" for i in range(n)],
            "score": [i / 2 for i in range(n)],
        }
    )
    if kind == "dictionary":
        table = table.set_column(1, "speaker", table["speaker"].dictionary_encode())
    opts = pa.ipc.IpcWriteOptions(use_legacy_format=kind == "legacy stream")
    new = pa.ipc.new_file if kind == "file" else pa.ipc.new_stream
    with new(str(tmp_path / "m.arrow"), table.schema, options=opts) as w:
        w.write_table(table, max_chunksize=4)
    pq.write_table(table, tmp_path / "m.parquet")
    for rows_per_unit, block_rows in ((5, 1000), (5, 2), (100, 7)):
        got = read(tmp_path / "m.arrow", rows_per_unit=rows_per_unit, block_rows=block_rows)
        want = read(tmp_path / "m.parquet", rows_per_unit=rows_per_unit, block_rows=block_rows)
        assert got["path"].to_pylist() == [str(tmp_path / f"clips/{i}.wav") for i in range(n)]
        same_rows(got, want)


def test_a_dataset_dict_reads_every_split_with_a_split_column(clips, tmp_path):
    """A DatasetDict folder is read whole, as a folder of Parquet shards of several splits is, each
    row with the split it comes from; `<folder>/<split>` reads one split, without the column."""
    dd = datasets.DatasetDict(
        {"train": audio_dataset(clips[:4]), "test": audio_dataset(clips[4:]).remove_columns("emotion")}
    )
    dd.save_to_disk(str(tmp_path / "dd"))
    assert json.loads((tmp_path / "dd" / "dataset_dict.json").read_text())["splits"] == ["train", "test"]
    wants = {}
    for split in ("train", "test"):
        datasets.load_from_disk(str(tmp_path / "dd" / split)).to_parquet(str(tmp_path / f"{split}.parquet"))
        wants[split] = read(tmp_path / f"{split}.parquet", rows_per_unit=3)
    got = read(tmp_path / "dd", rows_per_unit=3)
    assert got["split"].to_pylist() == ["train"] * 4 + ["test"] * 2
    assert got["id"].to_pylist() == [c.name for c in clips]
    same_rows(got.slice(0, 4), wants["train"], ("split",))
    same_rows(got.slice(4), wants["test"], ("split", "emotion"))
    one = read(tmp_path / "dd" / "test", rows_per_unit=3)
    assert "split" not in one.column_names
    same_rows(one, wants["test"])
    # a dataset's own `split` column is its own: not replaced
    datasets.DatasetDict({"train": audio_dataset(clips[:2], split=["a", "b"])}).save_to_disk(
        str(tmp_path / "own")
    )
    assert read(tmp_path / "own")["split"].to_pylist() == ["a", "b"]


def test_a_dataset_of_paths_without_an_audio_column(clips, tmp_path):
    """No Audio feature: a `path` column (absolute, and relative to the folder), read as the Parquet of
    the same dataset beside it (relative paths resolve against the manifest's folder in both)."""
    ds_dir = tmp_path / "ds"  # the Parquet beside the Arrow files: relative paths resolve alike
    shutil.copy(clips[1], tmp_path / "near.wav")
    paths = [str(clips[0]), "../near.wav", str(clips[2])]
    datasets.Dataset.from_dict({"path": paths, "emotion": ["ang", "hap", "neu"]}).save_to_disk(
        str(ds_dir), num_shards=2
    )
    parquet_shards(ds_dir, ds_dir / "pq", 2)
    for k in range(2):  # moved beside the Arrow files
        (ds_dir / "pq" / f"part-{k}.parquet").rename(ds_dir / f"part-{k}.parquet")
    got = read(ds_dir, rows_per_unit=1)
    assert got["path"].to_pylist() == [str(clips[0]), str(tmp_path / "near.wav"), str(clips[2])]
    assert got["id"].to_pylist() == paths  # the path as written
    same_rows(got, read(f"{ds_dir}/part-*.parquet", rows_per_unit=1))


def test_an_arrow_file_on_a_web_server(clips, tmp_path, http_folder):  # noqa: F811
    """A remote `.arrow` file (read through the store's ranges; this server sends it whole)."""
    root, url = http_folder
    audio_dataset(clips).save_to_disk(str(tmp_path / "ds"))
    shutil.copy(tmp_path / "ds" / "data-00000-of-00001.arrow", root / "train.arrow")
    datasets.load_from_disk(str(tmp_path / "ds")).to_parquet(str(root / "train.parquet"))
    got = read(f"{url}/train.arrow", rows_per_unit=4, block_rows=2)
    assert got["_audio_bytes"].to_pylist() == [c.read_bytes() for c in clips]
    same_rows(got, read(f"{url}/train.parquet", rows_per_unit=4, block_rows=2))


def test_what_is_not_an_arrow_file_is_refused_naming_it(clips, tmp_path):
    """A git-lfs pointer named `.arrow`, a save_to_disk folder whose state.json names a missing file,
    a DatasetDict whose split folder is gone: ManifestErrors naming the file."""
    (tmp_path / "lfs.arrow").write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 9\n")
    with pytest.raises(ManifestError, match=r"lfs.arrow: cannot parse as Arrow IPC"):
        read(tmp_path / "lfs.arrow")
    (tmp_path / "junk.arrow").write_bytes(b"\xff" * 64)  # a continuation marker, then a negative length
    with pytest.raises(
        ManifestError, match=r"junk.arrow: cannot parse as Arrow IPC .*: no message at byte 0"
    ):
        read(tmp_path / "junk.arrow")
    audio_dataset(clips[:2]).save_to_disk(str(tmp_path / "ds"), num_shards=2)
    (tmp_path / "ds" / "data-00001-of-00002.arrow").unlink()
    with pytest.raises(ManifestError, match=r"no such file: .*data-00001-of-00002.arrow"):
        read(tmp_path / "ds")
    datasets.DatasetDict({"train": audio_dataset(clips[:1])}).save_to_disk(str(tmp_path / "dd"))
    shutil.rmtree(tmp_path / "dd" / "train")
    with pytest.raises(ManifestError, match=r"dataset_dict.json names split 'train'"):
        read(tmp_path / "dd")


def test_a_job_on_a_save_to_disk_folder_equals_the_job_on_its_parquet(
    ray_session, tiny_model_dir, clips, tmp_path
):
    """End to end: the embeddings of every row, from the `.arrow` shards, equal those of the
    Parquet route; a rerun finds every unit committed."""
    from pipeline.cli import extract

    from .test_corpora_as_shipped import job

    audio_dataset(clips).save_to_disk(str(tmp_path / "ds"), num_shards=2)
    (tmp_path / "pq").mkdir()
    datasets.load_from_disk(str(tmp_path / "ds")).to_parquet(str(tmp_path / "pq" / "data.parquet"))
    outs = {}
    for name, manifest in (("arrow", tmp_path / "ds"), ("parquet", tmp_path / "pq")):
        cfg, out = job(tmp_path, manifest, tiny_model_dir, name=name)
        assert extract.main(["--config", str(cfg)]) == 0
        rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
        outs[name] = {r["id"]: r for r in rows}
        assert len(outs[name]) == len(rows) == len(clips)
    assert sorted(outs["arrow"]) == sorted(c.name for c in clips)
    for k, row in outs["arrow"].items():
        other = outs["parquet"][k]
        assert row["error"] is None and other["error"] is None, (row["error"], other["error"])
        # equal but for float rounding: the clips are batched with other neighbours (two sources)
        np.testing.assert_allclose(np.array(row["embedding"]), np.array(other["embedding"]), atol=1e-5)
        np.testing.assert_allclose(np.array(row["scores"]), np.array(other["scores"]), atol=1e-5)
        assert (row["text"], row["label"], row["num_frames"]) == (
            other["text"],
            other["label"],
            other["num_frames"],
        )
    cfg, out = job(tmp_path, tmp_path / "ds", tiny_model_dir, name="arrow")
    assert extract.main(["--config", str(cfg)]) == 0
    assert json.loads((out / "_run.json").read_text())["rows"]["skipped"] == len(clips)


def test_ids_repeated_across_a_dataset_dicts_splits_are_refused(clips, tmp_path):
    """Ids are unique across the whole manifest: two splits that hold the same clip name it twice."""
    from pipeline.manifest import check_unique_across

    dd = datasets.DatasetDict({"train": audio_dataset(clips[:2]), "test": audio_dataset(clips[1:3])})
    dd.save_to_disk(str(tmp_path / "dd"))
    cfg = InputConfig(manifest=str(tmp_path / "dd"))
    sources = discover(cfg, Storage())
    counts = [count_rows(s, cfg, Storage()) for s in sources]
    with pytest.raises(ManifestError, match=r"row 2 of .*train.*row 1 of .*test"):
        check_unique_across([s.uri for s in sources], [c.ids for c in counts])


def test_a_dataset_dicts_splits_of_audio_without_names_get_ids_apart(clips, tmp_path):
    """Audio given as bytes without a name: rows are named `<file>:<row>`, and every split of a
    DatasetDict holds a `data-00000-of-00001.arrow`; the ids carry the split's folder, as default ids
    of shards whose names repeat do (they were refused as duplicates)."""
    from pipeline.manifest import check_unique_across

    def unnamed(cs):
        audio = [{"bytes": c.read_bytes(), "path": None} for c in cs]
        return datasets.Dataset.from_dict({"audio": audio}).cast_column("audio", datasets.Audio())

    datasets.DatasetDict({"train": unnamed(clips[:2]), "test": unnamed(clips[2:3])}).save_to_disk(
        str(tmp_path / "dd")
    )
    cfg = InputConfig(manifest=str(tmp_path / "dd"))
    sources = discover(cfg, Storage())
    counts = [count_rows(s, cfg, Storage()) for s in sources]
    check_unique_across([s.uri for s in sources], [c.ids for c in counts])
    name = "data-00000-of-00001.arrow"
    assert read(tmp_path / "dd")["id"].to_pylist() == [f"train/{name}:1", f"train/{name}:2", f"test/{name}:1"]
