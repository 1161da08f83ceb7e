"""Manifests as corpora ship them: formats, folders, globs, Kaldi dirs, Lhotse CutSets, units."""

import gzip
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.manifest import (
    Committed,
    ManifestError,
    Plan,
    Resume,
    count_rows,
    discover,
    read_pieces,
    unit_name,
)
from pipeline.storage import Storage


def done(units):
    """A resume record: unit -> its committed row count, or (row count, error ids)."""
    return Resume({u: Committed(*c) if isinstance(c, tuple) else Committed(c) for u, c in units.items()})


def read(path, skip=None, limit=None, block_rows=1000, storage=None, **kw):
    """Everything the read tasks would produce for `input.manifest: path`, as one table: counted and
    cut into pieces as the job does, each piece read on its own. `skip`: the resume record."""
    cfg = InputConfig(manifest=str(path), **kw)
    storage = storage or Storage()
    sources = discover(cfg, storage)
    details = [count_rows(s, cfg, storage) for s in sources]  # checks, as the job does first
    counts = [min(c.rows, limit) if limit else c.rows for c in details]
    plan = Plan(str(path), sources, counts, details=details)
    tables = []
    for p in plan.pieces(cfg.rows_per_unit, skip, block_rows):
        item = pa.Table.from_pylist([p.item()])  # as the read task gets it
        got = list(read_pieces(item, plan=plan, cfg=cfg, storage=storage, skip=skip, block_rows=block_rows))
        assert p.parts == 1 or len(got) == 1  # a part is one decode block
        tables += got
    return pa.concat_tables(tables, promote_options="permissive")


def test_nemo_csv_with_relative_paths_and_passthrough(tmp_path):
    (tmp_path / "m.csv").write_text(
        "audio_filepath,duration,text,speaker\na/1.wav,1.5,hello,s1\nb/2.flac,2.0,bye,s2\n"
    )
    t = read(tmp_path / "m.csv", id_column="audio_filepath", audio_root="/data")
    assert t["path"].to_pylist() == ["/data/a/1.wav", "/data/b/2.flac"]
    assert t["id"].to_pylist() == ["a/1.wav", "b/2.flac"]
    # without an offset, NeMo's duration is just a column (the whole file is used)
    assert t["offset_s"].to_pylist() == [None, None] and t["duration"].to_pylist() == [1.5, 2.0]
    assert t["text"].to_pylist() == ["hello", "bye"]


def test_jsonl_aliases_resolve_against_manifest_dir(tmp_path):
    rows = [
        {"key": "u1", "source": "x.wav", "emo": "hap"},
        {"key": "u2", "source": "/abs/y.wav", "emo": "sad"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    t = read(tmp_path / "m.jsonl")
    assert t["id"].to_pylist() == ["u1", "u2"]
    assert t["path"].to_pylist() == [str(tmp_path / "x.wav"), "/abs/y.wav"]
    assert t["emo"].to_pylist() == ["hap", "sad"]


def test_wav_scp_tsv_json_parquet(tmp_path):
    (tmp_path / "wav.scp").write_text("u1 /a/1.wav\nu2 /a/my file.wav\n\n")
    assert read(tmp_path / "wav.scp")["path"].to_pylist() == ["/a/1.wav", "/a/my file.wav"]
    (tmp_path / "m.tsv").write_text("utt_id\twav\tlabel\nu1\t/a.wav\tang\n")
    assert read(tmp_path / "m.tsv")["manifest_label"].to_pylist() == ["ang"]
    (tmp_path / "m.json").write_text(json.dumps([{"id": 1, "path": "/a.wav"}, {"id": 2, "path": "/b.wav"}]))
    assert read(tmp_path / "m.json")["id"].to_pylist() == ["1", "2"]
    pq.write_table(pa.table({"id": ["a"], "path": ["/a.wav"], "n": [3]}), tmp_path / "m.parquet")
    assert read(tmp_path / "m.parquet")["n"].to_pylist() == [3]


def test_spans_nemo_offset_duration_and_start_end(tmp_path):
    rows = [
        {"id": "a", "audio_filepath": "/r.wav", "offset": 1.25, "duration": 2.0},
        {"id": "b", "audio_filepath": "/r.wav", "offset": 4.0, "duration": None},
    ]
    (tmp_path / "nemo.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    t = read(tmp_path / "nemo.jsonl")
    assert t["offset_s"].to_pylist() == [1.25, 4.0] and t["_end_s"].to_pylist() == [3.25, None]
    (tmp_path / "se.csv").write_text("id,path,start,end,who\nx,/r.wav,0.5,1.5,s1\n")
    t = read(tmp_path / "se.csv")
    assert (t["offset_s"][0].as_py(), t["_end_s"][0].as_py(), t["who"][0].as_py()) == (0.5, 1.5, "s1")


def test_duplicate_ids_are_refused_naming_one(tmp_path):
    (tmp_path / "m.csv").write_text("id,path\nu1,a.wav\nu2,b.wav\nu1,c.wav\n")
    with pytest.raises(
        ManifestError, match=r"duplicate ids: 1 ids occur more than once, e.g. 'u1' \(2 times\)"
    ):
        read(tmp_path / "m.csv")


def test_duplicate_ids_within_a_file_name_both_rows(tmp_path):
    """The docs promise that a duplicate names its rows (as one across shards does); within one file
    the message named only the id, so a user of a big manifest had to search for it. A NeMo manifest
    without ids that names the same clip twice is the common case (default ids are the paths)."""
    rows = [{"audio_filepath": f"c{i}.wav"} for i in range(5)] + [{"audio_filepath": "c1.wav"}]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.raises(
        ManifestError, match=r"m.jsonl: duplicate ids: .*'c1.wav' \(2 times\), at rows 2 and 6;"
    ):
        read(tmp_path / "m.jsonl")
    pq.write_table(pa.table({"id": ["a", "b", "c", "b"], "path": ["x.wav"] * 4}), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"m.parquet: duplicate ids: .*'b' \(2 times\), at rows 2 and 4;"):
        read(tmp_path / "m.parquet")
    kaldi = tmp_path / "kaldi"
    kaldi.mkdir()
    (kaldi / "wav.scp").write_text("r1 /r1.wav\n")
    (kaldi / "segments").write_text("u1 r1 0 1\nu2 r1 1 2\nu1 r1 2 3\n")
    with pytest.raises(ManifestError, match=r"duplicate ids: .*'u1' \(2 times\), at rows 1 and 3;"):
        read(kaldi)


def test_missing_columns_and_files(tmp_path):
    (tmp_path / "m.csv").write_text("name,file\nu1,a.wav\n")
    with pytest.raises(ManifestError, match="no path column"):
        read(tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="input.id_column='utt' is not a column"):
        read(tmp_path / "m.csv", id_column="utt", path_column="file")
    with pytest.raises(ManifestError, match="input.path_column='wav' is not a column"):
        read(tmp_path / "m.csv", id_column="name", path_column="wav")
    with pytest.raises(ManifestError, match="no such file"):
        read(tmp_path / "missing.jsonl")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match="set input.format"):
        read(tmp_path / "m.txt")


def test_glob_and_directory_of_shards_read_as_one_manifest(tmp_path):
    d = tmp_path / "manifests"
    d.mkdir()
    for k in range(3):
        (d / f"part-{k}.jsonl").write_text(
            "".join(json.dumps({"id": f"s{k}-{i}", "path": f"/a/{k}/{i}.wav"}) + "\n" for i in range(4))
        )
    (d / "_SUCCESS").write_text("")  # hidden/marker files are not manifests
    want = sorted(f"s{k}-{i}" for k in range(3) for i in range(4))
    assert sorted(read(d / "part-*.jsonl")["id"].to_pylist()) == want
    assert sorted(read(d)["id"].to_pylist()) == want
    (d / "extra.csv").write_text("id,path\nz,/z.wav\n")
    with pytest.raises(ManifestError, match="several formats"):
        read(d)


def test_a_name_with_glob_characters_that_exists_is_read_as_named(tmp_path):
    """`Session [1]/` is a folder, not a glob matching `Session 1/`: where the pattern matches
    nothing and a file or folder of that very name exists, that is what is read. A pattern that
    matches stays a glob."""
    d = tmp_path / "Session [1]"
    d.mkdir()
    (d / "m.jsonl").write_text('{"id": "a", "path": "a.wav"}\n')
    (d / "take [2].wav").write_bytes(b"")
    assert read(d / "m.jsonl")["path"].to_pylist() == [str(d / "a.wav")]
    [source] = discover(InputConfig(manifest=str(d / "take [2].wav")), Storage())
    assert source.audio["path"].to_pylist() == [str(d / "take [2].wav")]
    with pytest.raises(ManifestError, match="mixes manifests"):  # the folder, listed
        discover(InputConfig(manifest=str(d)), Storage())
    (tmp_path / "Session 1").mkdir()
    (tmp_path / "Session 1" / "n.jsonl").write_text('{"id": "b", "path": "b.wav"}\n')
    assert read(d / "m.jsonl")["id"].to_pylist() == ["a"]  # nothing named `Session 1/m.jsonl`
    assert read(tmp_path / "Session [1]" / "*.jsonl")["id"].to_pylist() == ["b"]  # a glob that matches
    with pytest.raises(ManifestError, match="no files match"):
        discover(InputConfig(manifest=str(tmp_path / "Session [3]")), Storage())


def test_folder_of_audio_is_a_manifest_ids_relative_without_extension(tmp_path):
    for rel in ("speaker_a/take0.wav", "speaker_a/take1.mp4", "speaker_b/x.flac"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    t = read(tmp_path)
    assert sorted(t["id"].to_pylist()) == ["speaker_a/take0", "speaker_a/take1", "speaker_b/x"]
    assert str(tmp_path / "speaker_b/x.flac") in t["path"].to_pylist()
    (tmp_path / "m.jsonl").write_text('{"id": "a", "path": "a.wav"}\n')
    with pytest.raises(ManifestError, match="mixes manifests"):
        read(tmp_path)


def test_a_folder_named_by_a_percent_encoded_file_uri_reads_as_the_folder_itself(tmp_path):
    """`input.manifest: file:///.../My%20Corpus` (pathlib's `as_uri()`) is the folder `My Corpus`: the
    same ids and paths as naming the folder by its path; a manifest's relative paths resolve beside it."""
    root = tmp_path / "My Corpus"
    for rel in ("spk 1/a.wav", "spk 2/b.flac"):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(b"")
    by_uri, by_path = read(root.as_uri()), read(root)
    assert "%20" in root.as_uri()
    assert sorted(by_uri["id"].to_pylist()) == ["spk 1/a", "spk 2/b"] == sorted(by_path["id"].to_pylist())
    assert sorted(by_uri["path"].to_pylist()) == sorted(by_path["path"].to_pylist())
    lists = tmp_path / "lists 1"
    lists.mkdir()
    (lists / "m.jsonl").write_text('{"id": "u1", "path": "../My Corpus/spk 1/a.wav"}\n')
    t = read((lists / "m.jsonl").as_uri())
    assert t["path"].to_pylist() == [str(root / "spk 1" / "a.wav")]


def test_kaldi_data_dir_with_segments_speakers_and_text(tmp_path):
    (tmp_path / "wav.scp").write_text("rec1 /audio/rec1.wav\nrec2 sox /x.wav -t wav - speed 1.1 |\n")
    (tmp_path / "segments").write_text("u1 rec1 0.50 1.75\nu2 rec1 2.0 -1\nu3 rec2 0 1\n")
    (tmp_path / "utt2spk").write_text("u1 alice\nu2 bob\nu3 carol\n")
    (tmp_path / "text").write_text("u1 hello there\nu2 bye\n")
    t = read(tmp_path)
    assert t["id"].to_pylist() == ["u1", "u2", "u3"]
    assert t["recording_id"].to_pylist() == ["rec1", "rec1", "rec2"]
    assert t["offset_s"].to_pylist() == [0.5, 2.0, 0.0] and t["_end_s"].to_pylist() == [1.75, None, 1.0]
    assert t["speaker"].to_pylist() == ["alice", "bob", "carol"]
    assert t["text"].to_pylist() == ["hello there", "bye", None]
    assert t["path"][0].as_py() == "/audio/rec1.wav" and "pipe command" in t["_input_error"][2].as_py()


def test_a_kaldi_dir_with_reco2file_and_channel_analyses_each_side_of_a_call_alone(tmp_path):
    """Switchboard-style dirs name each side of a stereo call as a recording (`sw1-A`, `sw1-B`) of one
    file; without reading `reco2file_and_channel` both sides were analysed on the mix and came out
    identical. A file whose recordings all name one side (`A`, as recipes write for mono audio) and a
    recording the file does not list stay on the mix; numbered sides count from 1 (from 0 if a file's
    recordings use 0)."""
    (tmp_path / "wav.scp").write_text(
        "sw1-A /a/sw1.wav\nsw1-B /a/sw1.wav\nmono /a/m.wav\nn-1 /a/n.wav\nn-2 /a/n.wav\nz-0 /a/z.wav\n"
        "z-1 /a/z.wav\nother /a/o.wav\n"
    )
    (tmp_path / "segments").write_text(
        "u1 sw1-A 0 1\nu2 sw1-B 0 1\nu3 mono 0 1\nu4 n-1 0 1\nu5 n-2 0 1\nu6 z-0 0 1\nu7 z-1 0 1\nu8 other 0 1\n"
    )
    (tmp_path / "reco2file_and_channel").write_text(
        "sw1-A sw1 A\nsw1-B sw1 B\nmono m A\nn-1 n 1\nn-2 n 2\nz-0 z 0\nz-1 z 1\n"
    )
    t = read(tmp_path)
    assert t["id"].to_pylist() == [f"u{i}" for i in range(1, 9)]
    assert t["_channel"].to_pylist() == [0, 1, None, 0, 1, 0, 1, None]
    assert "reco2file_and_channel" not in t.column_names and "and_channel" not in t.column_names
    (tmp_path / "reco2file_and_channel").write_text("sw1-A sw1\n")
    with pytest.raises(ManifestError, match="reco2file_and_channel: entry 1: expected"):
        read(tmp_path)


def test_lhotse_cutset_written_by_lhotse(tmp_path):
    lhotse = pytest.importorskip("lhotse")
    rec = lhotse.Recording(
        id="rec1",
        sources=[lhotse.audio.AudioSource(type="file", channels=[0], source="/audio/rec1.wav")],
        sampling_rate=16000,
        num_samples=16000 * 10,
        duration=10.0,
    )
    sups = [
        lhotse.SupervisionSegment(
            id="s1", recording_id="rec1", start=1.0, duration=2.0, speaker="A", text="hi"
        ),
        lhotse.SupervisionSegment(
            id="s2", recording_id="rec1", start=4.5, duration=1.5, speaker="B", custom={"emotion": "sad"}
        ),
    ]
    cuts = lhotse.CutSet.from_manifests(
        recordings=lhotse.RecordingSet.from_recordings([rec]),
        supervisions=lhotse.SupervisionSet.from_segments(sups),
    )
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    t = read(tmp_path / "cuts.jsonl.gz")
    assert t["id"].to_pylist() == ["s1", "s2"]
    assert t["offset_s"].to_pylist() == [1.0, 4.5] and t["_end_s"].to_pylist() == [3.0, 6.0]
    assert t["speaker"].to_pylist() == ["A", "B"] and t["recording_id"].to_pylist() == ["rec1", "rec1"]
    assert json.loads(t["custom"][1].as_py()) == {"emotion": "sad"}
    # a cut without supervisions is one row, named by the cut
    line = json.loads(gzip.decompress((tmp_path / "cuts.jsonl.gz").read_bytes()).splitlines()[0])
    line["supervisions"], line["id"] = [], "whole-cut"
    (tmp_path / "bare_cuts.jsonl").write_text(json.dumps(line) + "\n")
    t = read(tmp_path / "bare_cuts.jsonl")
    assert t["id"].to_pylist() == ["whole-cut"] and t["path"].to_pylist() == ["/audio/rec1.wav"]


def test_units_cut_rows_and_resume_skips_done_units_and_redoes_error_ids(tmp_path):
    (tmp_path / "m.jsonl").write_text(
        "".join(json.dumps({"id": f"u{i:02d}", "path": f"/a/{i}.wav"}) + "\n" for i in range(10))
    )
    t = read(tmp_path / "m.jsonl", rows_per_unit=4)
    units = t["_unit"].to_pylist()
    assert len(set(units)) == 3 and units.count(units[0]) == 4 and units.count(units[-1]) == 2
    assert t["_unit_rows"].to_pylist() == [4] * 8 + [2] * 2
    first, second, last = sorted(set(units))
    again = read(tmp_path / "m.jsonl", rows_per_unit=4, skip=done({first: 4, second: (4, {"u05"}), last: 3}))
    # done unit skipped; only the error id of the second redone; the last unit changed size: redone
    assert again["id"].to_pylist() == ["u05", "u08", "u09"]
    assert again["_unit_rows"].to_pylist() == [1, 2, 2]


def test_a_save_to_disk_folder_is_read_and_an_arrow_file_that_is_not_one_is_refused(tmp_path):
    """A dataset kept with `datasets`' save_to_disk (`.arrow` files that `state.json` lists) was refused
    with advice to write Parquet: it is read as its Parquet would be (tests/test_hf_arrow.py). A file
    named `.arrow` that is no Arrow IPC (a git-lfs pointer) is refused naming it, and says what it
    expected, not to set input.format."""
    datasets = pytest.importorskip("datasets")
    datasets.Dataset.from_dict({"id": ["a"], "path": ["a.wav"]}).save_to_disk(str(tmp_path / "ds"))
    t = read(tmp_path / "ds")
    assert t["id"].to_pylist() == ["a"] and t["path"].to_pylist() == [str(tmp_path / "ds" / "a.wav")]
    (tmp_path / "x.arrow").write_text("version https://git-lfs.github.com/spec/v1\n")
    with pytest.raises(ManifestError, match=r"x.arrow: cannot parse as Arrow IPC .*Hugging Face") as e:
        read(tmp_path / "x.arrow")
    assert "set input.format" not in str(e.value)


def test_a_json_lines_error_names_the_line_from_1(tmp_path):
    """Arrow's JSON errors say "in row N", counted from 0 within its read block: the 3rd line was "row 2"
    (and in a file of many blocks, a row of some block). The message names the file's line, from 1 as
    every other manifest message, and the column whose type changed."""
    rows = ['{"id": "a", "path": "a.wav", "spk": 7}', '{"id": "b", "path": "b.wav"}']
    (tmp_path / "types.jsonl").write_text(
        "\n".join([*rows, '{"id": "c", "path": "c.wav", "spk": "f3"}']) + "\n"
    )
    with pytest.raises(
        ManifestError, match=r"types.jsonl: line 3: column 'spk' is a string here but a number"
    ):
        read(tmp_path / "types.jsonl")
    (tmp_path / "cut.jsonl").write_text("\n".join([*rows, '{"id": "c", "path": "c.wav"', rows[0]]) + "\n")
    with pytest.raises(ManifestError, match=r"cut.jsonl: line 3: not JSON"):
        read(tmp_path / "cut.jsonl")


def test_hf_parquet_with_embedded_audio_bytes(tmp_path):
    datasets = pytest.importorskip("datasets")
    from datasets.table import embed_table_storage

    wav = tmp_path / "a.wav"
    import numpy as np
    import soundfile as sf

    sf.write(wav, np.zeros(1600, np.float32), 16000)
    ds = datasets.Dataset.from_dict({"id": ["a", "b"], "audio": [str(wav), str(wav)], "emotion": ["x", "y"]})
    ds = ds.cast_column("audio", datasets.Audio())
    pq.write_table(embed_table_storage(ds.data.table), tmp_path / "train-00000.parquet")
    t = read(tmp_path / "train-00000.parquet")
    assert t["_audio_bytes"][0].as_py() == wav.read_bytes()
    assert t["emotion"].to_pylist() == ["x", "y"] and t["path"][0].as_py().endswith("a.wav")


def test_nemo_json_named_manifest_holding_json_lines(tmp_path):
    rows = [{"audio_filepath": "/a/1.wav", "duration": 1.0, "text": "x", "utt_id": "u1"}]
    (tmp_path / "train_manifest.json").write_text("".join(json.dumps(r) + "\n" for r in rows * 1))
    t = read(tmp_path / "train_manifest.json")
    assert t["id"].to_pylist() == ["u1"] and t["path"].to_pylist() == ["/a/1.wav"]


# -- pieces: one manifest read by many tasks -------------------------------------------------------


def _jsonl_rows(n, **extra):
    return [
        {"id": f"u{i:05d}", "path": f"/a/{i}.wav", **{k: f(i) for k, f in extra.items()}} for i in range(n)
    ]


def _pieces(path, **kw):
    cfg = InputConfig(manifest=str(path), **kw)
    storage = Storage()
    (source,) = discover(cfg, storage)
    count = count_rows(source, cfg, storage)
    return Plan(str(path), [source], [count.rows], details=[count]).pieces(cfg.rows_per_unit), count


@pytest.mark.parametrize("fmt", ["jsonl", "csv", "tsv", "scp"])
def test_a_line_manifest_is_read_in_pieces_that_together_give_every_row_once_in_order(tmp_path, fmt):
    rows = _jsonl_rows(2500)
    path = tmp_path / f"m.{fmt}"
    if fmt == "jsonl":
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    elif fmt == "scp":
        path.write_text("".join(f"{r['id']} {r['path']}\n" for r in rows))
    else:
        sep = "," if fmt == "csv" else "\t"
        path.write_text("id" + sep + "path\n" + "".join(f"{r['id']}{sep}{r['path']}\n" for r in rows))
    pieces, count = _pieces(path, rows_per_unit=1000)
    assert count.rows == 2500 and len(pieces) == 3
    assert [p.start is not None for p in pieces] == [True] * 3  # byte ranges, not the whole file each
    t = read(path, rows_per_unit=1000)
    assert t["id"].to_pylist() == [r["id"] for r in rows]
    assert t["path"].to_pylist() == [r["path"] for r in rows]
    assert [t["_unit"].to_pylist().count(u) for u in dict.fromkeys(t["_unit"].to_pylist())] == [
        1000,
        1000,
        500,
    ]


def test_a_piece_parses_its_columns_with_the_types_of_the_whole_file(tmp_path):
    # "score" is null in the first 1000 rows: parsed alone, that piece would type it null
    rows = _jsonl_rows(2000, score=lambda i: None if i < 1000 else i / 2, speaker=lambda i: f"s{i % 3}")
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    pieces, count = _pieces(tmp_path / "m.jsonl", rows_per_unit=1000)
    assert len(pieces) == 2
    t = read(tmp_path / "m.jsonl", rows_per_unit=1000)
    assert t.schema.field("score").type == pa.float64()
    assert t["score"].to_pylist() == [r["score"] for r in rows]


@pytest.mark.parametrize("form", ["blank_lines", "gzip", "quoted_newline"])
def test_a_manifest_whose_lines_are_not_its_rows_is_read_whole(tmp_path, form):
    rows = _jsonl_rows(30)
    if form == "blank_lines":
        path = tmp_path / "m.jsonl"
        path.write_text("".join(json.dumps(r) + "\n\n" for r in rows))
    elif form == "gzip":
        path = tmp_path / "m.jsonl.gz"
        path.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    else:
        path = tmp_path / "m.csv"
        path.write_text("id,path,text\n" + "".join(f'{r["id"]},{r["path"]},"two\nlines"\n' for r in rows))
    pieces, _ = _pieces(path, rows_per_unit=10)
    assert len(pieces) == 1 and pieces[0].start is None and pieces[0].units == 3
    t = read(path, rows_per_unit=10)
    assert t["id"].to_pylist() == [r["id"] for r in rows]
    assert t["_unit_rows"].to_pylist() == [10] * 30


def test_a_parquet_manifest_is_read_in_pieces_across_row_groups(tmp_path):
    rows = _jsonl_rows(2300, emo=lambda i: f"e{i % 4}")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "m.parquet", row_group_size=700)
    pieces, _ = _pieces(tmp_path / "m.parquet", rows_per_unit=500)
    assert [(p.first_row, p.rows) for p in pieces] == [
        (0, 500),
        (500, 500),
        (1000, 500),
        (1500, 500),
        (2000, 300),
    ]
    t = read(tmp_path / "m.parquet", rows_per_unit=500)
    assert t["id"].to_pylist() == [r["id"] for r in rows]
    assert t["emo"].to_pylist() == [r["emo"] for r in rows]


def test_pieces_leave_out_committed_units_and_respect_the_limit(tmp_path):
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _jsonl_rows(45)))
    pieces, count = _pieces(tmp_path / "m.jsonl", rows_per_unit=10)
    assert count.rows == 45 and [p.first_unit for p in pieces] == [0, 1, 2, 3, 4]
    key = discover(InputConfig(manifest=str(tmp_path / "m.jsonl")), Storage())[0].key
    units = [unit_name(key, u) for u in range(5)]
    # units 0 and 1 committed whole, unit 2 with an error row, unit 4 committed with 5 rows (it has 5)
    t = read(
        tmp_path / "m.jsonl",
        rows_per_unit=10,
        skip=done({units[0]: 10, units[1]: 10, units[2]: (10, {"u00021"}), units[4]: 5}),
    )
    assert t["id"].to_pylist() == ["u00021"] + [f"u{i:05d}" for i in range(30, 40)]
    # input.limit: 23 rows -> units of 10, 10, 3; the last piece stops at the limit
    t = read(tmp_path / "m.jsonl", rows_per_unit=10, limit=23)
    assert t["id"].to_pylist() == [f"u{i:05d}" for i in range(23)]
    assert t["_unit_rows"].to_pylist()[-3:] == [3, 3, 3]


def test_a_unit_done_whole_is_read_as_one_piece_per_decode_block(tmp_path):
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in _jsonl_rows(25)))
    cfg = InputConfig(manifest=str(tmp_path / "m.jsonl"), rows_per_unit=10)
    storage = Storage()
    (source,) = discover(cfg, storage)
    count = count_rows(source, cfg, storage)
    plan = Plan("m", [source], [25], details=[count])
    unit1 = unit_name(source.key, 1)
    pieces = plan.pieces(10, done({unit1: (10, {"u00013"})}), block_rows=4)
    # units 0 and 2 fresh: blocks of 4 rows (4+4+2, 4+1); unit 1 redoes an error id: one piece
    assert [(p.first_unit, p.part, p.parts) for p in pieces] == [
        (0, 0, 3),
        (0, 1, 3),
        (0, 2, 3),
        (1, 0, 1),
        (2, 0, 2),
        (2, 1, 2),
    ]
    t = read(tmp_path / "m.jsonl", rows_per_unit=10, block_rows=4, skip=done({unit1: (10, {"u00013"})}))
    assert t["id"].to_pylist() == [f"u{i:05d}" for i in range(10)] + ["u00013"] + [
        f"u{i:05d}" for i in range(20, 25)
    ]
    assert t["_unit_rows"].to_pylist() == [10] * 10 + [1] + [5] * 5
    # Parquet parts read only their rows
    pq.write_table(pa.Table.from_pylist(_jsonl_rows(25)), tmp_path / "m.parquet", row_group_size=3)
    t = read(tmp_path / "m.parquet", rows_per_unit=10, block_rows=4)
    assert t["id"].to_pylist() == [f"u{i:05d}" for i in range(25)]


def test_tsv_has_no_quoting_and_a_row_count_that_disagrees_with_the_lines_is_an_error(tmp_path):
    lines = ["id\tpath\ttext", 'u1\ta.wav\t"Oh no, not again', "u2\tb.wav\tfine", 'u3\tc.wav\the said "stop"']
    (tmp_path / "m.tsv").write_text("\n".join(lines) + "\n")
    t = read(tmp_path / "m.tsv", rows_per_unit=1, block_rows=1)
    assert t["id"].to_pylist() == ["u1", "u2", "u3"]
    assert t["text"].to_pylist() == ['"Oh no, not again', "fine", 'he said "stop"']
    # a lone CR ends a row for the parser but not a line: rows and lines disagree
    (tmp_path / "cr.tsv").write_bytes(b"id\tpath\nu1\ta.wav\ru2\tb.wav\n")
    with pytest.raises(ManifestError, match=r"cr.tsv: 2 rows parsed from 1 data lines"):
        read(tmp_path / "cr.tsv")


TEXT_FORMS = ["scp", "jsonl", "json", "csv", "tsv", "kaldi", "rttm", "nemo-rttm", "lhotse"]


@pytest.mark.parametrize("form", TEXT_FORMS)
def test_byte_order_marks_and_crlf_are_stripped(tmp_path, form):
    """Every text manifest format, saved by a Windows editor (a UTF-8 BOM, CRLF line ends): the first
    row is read like the others (a BOM glued to it must not drop it or rename its id)."""
    bom = b"\xef\xbb\xbf"
    turns = "SPEAKER u1 1 0.000 1.000 <NA> <NA> A <NA> <NA>\nSPEAKER u2 1 0.500 1.000 <NA> <NA> B <NA> <NA>\n"
    body = {
        "scp": "u1 /a/1.wav\nu2 /a/2.wav\n",
        "jsonl": '{"id": "u1", "path": "/a/1.wav"}\n{"id": "u2", "path": "/a/2.wav"}\n',
        "json": '[{"id": "u1", "path": "/a/1.wav"},\n {"id": "u2", "path": "/a/2.wav"}]\n',
        "csv": "id,path\nu1,/a/1.wav\nu2,/a/2.wav\n",
        "tsv": "id\tpath\nu1\t/a/1.wav\nu2\t/a/2.wav\n",
        "rttm": turns,
        "nemo-rttm": '{"audio_filepath": "/a/1.wav", "rttm_filepath": "one.rttm"}\n',
    }

    def windows(name: str, content: str) -> None:
        (tmp_path / name).write_bytes(bom + content.replace("\n", "\r\n").encode())

    ids, kw = ["u1", "u2"], {}
    if form == "kaldi":
        windows("wav.scp", body["scp"])
        windows("utt2spk", "u1 alice\nu2 bob\n")
        where = tmp_path
    elif form == "rttm":  # turns found through a wav.scp beside, saved the same way
        windows("calls.rttm", turns)
        windows("wav.scp", body["scp"])
        where, ids = tmp_path / "calls.rttm", ["u1_A_0000000", "u2_B_0000500"]
    elif form == "nemo-rttm":  # a NeMo diarisation manifest and the RTTM it names
        windows("one.rttm", turns.replace("u2", "u1"))
        windows("diar.json", body[form])
        where, ids, kw = tmp_path / "diar.json", ["u1_A_0000000", "u1_B_0000500"], {"format": "rttm"}
    elif form == "lhotse":
        lhotse = pytest.importorskip("lhotse")
        cuts = []
        for k in ("1", "2"):
            source = lhotse.audio.AudioSource(type="file", channels=[0], source=f"/a/{k}.wav")
            rec = lhotse.Recording(f"r{k}", [source], 16000, 16000, 1.0)
            cuts.append(lhotse.MonoCut(f"u{k}", 0.0, 1.0, 0, recording=rec))
        lhotse.CutSet.from_cuts(cuts).to_file(tmp_path / "plain_cuts.jsonl")
        windows("cuts.jsonl", (tmp_path / "plain_cuts.jsonl").read_text())
        (tmp_path / "plain_cuts.jsonl").unlink()
        where = tmp_path / "cuts.jsonl"
    else:
        where = tmp_path / {"scp": "wav.scp"}.get(form, f"m.{form}")
        windows(where.name, body[form])
    assert where.is_dir() or where.read_bytes().startswith(bom)
    t = read(where, rows_per_unit=1, block_rows=1, **kw)
    assert t["id"].to_pylist() == ids
    assert t["path"].to_pylist() == ["/a/1.wav", "/a/1.wav" if form == "nemo-rttm" else "/a/2.wav"]
    if form == "kaldi":
        assert t["speaker"].to_pylist() == ["alice", "bob"]


def test_same_stem_in_an_audio_folder_keeps_the_extension_in_both_ids(tmp_path):
    for rel in ("take1.wav", "take1.flac", "take2.wav", "sub/take1.wav"):
        (tmp_path / rel).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / rel).write_bytes(b"")
    t = read(tmp_path)
    assert sorted(t["id"].to_pylist()) == ["sub/take1", "take1.flac", "take1.wav", "take2"]


def test_duplicate_ids_across_shards_name_both_files_and_rows(tmp_path):
    from pipeline.manifest import check_unique_across

    for k, ids in enumerate((["a", "b", "x"], ["c", "x"])):
        (tmp_path / f"part-{k}.jsonl").write_text(
            "".join(json.dumps({"id": i, "path": "/p.wav"}) + "\n" for i in ids)
        )
    cfg = InputConfig(manifest=str(tmp_path))
    sources = discover(cfg, Storage())
    counts = [count_rows(s, cfg, Storage()) for s in sources]
    with pytest.raises(
        ManifestError, match=r"row 3 of .*part-0.jsonl and row 2 of .*part-1.jsonl have the same id"
    ):
        check_unique_across([s.uri for s in sources], [c.ids for c in counts])
    check_unique_across([sources[0].uri], [counts[0].ids])  # one file: its own check is enough


def test_hf_shard_without_an_id_column_gets_default_ids_and_prefers_the_bytes(tmp_path):
    audio = pa.array(
        [
            {"bytes": b"RIFF0", "path": "clip0.wav"},
            {"bytes": None, "path": None},
            {"bytes": b"RIFF2", "path": None},
        ],
        pa.struct([("bytes", pa.binary()), ("path", pa.string())]),
    )
    paths = ["common_voice_en_0.mp3", "common_voice_en_1.mp3", ""]
    pq.write_table(
        pa.table({"path": paths, "audio": audio, "sentence": ["a", "b", "c"]}), tmp_path / "cv.parquet"
    )
    for block_rows in (1, 100):
        t = read(tmp_path / "cv.parquet", rows_per_unit=2, block_rows=block_rows)
        # the struct's path, else the path column, else file:row
        assert t["id"].to_pylist() == ["clip0.wav", "common_voice_en_1.mp3", "cv.parquet:3"]
        assert t["_audio_bytes"].to_pylist() == [b"RIFF0", None, b"RIFF2"]
        # a row without bytes is fetched from the path the manifest gives
        assert t["path"].to_pylist() == ["clip0.wav", str(tmp_path / "common_voice_en_1.mp3"), None]
        assert t["manifest_path"].to_pylist() == paths
    (tmp_path / "m.jsonl").write_text('{"path": "a/1.wav"}\n{"path": "b/2.wav"}\n')
    assert read(tmp_path / "m.jsonl")["id"].to_pylist() == ["a/1.wav", "b/2.wav"]


# -- diariser output and manifests that name their audio by columns -------------------------------


RTTM = (
    "SPEAKER call-1 1 0.500 2.000 <NA> <NA> A <NA> <NA>\n"
    "SPEAKER call-1 1 2.000 1.000 <NA> <NA> B <NA> <NA>\n"
    "SPEAKER call-2 1 0.000 1.000 <NA> <NA> A <NA> <NA>\n"
    "SPEAKER lost 1 0.000 1.000 <NA> <NA> A <NA> <NA>\n"
    "SPEAKER twice 1 0.000 1.000 <NA> <NA> A <NA> <NA>\n"
)


def test_rttm_turns_find_their_audio_by_file_id_under_the_audio_root(tmp_path):
    (tmp_path / "audio").mkdir()
    for name in ("call-1.wav", "call-2.mp3", "twice.wav", "twice.flac", "notes.txt"):
        (tmp_path / "audio" / name).write_bytes(b"")
    (tmp_path / "calls.rttm").write_text(RTTM)
    t = read(tmp_path / "calls.rttm", audio_root=str(tmp_path / "audio")).to_pylist()
    got = {r["id"]: r for r in t}
    assert [r["id"] for r in t] == [
        "call-1_A_0000500", "call-1_B_0002000", "call-2_A_0000000", "lost_A_0000000", "twice_A_0000000"
    ]  # fmt: skip
    one = got["call-1_A_0000500"]
    assert (one["recording_id"], one["speaker"], one["offset_s"], one["_end_s"]) == ("call-1", "A", 0.5, 2.5)
    assert one["overlap_s"] == pytest.approx(0.5) and got["call-1_B_0002000"]["overlap_s"] == pytest.approx(
        0.5
    )
    assert one["path"] == str(tmp_path / "audio" / "call-1.wav") and one["_input_error"] is None
    assert got["call-2_A_0000000"]["path"].endswith("call-2.mp3")
    assert "no audio file lost.*" in got["lost_A_0000000"]["_input_error"]
    assert "(twice.flac and twice.wav); keep one" in got["twice_A_0000000"]["_input_error"]


def _turns(recording: str, n: int) -> str:
    return "".join(f"SPEAKER {recording} 1 {k:.3f} 0.500 <NA> <NA> S{k % 2} <NA> <NA>\n" for k in range(n))


def _rttm_plan(tmp_path, sizes: dict[str, int], rows_per_unit: int):
    """`all.rttm` with `sizes[rec]` turns of each recording (empty audio files beside it), counted and
    planned as the job does -> (cfg, storage, source, plan)."""
    (tmp_path / "audio").mkdir()
    for rec in sizes:
        (tmp_path / "audio" / f"{rec}.wav").write_bytes(b"")
    (tmp_path / "all.rttm").write_text("".join(_turns(r, n) for r, n in sizes.items()))
    cfg = InputConfig(
        manifest=str(tmp_path / "all.rttm"), audio_root=str(tmp_path / "audio"), rows_per_unit=rows_per_unit
    )
    storage = Storage()
    (source,) = discover(cfg, storage)
    count = count_rows(source, cfg, storage)
    return cfg, storage, source, Plan("m", [source], [count.rows], details=[count])


def test_rttm_decode_blocks_hold_whole_recordings_so_each_is_decoded_once(tmp_path):
    # a decode task decodes each file once for the turns it holds: blocks of rows cut anywhere (every
    # 256 rows) decoded a recording once per block it reached, a 1-hour meeting 3-4 times
    sizes = {"a": 100, "b": 100, "c": 100, "long": 300, "d": 30}
    cfg, storage, _, plan = _rttm_plan(tmp_path, sizes, rows_per_unit=250)
    pieces = plan.pieces(cfg.rows_per_unit, None, 256)
    assert not plan.needs_recut(pieces, 256)  # Ray's row-count re-cut would split recordings again
    blocks = []
    for p in pieces:
        item = pa.Table.from_pylist([p.item()])
        (got,) = read_pieces(item, plan=plan, cfg=cfg, storage=storage, skip=None, block_rows=256)
        blocks.append(got)
    where: dict[str, set[int]] = {}
    for k, b in enumerate(blocks):
        for rec in b["recording_id"].to_pylist():
            where.setdefault(rec, set()).add(k)
    assert {rec: len(ks) for rec, ks in where.items()} == dict.fromkeys(sizes, 1)  # one block each
    for b in blocks:  # at most 256 rows, or one recording that has more
        assert b.num_rows <= 256 or len(set(b["recording_id"].to_pylist())) == 1
    ids = [i for b in blocks for i in b["id"].to_pylist()]
    whole = read(tmp_path / "all.rttm", audio_root=str(tmp_path / "audio"), block_rows=10**6)
    assert sorted(ids) == sorted(whole["id"].to_pylist()) and len(ids) == sum(sizes.values())
    units = {u for b in blocks for u in b["_unit"].to_pylist()}
    for b in blocks:  # each block tells the writer its whole unit's rows
        (unit,) = set(b["_unit"].to_pylist())
        assert b["_unit_rows"][0].as_py() == sum(x.num_rows for x in blocks if x["_unit"][0].as_py() == unit)
    assert len(units) == 3  # whole recordings (in file-id order) of at most 250 rows: a+b, c+d, long


def test_rttm_blocks_of_a_rerun_redo_only_the_error_rows_of_their_unit(tmp_path):
    (tmp_path / "audio").mkdir()
    for rec in ("a", "b"):
        (tmp_path / "audio" / f"{rec}.wav").write_bytes(b"")
    (tmp_path / "all.rttm").write_text(_turns("a", 6) + _turns("b", 5))
    kw = {"audio_root": str(tmp_path / "audio"), "rows_per_unit": 6}
    first = read(tmp_path / "all.rttm", block_rows=4, **kw)
    units = first["_unit"].to_pylist()
    assert units[:6] == [units[0]] * 6 and units[6:] == [units[6]] * 5  # a recording per unit
    redo = first["id"][7].as_py()  # b's second turn was an error row
    t = read(tmp_path / "all.rttm", block_rows=4, skip=done({units[0]: 6, units[6]: (5, {redo})}), **kw)
    assert t["id"].to_pylist() == [redo] and t["_unit_rows"].to_pylist() == [1]


def test_a_rerun_that_redoes_error_rows_keeps_the_other_units_blocks_of_whole_recordings(tmp_path):
    # a unit that redoes its error rows is one piece of the unit's size; it made needs_recut say yes, and
    # Ray's re-cut by row counts then split the recordings of every unit not yet committed across blocks
    # again (each decoded once per block it reached), on any resume of a killed run with error rows
    cfg, storage, source, plan = _rttm_plan(tmp_path, {"a": 6, "b": 5, "c": 3}, rows_per_unit=6)
    first = unit_name(source.key, 0)
    pieces = plan.pieces(cfg.rows_per_unit, done({first: (6, {"a_S1_0001000"})}), 4)
    assert [p.first_unit for p in pieces] == [0, 1, 2]  # a's error rows, then b and c whole
    assert not plan.needs_recut(pieces, 4)
    kw = {"plan": plan, "cfg": cfg, "storage": storage, "skip": done({first: (6, {"a_S1_0001000"})})}
    blocks = [b for p in pieces for b in read_pieces(pa.Table.from_pylist([p.item()]), block_rows=4, **kw)]
    assert [b["id"].to_pylist() for b in blocks][0] == ["a_S1_0001000"]
    assert [set(b["recording_id"].to_pylist()) for b in blocks[1:]] == [{"b"}, {"c"}]


def test_an_rttm_turn_with_a_negative_duration_is_an_error_row_never_the_rest_of_the_file(tmp_path):
    # A turn of negative duration whose end falls before 0 (onset 0.2 s, duration -0.5 s: end -0.3 s)
    # reached the span code with that end, where a negative end is Kaldi's -1, "to the end of the
    # file": the turn ran, without a word, as [0.2 s, the end of the recording).
    import soundfile as sf

    from pipeline.prepare import prepare_block

    sf.write(str(tmp_path / "c1.wav"), np.full(5 * 16000, 0.1, np.float32), 16000, subtype="FLOAT")
    (tmp_path / "c.rttm").write_text(
        "SPEAKER c1 1 1.000 0.500 <NA> <NA> A <NA> <NA>\n"
        "SPEAKER c1 1 0.200 -0.500 <NA> <NA> B <NA> <NA>\n"
        "SPEAKER c1 1 3.000 -1.000 <NA> <NA> A <NA> <NA>\n"
    )
    t = read(tmp_path / "c.rttm")
    errors = dict(zip(t["id"].to_pylist(), t["_input_error"].to_pylist(), strict=True))
    assert errors["c1_A_0001000"] is None
    for bad in ("c1_B_0000200", "c1_A_0003000"):
        assert "negative duration" in errors[bad], errors
    (out,) = prepare_block(t, storage=Storage())
    rows = {r["id"]: r for r in out.to_pylist()}
    assert rows["c1_A_0001000"]["error"] is None
    assert rows["c1_A_0001000"]["duration_s"] == 0.5  # the turn's 8000 samples, nothing more
    for bad in ("c1_B_0000200", "c1_A_0003000"):
        assert rows[bad]["error"].startswith("input: ValueError: ") and rows[bad]["waveform"] is None
    # the times of the line, as docs/corpora.md quotes them
    assert rows["c1_B_0000200"]["error"].endswith("RTTM turn at 0.200 s has a negative duration (-0.500 s)")


def test_a_negative_duration_turn_inside_a_nemo_window_is_an_error_row_not_dropped(tmp_path):
    # a NeMo line with a window (offset / duration) cut every turn to it and kept those with end > start:
    # a turn of negative duration inside the window vanished without a word, where the same line
    # without a window (or the RTTM alone) gives the error row saying so
    (tmp_path / "c.rttm").write_text(
        "SPEAKER c1 1 1.000 0.500 <NA> <NA> A <NA> <NA>\n"
        "SPEAKER c1 1 2.000 -0.500 <NA> <NA> B <NA> <NA>\n"
        "SPEAKER c1 1 9.000 -0.500 <NA> <NA> B <NA> <NA>\n"  # outside the window: not the line's
    )
    for window in ({}, {"offset": 0.5, "duration": 5.0}):
        (tmp_path / "diar.json").write_text(nemo_diarisation_line("/a/c1.wav", "c.rttm", **window))
        t = read(tmp_path / "diar.json")
        errors = dict(zip(t["id"].to_pylist(), t["_input_error"].to_pylist(), strict=True))
        assert errors["c1_A_0001000"] is None, window
        assert "negative duration (-0.500 s)" in errors["c1_B_0002000"], window
        assert ("c1_B_0009000" in errors) == (not window)


def test_a_zero_length_turn_inside_a_nemo_window_is_a_row_as_without_the_window(tmp_path):
    # as a negative one: cut to the window it had end == start and was dropped; without a window it is a
    # row, which the decode makes an error row ("the end is not after the start")
    (tmp_path / "c.rttm").write_text(
        "SPEAKER c1 1 1.000 0.500 <NA> <NA> A <NA> <NA>\nSPEAKER c1 1 2.000 0.000 <NA> <NA> B <NA> <NA>\n"
    )
    for window in ({}, {"offset": 0.5, "duration": 5.0}):
        (tmp_path / "diar.json").write_text(nemo_diarisation_line("/a/c1.wav", "c.rttm", **window))
        t = read(tmp_path / "diar.json")
        assert t["id"].to_pylist() == ["c1_A_0001000", "c1_B_0002000"], window
        assert t["offset_s"].to_pylist()[1] == 2.0 and t["_end_s"].to_pylist()[1] == 2.0


def test_a_folder_of_rttm_with_wav_scp_beside_is_not_a_kaldi_dir(tmp_path):
    (tmp_path / "a.rttm").write_text(RTTM.splitlines(keepends=True)[0])
    (tmp_path / "b.rttm").write_text(RTTM.splitlines(keepends=True)[2])
    (tmp_path / "c.rttm").write_text(RTTM.splitlines(keepends=True)[3])
    (tmp_path / "wav.scp").write_text(
        "call-1 /data/one.wav\ncall-2 rel/two.flac\nlost sox x.wav -t wav - tempo 1.2 |\n"
    )
    t = read(tmp_path).to_pylist()
    assert [(r["id"], r["path"]) for r in t] == [
        ("call-1_A_0000500", "/data/one.wav"),
        ("call-2_A_0000000", str(tmp_path / "rel" / "two.flac")),
        ("lost_A_0000000", None),
    ]
    assert "is a pipe command" in t[2]["_input_error"]
    with pytest.raises(ManifestError, match="line 1: a SPEAKER line has 10 fields"):
        (tmp_path / "d.rttm").write_text("SPEAKER x 1 0.0 1.0\n")
        read(tmp_path)


def test_a_folder_of_rttm_beside_its_audio_suggests_a_glob_that_reads_the_rttm(tmp_path):
    # pyannote's quickstart writes `call-1.rttm` beside `call-1.wav`; naming that folder is refused (it
    # holds both kinds), and the message suggested `<folder>/*.jsonl`, which matches nothing here
    (tmp_path / "call-1.rttm").write_text(RTTM.splitlines(keepends=True)[0])
    (tmp_path / "call-1.wav").write_bytes(b"")
    with pytest.raises(ManifestError, match="mixes manifests") as e:
        discover(InputConfig(manifest=str(tmp_path)), Storage())
    glob = str(e.value).rsplit("a glob such as ", 1)[1].rstrip(")")
    assert glob == f"{tmp_path}/*.rttm"
    assert read(glob)["path"].to_pylist() == [str(tmp_path / "call-1.wav")]


def nemo_diarisation_line(audio, rttm_path, **over):
    """A line as NeMo's diarisation inference writes its manifest (every key it writes)."""
    line = {"audio_filepath": audio, "offset": 0, "duration": None, "label": "infer", "text": "-",
            "num_speakers": 2, "rttm_filepath": rttm_path, "uem_filepath": None}  # fmt: skip
    return json.dumps({**line, **over}) + "\n"


def test_a_nemo_diarisation_manifest_is_read_as_turns_unless_told_otherwise(tmp_path):
    (tmp_path / "rttm").mkdir()
    lines = RTTM.splitlines(keepends=True)
    (tmp_path / "rttm" / "call-1.rttm").write_text("".join(lines[:2]))
    (tmp_path / "rttm" / "call-2.rttm").write_text(lines[2])
    text = nemo_diarisation_line("/a/call-1.wav", "rttm/call-1.rttm") + nemo_diarisation_line(
        "/a/call-2.wav", str(tmp_path / "rttm" / "call-2.rttm")
    )
    turns = [
        ("call-1_A_0000500", "/a/call-1.wav", "A", 0.5),
        ("call-1_B_0002000", "/a/call-1.wav", "B", 2.0),
        ("call-2_A_0000000", "/a/call-2.wav", "A", 0.0),
    ]
    (tmp_path / "diar_manifest.json").write_text(text)
    (tmp_path / "diar.jsonl.gz").write_bytes(gzip.compress(text.encode()))
    for name in ("diar_manifest.json", "diar.jsonl.gz"):
        t = read(tmp_path / name)  # input.format: auto
        assert [(r["id"], r["path"], r["speaker"], r["offset_s"]) for r in t.to_pylist()] == turns
    # told it is a manifest of clips: one row per line, as the user says
    t = read(tmp_path / "diar_manifest.json", format="jsonl")
    assert t["path"].to_pylist() == ["/a/call-1.wav", "/a/call-2.wav"] and t["speaker"].null_count == 2
    assert t["rttm_filepath"].to_pylist()[0] == "rttm/call-1.rttm"
    # the first line names no RTTM, a later one does: refused, never read as clips without a word
    (tmp_path / "late.json").write_text(
        nemo_diarisation_line("/a/call-1.wav", None)
        + nemo_diarisation_line("/a/call-2.wav", "rttm/call-2.rttm")
    )
    with pytest.raises(ManifestError, match=r"late.json: row 2 names an RTTM .*input.format: rttm"):
        read(tmp_path / "late.json")
    assert read(tmp_path / "late.json", format="json").num_rows == 2


@pytest.mark.parametrize("name", ["diar.json.gz", "diar.ndjson.gz", "diar.ndjson"])
def test_a_gzipped_nemo_diarisation_manifest_of_any_documented_name_is_read_as_turns(tmp_path, name):
    # `.json.gz` and `.ndjson.gz` were found to be NeMo diarisation manifests (format rttm) and then
    # parsed as RTTM text, which holds no SPEAKER line: no turn at all (exit 2 "the manifest has no
    # rows"; a shard among others lost its turns without a word)
    (tmp_path / "call-1.rttm").write_text("".join(RTTM.splitlines(keepends=True)[:2]))
    text = nemo_diarisation_line("/a/call-1.wav", "call-1.rttm")
    data = text.encode()
    (tmp_path / name).write_bytes(gzip.compress(data) if name.endswith(".gz") else data)
    t = read(tmp_path / name)
    assert t["id"].to_pylist() == ["call-1_A_0000500", "call-1_B_0002000"]
    assert t["path"].to_pylist() == ["/a/call-1.wav"] * 2


def test_a_nemo_diarisation_line_whose_rttm_is_missing_names_the_line_not_input_manifest(tmp_path):
    # a missing `rttm_filepath` said "input.manifest: no such file: <the RTTM>", as if the manifest named
    # in the config were missing, and named no line of it (relative paths resolve against
    # input.audio_root, so a root set to the audio folder sends every relative RTTM path there)
    (tmp_path / "call-1.rttm").write_text(RTTM.splitlines(keepends=True)[0])
    text = nemo_diarisation_line("/a/call-1.wav", "call-1.rttm") + nemo_diarisation_line(
        "/a/call-2.wav", "rttm/call-2.rttm"
    )
    (tmp_path / "diar.json").write_text(text)
    with pytest.raises(ManifestError) as e:
        read(tmp_path / "diar.json")
    message = str(e.value)
    prefix = f"{tmp_path / 'diar.json'}: line 2: rttm_filepath 'rttm/call-2.rttm': "
    assert message.startswith(prefix), message
    assert f"no such file: {tmp_path / 'rttm' / 'call-2.rttm'}" in message
    assert "input.manifest" not in message


@pytest.mark.parametrize(
    "key, value", [("offset", "abc"), ("offset", [1]), ("offset", -5), ("duration", "x"), ("duration", "NaN")]
)
def test_a_nemo_diarisation_window_that_is_not_seconds_names_the_manifest_line(tmp_path, key, value):
    # `offset` / `duration` went to float() as they were: text or a list stopped the count pass with a
    # bare ValueError / TypeError naming neither the manifest nor the line (exit 1, not 2); a NaN
    # duration kept none of the recording's turns without a word, a negative offset is no time in a file
    (tmp_path / "call-1.rttm").write_text(RTTM.splitlines(keepends=True)[0])
    (tmp_path / "call-2.rttm").write_text(RTTM.splitlines(keepends=True)[2])
    text = nemo_diarisation_line("/a/call-1.wav", "call-1.rttm") + nemo_diarisation_line(
        "/a/call-2.wav", "call-2.rttm", **{key: value}
    )
    (tmp_path / "diar.json").write_text(text)
    with pytest.raises(ManifestError, match=rf"diar.json: line 2: {key!r} must be seconds"):
        read(tmp_path / "diar.json")


MANY = {"a": 2, "b": 4, "c": 1, "d": 35, "e": 3}  # recording -> turns


def many_recordings_rttm() -> str:
    lines = [
        f"SPEAKER {rec} 1 {k:.3f} 0.500 <NA> <NA> S{k % 2} <NA> <NA>\n"
        for rec, n in MANY.items()
        for k in range(n)
    ]
    return "".join(lines[::-1])  # any line order


def test_units_of_a_multi_recording_rttm_hold_whole_recordings_up_to_a_bound(tmp_path):
    (tmp_path / "all.rttm").write_text(many_recordings_rttm())
    t = read(tmp_path / "all.rttm", rows_per_unit=3)
    assert t.num_rows == sum(MANY.values()) and len(set(t["id"].to_pylist())) == t.num_rows
    units: dict[str, list[str]] = {}
    for r in t.to_pylist():
        units.setdefault(r["_unit"], []).append(r["recording_id"])
    for unit, recs in units.items():
        assert len(recs) <= 3 or len(set(recs)) == 1, (unit, recs)  # over the size: one recording alone
        assert len(recs) <= 30  # never more than 10 x rows_per_unit
    # every recording of at most 10 x rows_per_unit turns lies in one unit; d (35 turns) is cut
    for rec, n in MANY.items():
        holding = {u for u, recs in units.items() if rec in recs}
        assert len(holding) == (1 if n <= 30 else 12), rec
    # _unit_rows (what the writer waits for) is each unit's size
    assert all(r["_unit_rows"] == len(units[r["_unit"]]) for r in t.to_pylist())
    # a rerun skips committed units by their sizes and reads the rest, each turn once
    first = t["_unit"][0].as_py()
    again = read(tmp_path / "all.rttm", rows_per_unit=3, skip=done({first: len(units[first])}))
    assert sorted(
        again["id"].to_pylist() + [r["id"] for r in t.to_pylist() if r["_unit"] == first]
    ) == sorted(t["id"].to_pylist())
    # input.limit: the first rows, whole recordings where the limit allows
    limited = read(tmp_path / "all.rttm", rows_per_unit=3, limit=5)
    assert limited["recording_id"].to_pylist() == ["a", "a", "b", "b", "b"]
    assert len(set(limited["_unit"].to_pylist())) == 2


def test_whole_groups_cuts_units_at_recording_edges():
    from pipeline.manifest.formats.base import whole_groups

    assert whole_groups(list("aabbbcd"), 3) == (2, 3, 2)
    assert whole_groups(list("abbbbc"), 3) == (1, 4, 1)  # over the size: alone
    assert whole_groups(["a"] * 20 + ["b"], 2) == (20, 1)  # up to 10 x the size: still alone
    assert whole_groups(["a"] * 21 + ["b"], 2) == (2,) * 10 + (1, 1)  # past the bound: cut
    assert whole_groups([], 3) == ()


def test_rttm_audio_is_found_anywhere_under_the_root_as_corpora_nest_it(tmp_path):
    root = tmp_path / "corpora"
    files = [
        "amicorpus/ES2002a/audio/ES2002a.Mix-Headset.wav",  # AMI: <id>.<stream>.wav
        "amicorpus/ES2003a/audio/ES2003a.Mix-Headset.wav",  # two streams of one meeting: ambiguous
        "amicorpus/ES2003a/audio/ES2003a.Headset-0.wav",
        "voxconverse/abjxc.wav",  # flat
        "callhome/eng/en_4065.wav",  # per-language folders
        "callhome/deu/de_6625.flac",
        "x/rec.wav",  # <id>.wav wins over <id>.<anything>.wav
        "y/rec.16k.wav",
        "a/dup.wav",  # the same name in two folders: ambiguous
        "b/dup.wav",
        "notes/ES2002a.txt",
    ]
    for f in files:
        (root / f).parent.mkdir(parents=True, exist_ok=True)
        (root / f).write_bytes(b"")
    recs = ["ES2002a", "ES2003a", "abjxc", "en_4065", "de_6625", "rec", "dup"]
    (tmp_path / "all.rttm").write_text(
        "".join(f"SPEAKER {r} 1 0.000 1.000 <NA> <NA> A <NA> <NA>\n" for r in recs)
    )
    got = {r["recording_id"]: r for r in read(tmp_path / "all.rttm", audio_root=str(root)).to_pylist()}
    want = {
        "ES2002a": "amicorpus/ES2002a/audio/ES2002a.Mix-Headset.wav",
        "abjxc": "voxconverse/abjxc.wav",
        "en_4065": "callhome/eng/en_4065.wav",
        "de_6625": "callhome/deu/de_6625.flac",
        "rec": "x/rec.wav",
    }
    for rec, path in want.items():
        assert got[rec]["path"] == str(root / path) and got[rec]["_input_error"] is None, got[rec]
    for rec, both in (
        (
            "ES2003a",
            "amicorpus/ES2003a/audio/ES2003a.Headset-0.wav and amicorpus/ES2003a/audio/ES2003a.Mix-Headset.wav",
        ),
        ("dup", "a/dup.wav and b/dup.wav"),
    ):
        assert (
            got[rec]["path"] is None
            and f"several audio files match under {root} ({both})" in got[rec]["_input_error"]
        )
    # wav.scp beside the RTTM stays the explicit route
    (tmp_path / "wav.scp").write_text(f"ES2003a {root}/amicorpus/ES2003a/audio/ES2003a.Headset-0.wav\n")
    (tmp_path / "one.rttm").write_text("SPEAKER ES2003a 1 0.000 1.000 <NA> <NA> A <NA> <NA>\n")
    t = read(tmp_path / "one.rttm", audio_root=str(root))
    assert t["path"].to_pylist() == [f"{root}/amicorpus/ES2003a/audio/ES2003a.Headset-0.wav"]


@pytest.mark.s3
def test_rttm_audio_is_found_in_nested_folders_of_a_bucket_with_one_listing(s3_server, s3_bucket):
    from tests.test_storage import FaultProxy

    client, bucket = s3_bucket
    keys = ["ami/ES2002a/audio/ES2002a.Mix-Headset.wav", "ami/ES2003a/audio/ES2003a.Mix-Headset.wav",
            "vox/abjxc.wav", "callhome/eng/en_4065.wav", "callhome/deu/de_6625.flac"]  # fmt: skip
    for key in keys:
        client.put_object(Bucket=bucket, Key=f"corpora/{key}", Body=b"")
    recs = [k.rsplit("/", 1)[1].split(".")[0] for k in keys]
    rttm = "".join(f"SPEAKER {r} 1 {s:.3f} 1.000 <NA> <NA> A <NA> <NA>\n" for r in recs for s in (0, 2))
    client.put_object(Bucket=bucket, Key="all.rttm", Body=rttm.encode())
    root = f"s3://{bucket}/corpora"
    with FaultProxy(s3_server) as proxy:  # fails nothing: records the requests
        t = read(f"s3://{bucket}/all.rttm", audio_root=root, storage=Storage(endpoint_url=proxy.url))
    assert t["_input_error"].null_count == t.num_rows == 10
    assert {r["recording_id"]: r["path"] for r in t.to_pylist()} == {
        r: f"{root}/{k}" for r, k in zip(recs, keys, strict=True)
    }
    # one listing of the root for all recordings, by the count pass and the read alike (no walk each)
    listings = [p for m, p, _ in proxy.requests if "list-type=2" in p and "prefix=corpora" in p]
    assert len(listings) == 1, listings


def _sha12(text: str) -> str:
    import hashlib

    return hashlib.sha256(text.encode()).hexdigest()[:12]


@pytest.mark.parametrize("form", ["jsonl", "parquet"])
def test_default_ids_of_urls_with_secrets_are_redacted_unique_and_stable(tmp_path, form):
    """No id column: a presigned URL's signature and credential, a SAS `sig` or `user:password@` must
    not become the id; two URLs that differ only in their signature stay two ids; a URL without
    secrets is its own id; a row named by its row number in a presigned manifest carries no query."""
    cred = "AKIALEAKEDKEY%2F20250101%2Fus-east-1%2Fs3%2Faws4_request"
    paths = [
        f"https://b.s3.amazonaws.com/a.wav?X-Amz-Credential={cred}&X-Amz-Date=20250101T000000Z"
        "&X-Amz-Signature=SIGONE",
        f"https://b.s3.amazonaws.com/a.wav?X-Amz-Credential={cred}&X-Amz-Date=20250101T000000Z"
        "&X-Amz-Signature=SIGTWO",
        "https://acct.blob.core.windows.net/c/b.wav?sv=2022-11-02&se=2030-01-01&sig=SASLEAK",
        "http://alice:PASSLEAK@example.org/c.wav",
        "https://example.org/plain.wav?version=3",
        None,
    ]
    rows = [{"path": p, "n": k} for k, p in enumerate(paths)]
    where = tmp_path / f"m.{form}"
    if form == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), where)
    else:
        where.write_text("".join(json.dumps(r) + "\n" for r in rows))
    ids = read(where, rows_per_unit=2, block_rows=2)["id"].to_pylist()
    common = "?X-Amz-Credential=***&X-Amz-Date=20250101T000000Z&X-Amz-Signature=***"
    assert ids == [
        f"https://b.s3.amazonaws.com/a.wav{common}#{_sha12(paths[0])}",
        f"https://b.s3.amazonaws.com/a.wav{common}#{_sha12(paths[1])}",
        f"https://acct.blob.core.windows.net/c/b.wav?sv=2022-11-02&se=2030-01-01&sig=***#{_sha12(paths[2])}",
        f"http://***@example.org/c.wav#{_sha12(paths[3])}",
        "https://example.org/plain.wav?version=3",
        f"m.{form}:6",
    ]
    assert read(where)["id"].to_pylist() == ids  # a rerun (read whole this time) names them the same
    for leak in ("SIGONE", "SIGTWO", "AKIALEAKEDKEY", "SASLEAK", "PASSLEAK"):
        assert not any(leak in i for i in ids)


def test_the_row_number_id_of_a_presigned_manifest_names_the_file_without_its_query():
    from pipeline.manifest.columns import default_ids

    url = "https://h/m.jsonl?X-Amz-Signature=MANIFESTLEAK&X-Amz-Date=20250101T000000Z"
    ids = default_ids([pa.array([None, ""], pa.string())], 2, url, 10)
    assert ids.to_pylist() == ["m.jsonl:11", "m.jsonl:12"]


MELD_ROWS = [
    {"Sr No.": 1, "Speaker": "Joey", "Dialogue_ID": 0, "Utterance_ID": 0},
    {"Sr No.": 2, "Speaker": "Chandler", "Dialogue_ID": 0, "Utterance_ID": 1},
    {"Sr No.": 3, "Speaker": "Monica", "Dialogue_ID": None, "Utterance_ID": 2},
]


@pytest.mark.parametrize("form", ["csv", "tsv", "jsonl", "parquet"])
def test_path_template_gives_the_same_default_ids_in_every_tabular_format(tmp_path, form):
    """No id column: the id is the path as built, or `<file>:<row>` where a template column is
    empty, whatever the manifest's format (the count pass of a Parquet file builds them too)."""
    where = tmp_path / f"meld.{form}"
    if form == "parquet":
        pq.write_table(pa.Table.from_pylist(MELD_ROWS), where)
    elif form == "jsonl":
        where.write_text("".join(json.dumps(r) + "\n" for r in MELD_ROWS))
    else:
        sep = "," if form == "csv" else "\t"
        lines = [sep.join(MELD_ROWS[0])] + [
            sep.join("" if v is None else str(v) for v in r.values()) for r in MELD_ROWS
        ]
        where.write_text("\n".join(lines) + "\n")
    template = "dia{Dialogue_ID}_utt{Utterance_ID}.mp4"
    t = read(where, audio_root="/clips", path_template=template, rows_per_unit=2, block_rows=2)
    assert t["id"].to_pylist() == ["dia0_utt0.mp4", "dia0_utt1.mp4", f"meld.{form}:3"]
    assert t["path"].to_pylist() == ["/clips/dia0_utt0.mp4", "/clips/dia0_utt1.mp4", None]
    assert t["speaker"].to_pylist() == ["Joey", "Chandler", "Monica"]
    assert "column 'Dialogue_ID' is empty" in t["_input_error"][2].as_py()


def test_path_template_builds_paths_and_ids_and_speaker_is_a_column(tmp_path):
    head = "Sr No.,Utterance,Speaker,Emotion,Dialogue_ID,Utterance_ID\n"
    rows = '1,"Oh, my God!",Joey,surprise,0,0\n2,No.,Chandler,neutral,0,1\n'
    (tmp_path / "meld.csv").write_text(head + rows)
    (tmp_path / "gap.csv").write_text(head + rows + "3,Hm.,Monica,neutral,,2\n")
    template = "dia{Dialogue_ID}_utt{Utterance_ID}.mp4"
    t = read(tmp_path / "meld.csv", audio_root="/clips", path_template=template)
    assert t["id"].to_pylist() == ["dia0_utt0.mp4", "dia0_utt1.mp4"]  # no id column: the path as built
    assert t["path"].to_pylist() == ["/clips/dia0_utt0.mp4", "/clips/dia0_utt1.mp4"]
    assert t["speaker"].to_pylist() == ["Joey", "Chandler"] and "Speaker" not in t.column_names
    assert t["Emotion"].to_pylist()[0] == "surprise" and t["Dialogue_ID"].to_pylist() == [0, 0]
    # an empty template column: an error row saying so (named by its row without an id column)
    for id_column, ids in (
        ("Sr No.", ["1", "2", "3"]),
        (None, ["dia0_utt0.mp4", "dia0_utt1.mp4", "gap.csv:3"]),
    ):
        t = read(tmp_path / "gap.csv", id_column=id_column, path_template=template)
        assert t["id"].to_pylist() == ids and t["_input_error"].to_pylist()[:2] == [None, None]
        assert "column 'Dialogue_ID' is empty" in t["_input_error"].to_pylist()[2]
    with pytest.raises(ManifestError, match="names 'Season', not a column"):
        read(tmp_path / "meld.csv", path_template="s{Season}.mp4")


def test_span_rows_without_ids_get_the_span_in_their_default_id(tmp_path):
    """A NeMo manifest as NeMo writes it (no id column), two segments of one file and one to the end:
    three distinct ids, the span in seconds after the name."""
    from pipeline.config import InputConfig
    from pipeline.manifest import count_rows, discover
    from pipeline.manifest.formats import tables
    from pipeline.storage import Storage

    m = tmp_path / "train_manifest.json"
    rows = [
        {"audio_filepath": "calls/c1.wav", "offset": 12.5, "duration": 3.2},
        {"audio_filepath": "calls/c1.wav", "offset": 0.25, "duration": 1.0},
        {"audio_filepath": "calls/c1.wav", "offset": 20},
    ]
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    cfg = InputConfig(manifest=str(m))
    storage = Storage()
    (source,) = discover(cfg, storage)
    assert count_rows(source, cfg, storage).rows == 3  # no duplicate ids
    ids = [i for t in tables(source, cfg, storage) for i in t["id"].to_pylist()]
    assert ids == ["calls/c1.wav@12.500-15.700", "calls/c1.wav@0.250-1.250", "calls/c1.wav@20.000-"]


def test_a_json_array_keeps_keys_that_its_first_object_lacks(tmp_path):
    # a JSON array (not JSON lines) whose first object has no span, id or text: the later objects' keys
    # must still be read, as JSON lines read them (else their spans are lost and the whole file runs)
    rows = [
        {"audio_filepath": "/a.wav"},
        {"audio_filepath": "/b.wav", "offset": 1.5, "duration": 2.0, "text": "hi"},
    ]
    (tmp_path / "m.json").write_text(json.dumps(rows, indent=1))
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    for name in ("m.json", "m.jsonl"):
        t = read(tmp_path / name)
        assert t["offset_s"].to_pylist() == [None, 1.5], name
        assert t["text"].to_pylist() == [None, "hi"], name
        assert t["id"].to_pylist() == ["/a.wav", "/b.wav@1.500-3.500"], name


@pytest.mark.parametrize("sep", [",", "\t"])
def test_csv_ids_speakers_and_paths_are_read_as_written(tmp_path, sep):
    # zero-padded numbers name things (ESD's speaker 0011, utterance 000123): they are not numbers to
    # convert, or `007` becomes id `7` and `01` and `1` collide
    name = "m.csv" if sep == "," else "m.tsv"
    rows = "".join(f"{i}{sep}/{i}.wav{sep}{i}{sep}{i}\n" for i in ("007", "010", "1.50"))
    (tmp_path / name).write_text(f"id{sep}path{sep}speaker{sep}take\n" + rows)
    t = read(tmp_path / name)
    assert t["id"].to_pylist() == ["007", "010", "1.50"]
    assert t["take"].to_pylist() == [7, 10, 1.5]  # a column passed through keeps its type
    assert t["speaker"].to_pylist() == ["007", "010", "1.50"]
    assert t["path"].to_pylist() == ["/007.wav", "/010.wav", "/1.50.wav"]
    (tmp_path / name).write_text(f"key{sep}path\n01{sep}/a.wav\n1{sep}/b.wav\n")
    assert read(tmp_path / name)["id"].to_pylist() == ["01", "1"]


@pytest.mark.parametrize("form", ["jsonl", "parquet"])
@pytest.mark.parametrize("ids", [["a", "b", None, "d", None], ["a", "b", None, "d", "e"]])
def test_a_row_without_an_id_is_refused_by_the_count_naming_the_file_and_the_row(tmp_path, form, ids):
    # found before any work starts (as duplicate ids are), not by a read task in the middle of the run
    rows = [{"id": i, "path": f"/{k}.wav"} for k, i in enumerate(ids)]
    path = tmp_path / f"m.{form}"
    if form == "parquet":
        pq.write_table(pa.Table.from_pylist(rows), path, row_group_size=2)
    else:
        path.write_text("\n".join(json.dumps(r) for r in rows))
    cfg = InputConfig(manifest=str(path))
    storage = Storage()
    with pytest.raises(ManifestError) as e:
        count_rows(discover(cfg, storage)[0], cfg, storage)
    missing = f"{ids.count(None)} rows have no 'id' (the first is row 3)"
    assert str(e.value).startswith(str(path)) and missing in str(e.value)


def test_a_lhotse_cut_on_one_channel_reads_that_channel_from_the_file_that_holds_it(tmp_path):
    # Lhotse's MonoCut is one channel of its recording (cut.load_audio() returns that channel alone):
    # a stereo call's channel 1 is the customer alone, and an AMI-style recording with a file per
    # headset keeps channel 1 in its second file.
    lhotse = pytest.importorskip("lhotse")
    source = lhotse.audio.AudioSource

    def rec(rid, sources):
        return lhotse.Recording(rid, sources, sampling_rate=16000, num_samples=160000, duration=10.0)

    recs = [
        rec("call", [source(type="file", channels=[0, 1], source="/a/call.wav")]),
        rec("mtg", [source(type="file", channels=[c], source=f"/a/mtg.Headset-{c}.wav") for c in (0, 1)]),
    ]
    sups = [
        lhotse.SupervisionSegment(f"{r}-{c}", r, start=1.0 + c, duration=1.0, channel=c, speaker="AB"[c])
        for r in ("call", "mtg")
        for c in (0, 1)
    ]
    whole = lhotse.CutSet.from_manifests(
        recordings=lhotse.RecordingSet.from_recordings(recs),
        supervisions=lhotse.SupervisionSet.from_segments(sups),
    )
    whole.trim_to_supervisions().to_file(tmp_path / "cuts_mono.jsonl")
    t = read(tmp_path / "cuts_mono.jsonl")
    assert t["id"].to_pylist() == ["call-0", "call-1", "mtg-0", "mtg-1"]
    assert t["path"].to_pylist() == [
        "/a/call.wav",
        "/a/call.wav",
        "/a/mtg.Headset-0.wav",
        "/a/mtg.Headset-1.wav",
    ]
    assert t["_channel"].to_pylist() == [0, 1, None, None]  # a one-channel file is its own channel
    assert t["_input_error"].to_pylist() == [None] * 4
    # the MultiCuts themselves: their supervisions name both channels, so each is read on its own, as the
    # MonoCuts above (test_a_lhotse_multicut_reads_each_supervision_on_its_own_channel_where_they_name_several)
    whole.to_file(tmp_path / "cuts_multi.jsonl")
    multi = read(tmp_path / "cuts_multi.jsonl")
    for column in ("id", "path", "_channel", "_input_error", "offset_s"):
        assert multi[column].to_pylist() == t[column].to_pylist(), column
    # a MultiCut without supervisions over a file per channel cannot be one decode: an error row, never
    # the first file alone
    lhotse.CutSet.from_cuts([lhotse.MultiCut("mtg-all", 0.0, 5.0, [0, 1], recording=recs[1])]).to_file(
        tmp_path / "cuts_bare.jsonl"
    )
    t = read(tmp_path / "cuts_bare.jsonl")
    assert t["path"].to_pylist() == [None] and "several files" in t["_input_error"].to_pylist()[0]


def test_a_kaldi_text_with_an_empty_transcript_is_read(tmp_path):
    # Kaldi reads `text` as token vectors: `u2` alone is utterance u2 with no words (a noise or
    # silence segment), not a broken file that stops the whole job
    (tmp_path / "wav.scp").write_text("rec1 /audio/rec1.wav\n")
    (tmp_path / "segments").write_text("u1 rec1 0.5 1.75\nu2 rec1 2.0 3.0\nu3 rec1 3.0 4.0\n")
    (tmp_path / "text").write_text("u1 hello there\nu2\nu3 \n")
    t = read(tmp_path)
    assert t["id"].to_pylist() == ["u1", "u2", "u3"] and t["text"].to_pylist() == ["hello there", "", ""]
    (tmp_path / "utt2spk").write_text("u1 alice\nu2\nu3 carol\n")  # a speaker is never optional
    with pytest.raises(ManifestError, match=r"utt2spk: line 2: expected '<utt> <value>'"):
        read(tmp_path)


@pytest.fixture
def http_folder(tmp_path):
    """A plain HTTP server on 127.0.0.1 serving a folder (it ignores a URL's query, as a presigned URL's
    store checks it)."""
    import functools
    import http.server
    import threading

    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_a_presigned_manifest_url_is_read_by_the_format_of_its_name(http_folder):
    # the query of a presigned URL is not part of the file's name: `m.jsonl?X-Amz-Signature=...` is JSON
    # lines, `a.wav?...` is audio (input.format: auto), as an unsigned URL is
    root, url = http_folder
    (root / "m.jsonl").write_text('{"id": "u1", "path": "a.wav"}\n{"id": "u2", "path": "b.wav"}\n')
    (root / "a.wav").write_bytes(b"RIFF")
    query = "?X-Amz-Date=20250101T000000Z&X-Amz-Signature=0f1e2d"
    t = read(f"{url}/m.jsonl{query}")
    assert t["id"].to_pylist() == ["u1", "u2"] and t["path"].to_pylist() == [f"{url}/a.wav", f"{url}/b.wav"]
    # a GCS signed URL's credential has dots in it: the id is the file's, never a part of the query
    gcs = "?X-Goog-Credential=sa%40proj.iam.gserviceaccount.com%2F20250101&X-Goog-Signature=0f1e2d"
    for q in (query, gcs):
        sources = discover(InputConfig(manifest=f"{url}/a.wav{q}"), Storage())
        assert [s.format for s in sources] == ["audio"]
        assert sources[0].audio.to_pylist() == [{"id": "a", "path": f"{url}/a.wav{q}"}]


def test_a_parquet_manifest_on_a_web_server_without_range_requests_is_read(http_folder):
    # Python's http.server ignores Range: fsspec reads a file bigger than its 5 MB block from the start
    # only, and its advice (block_size=0, a stream) cannot seek to a Parquet footer: read whole instead
    root, url = http_folder
    n = 120_000
    paths = [f"{k:064x}/x{k}.wav" for k in range(n)]
    table = pa.table({"id": [f"r{i}" for i in range(n)], "path": paths})
    pq.write_table(table, root / "m.parquet", row_group_size=20_000, compression="none", use_dictionary=False)
    assert (root / "m.parquet").stat().st_size > 6 << 20
    t = read(f"{url}/m.parquet", rows_per_unit=50_000, block_rows=50_000)
    assert t.num_rows == n and t["id"].to_pylist() == table["id"].to_pylist()
    assert t["path"][n - 1].as_py() == f"{url}/{paths[-1]}"


@pytest.mark.parametrize(
    "name, body, column",
    [
        # a span given as clock times, not seconds
        ("m.csv", "id,path,start,end\nu1,/a.wav,00:00:01.500,00:00:03.000\n", "start"),
        ("m.jsonl", '{"id": "u1", "path": "/a.wav", "offset": "1.5", "duration": "long"}\n', "duration"),
        ("m.jsonl", '{"id": "u1", "path": "/a.wav", "speaker": {"name": "x"}}\n', "speaker"),
        ("m.jsonl", '{"id": {"k": 1}, "path": "/a.wav"}\n', "id"),
        ("m.jsonl", '{"id": "u1", "path": ["/a.wav"]}\n', "path"),
        ("m.parquet", None, "id"),
    ],
)
def test_a_column_of_the_wrong_type_is_a_manifest_error_naming_the_file_and_column(
    tmp_path, name, body, column
):
    # bad input (exit 2, one line naming the file), not an Arrow cast error that fails the run (exit 1)
    path = tmp_path / name
    if body is None:
        pq.write_table(pa.table({"id": [{"k": 1}], "path": ["/a.wav"]}), path)
    else:
        path.write_text(body)
    cfg = InputConfig(manifest=str(path))
    storage = Storage()
    with pytest.raises(ManifestError) as e:
        count_rows(discover(cfg, storage)[0], cfg, storage)
    assert str(e.value).startswith(f"{path}: column {column!r} ")


@pytest.mark.parametrize("empty", ["", "\n\n", "\r\n"])
def test_an_empty_json_lines_shard_adds_no_rows_and_stops_nothing(tmp_path, empty):
    # writers leave empty shards (a worker with no rows): a shard with no rows is a shard with no rows,
    # as a CSV holding only its header or an empty Parquet shard is, not a manifest refused whole
    d = tmp_path / "shards"
    d.mkdir()
    (d / "part-0.jsonl").write_text('{"id": "u1", "path": "/a.wav"}\n{"id": "u2", "path": "/b.wav"}\n')
    (d / "part-1.jsonl").write_text(empty)
    assert read(d)["id"].to_pylist() == ["u1", "u2"]
    cfg = InputConfig(manifest=str(d / "part-1.jsonl"))
    assert count_rows(discover(cfg, Storage())[0], cfg, Storage()).rows == 0


def test_a_lhotse_cut_of_a_transformed_recording_is_an_error_row_unless_only_resampled(tmp_path):
    # a speed-perturbed cut's times are in the perturbed recording (lhotse perturb_speed): the original
    # file cut at them is other speech; the pipeline applies no transform but resampling (its own)
    lhotse = pytest.importorskip("lhotse")

    def cutset(rid, sid):
        rec = lhotse.Recording(
            rid,
            [lhotse.audio.AudioSource(type="file", channels=[0], source="/a/r.wav")],
            sampling_rate=16000,
            num_samples=160000,
            duration=10.0,
        )
        return lhotse.CutSet.from_manifests(
            recordings=lhotse.RecordingSet.from_recordings([rec]),
            supervisions=lhotse.SupervisionSet.from_segments([lhotse.SupervisionSegment(sid, rid, 2.0, 1.0)]),
        )

    cuts = cutset("r", "s")
    (cuts + cuts.perturb_speed(1.1) + cutset("q", "s_rs").resample(8000)).to_file(tmp_path / "cuts.jsonl")
    t = read(tmp_path / "cuts.jsonl").to_pylist()
    assert [r["id"] for r in t] == ["s", "s_sp1.1", "s_rs"]
    assert [r["path"] for r in t] == ["/a/r.wav", None, "/a/r.wav"]
    assert t[0]["_input_error"] is None and t[2]["_input_error"] is None
    assert "transform 'Speed'" in t[1]["_input_error"]


def test_a_kaldi_data_dir_split_for_parallel_jobs_reads_its_own_files_once(tmp_path):
    # utils/split_data.sh leaves split<N>/<k>/ copies of utt2spk, text, ... inside the data dir: they are
    # not more columns of it (nor the same column again)
    (tmp_path / "wav.scp").write_text("rec1 /audio/rec1.wav\nrec2 /audio/rec2.wav\n")
    (tmp_path / "utt2spk").write_text("rec1 alice\nrec2 bob\n")
    (tmp_path / "text").write_text("rec1 hello\nrec2 bye\n")
    for k, rec in ((1, "rec1"), (2, "rec2")):
        part = tmp_path / "split2" / str(k)
        part.mkdir(parents=True)
        (part / "wav.scp").write_text(f"{rec} /audio/{rec}.wav\n")
        (part / "utt2spk").write_text(f"{rec} someone\n")
        (part / "text").write_text(f"{rec} words\n")
        (part / "utt2lang").write_text(f"{rec} xx\n")
    t = read(tmp_path)
    assert t["id"].to_pylist() == ["rec1", "rec2"] and t["speaker"].to_pylist() == ["alice", "bob"]
    assert t["text"].to_pylist() == ["hello", "bye"] and "lang" not in t.column_names


def test_a_parquet_shard_that_is_not_parquet_is_a_manifest_error_naming_it(tmp_path):
    # a Hugging Face dataset cloned without git-lfs holds pointer files named *.parquet: bad input
    # naming the file (exit 2), not an Arrow error without a name that fails the run (exit 1)
    d = tmp_path / "data"
    d.mkdir()
    pq.write_table(pa.table({"id": ["a"], "path": ["/a.wav"]}), d / "train-00000-of-00002.parquet")
    pointer = "version https://git-lfs.github.com/spec/v1\noid sha256:4d7a21\nsize 123456\n"
    (d / "train-00001-of-00002.parquet").write_text(pointer)
    cfg = InputConfig(manifest=str(d))
    storage = Storage()
    sources = discover(cfg, storage)
    assert count_rows(sources[0], cfg, storage).rows == 1
    with pytest.raises(ManifestError, match=r"train-00001-of-00002\.parquet: cannot parse as parquet"):
        count_rows(sources[1], cfg, storage)


@pytest.mark.parametrize("bad", ["text", "wav.scp", "segments"])
def test_a_kaldi_file_that_is_not_utf8_is_a_manifest_error_naming_it(tmp_path, bad):
    # Kaldi data dirs of older corpora may be Latin-1 or GBK: bad input naming the file (exit 2), not
    # a UnicodeDecodeError without a name that fails the run (exit 1)
    files = {"wav.scp": "r1 /audio/r1.wav\n", "segments": "u1 r1 0.0 1.0\n", "text": "u1 bonjour\n"}
    for name, body in files.items():
        (tmp_path / name).write_bytes(body.encode() + ("u2 café\n".encode("latin-1") if name == bad else b""))
    cfg = InputConfig(manifest=str(tmp_path))
    storage = Storage()
    with pytest.raises(ManifestError, match=rf"{bad}: not UTF-8 text"):
        count_rows(discover(cfg, storage)[0], cfg, storage)


def test_a_nemo_diarisation_manifest_that_is_not_utf8_is_a_manifest_error_naming_it(tmp_path):
    (tmp_path / "a.rttm").write_text("SPEAKER a 1 0.00 1.00 <NA> <NA> s1 <NA> <NA>\n")
    first = nemo_diarisation_line("a.wav", "a.rttm").encode()
    second = (
        nemo_diarisation_line("b.wav", "a.rttm", text="TEXT")
        .encode()
        .replace(b"TEXT", "café".encode("latin-1"))
    )
    (tmp_path / "diar.json").write_bytes(first + second)
    cfg = InputConfig(manifest=str(tmp_path / "diar.json"))
    storage = Storage()
    with pytest.raises(ManifestError, match=r"diar\.json: not UTF-8 text"):
        count_rows(discover(cfg, storage)[0], cfg, storage)


# files of formats pipeline.audio decodes (libsndfile or FFmpeg), as the ffmpeg CLI writes them: extension ->
# output options (the input is a 1 s tone; `video` adds a tiny test picture, as in a film's container)
MORE_AUDIO = {
    ".spx": ["-c:a", "libspeex"],
    ".w64": [],
    ".wv": [],
    ".mp2": [],
    ".mpa": ["-c:a", "mp2", "-f", "mp2"],
    ".tta": [],
    ".aifc": ["-c:a", "pcm_s16be", "-f", "aiff"],
    ".eac3": ["-c:a", "eac3"],
    ".m4b": ["-c:a", "aac", "-f", "mp4"],
    ".ogx": ["-c:a", "libvorbis", "-f", "ogg"],
    ".ra": [],
    ".voc": [],
    ".gsm": ["-ar", "8000", "-c:a", "libgsm", "-f", "gsm"],  # GSM 06.10 (telephony archives)
    ".dts": ["-ar", "48000", "-c:a", "dca", "-strict", "-2", "-f", "dts"],
    ".ogv": ["video", "-c:v", "libtheora", "-c:a", "libvorbis"],
    ".m4v": ["video", "-c:a", "aac", "-f", "mp4"],
    ".mpg": ["video", "-f", "mpeg"],
    ".mpeg": ["video", "-f", "mpeg"],
    ".mts": ["video", "-f", "mpegts"],
    ".m2ts": ["video", "-f", "mpegts"],
    ".wmv": ["video"],
}


@pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI (make sysdeps)")
def test_a_folder_of_audio_lists_every_format_the_decoder_reads(tmp_path):
    """A file the decoder reads is listed in a folder of audio (with `input.format: audio` a suffix
    missing from the list was left out without a word; in a folder beside wav files it was taken for
    a manifest)."""
    from pipeline.audio import decode

    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=1:sample_rate=16000"]
    picture = ["-f", "lavfi", "-i", "testsrc=duration=1:size=32x32:rate=25"]
    for suffix, opts in MORE_AUDIO.items():
        video = opts[:1] == ["video"]
        inputs = tone + (picture if video else [])
        out = tmp_path / f"clip{suffix.replace('.', '_')}{suffix}"
        cmd = ["ffmpeg", "-nostdin", "-v", "error", "-y", *inputs, *opts[video:], "-shortest", str(out)]
        subprocess.run(cmd, check=True, capture_output=True)
        assert decode(out.read_bytes(), out.name).samples.size > 15000, suffix  # the decoder reads it
    subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", *tone, str(tmp_path / "plain.wav")],
        check=True,
        capture_output=True,
    )
    if shutil.which("sox"):  # NIST SPHERE (TIMIT, Switchboard): ffmpeg has no writer for it
        subprocess.run(["sox", str(tmp_path / "plain.wav"), str(tmp_path / "clip.sph")], check=True)
        assert decode((tmp_path / "clip.sph").read_bytes(), "clip.sph").samples.size > 15000
    want = sorted(p.name for p in tmp_path.glob("*.*"))
    for fmt in ("auto", "audio"):
        t = read(tmp_path, format=fmt)
        assert sorted(p.rsplit("/", 1)[-1] for p in t["path"].to_pylist()) == want, fmt


def test_a_lhotse_multicut_of_one_channel_reads_that_channel_not_the_mix(tmp_path):
    # a MultiCut whose `channel` is [1] loads channel 1 alone in Lhotse (cut.load_audio() has one row),
    # as a MonoCut on channel 1 does: the customer of a stereo call, not the mix of both sides
    lhotse = pytest.importorskip("lhotse")
    source = lhotse.audio.AudioSource

    def rec(rid, sources):
        return lhotse.Recording(rid, sources, sampling_rate=16000, num_samples=160000, duration=10.0)

    call = rec("call", [source(type="file", channels=[0, 1], source="/a/call.wav")])
    mtg = rec("mtg", [source(type="file", channels=[c], source=f"/a/mtg.Headset-{c}.wav") for c in (0, 1)])
    cuts = [
        lhotse.MultiCut("call-1", 1.0, 2.0, [1], recording=call),
        lhotse.MultiCut("mtg-1", 1.0, 2.0, [1], recording=mtg),
        lhotse.MultiCut("call-both", 1.0, 2.0, [0, 1], recording=call),
    ]
    lhotse.CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl")
    t = read(tmp_path / "cuts.jsonl")
    assert t["id"].to_pylist() == ["call-1", "mtg-1", "call-both"]
    assert t["path"].to_pylist() == ["/a/call.wav", "/a/mtg.Headset-1.wav", "/a/call.wav"]
    assert t["_channel"].to_pylist() == [1, None, None]  # the Headset-1 file is channel 1 alone
    assert t["_input_error"].to_pylist() == [None] * 3


def test_a_lhotse_multicut_of_some_channels_of_a_file_is_an_error_row_not_the_mix_of_all(tmp_path):
    # Lhotse loads a MultiCut's channels alone: [0, 1] of a 3-channel file is two rows of audio, not the
    # file's 3. The pipeline analyses one channel or the mix of all: the mix of the file would be other
    # audio than the cut's. Every channel, in any order, is the mix.
    lhotse = pytest.importorskip("lhotse")
    src = lhotse.audio.AudioSource(type="file", channels=[0, 1, 2], source="/a/three.wav")
    rec = lhotse.Recording("three", [src], sampling_rate=16000, num_samples=160000, duration=10.0)
    cuts = [
        lhotse.MultiCut("some", 1.0, 2.0, [0, 1], recording=rec),
        lhotse.MultiCut("all", 1.0, 2.0, [2, 0, 1], recording=rec),
    ]
    assert cuts[0].num_channels == 2  # Lhotse's own count of what the cut holds
    lhotse.CutSet.from_cuts(cuts).to_file(tmp_path / "cuts.jsonl")
    t = read(tmp_path / "cuts.jsonl")
    assert t["id"].to_pylist() == ["some", "all"]
    assert t["path"].to_pylist() == [None, "/a/three.wav"]
    assert t["_channel"].to_pylist() == [None, None]
    err = t["_input_error"].to_pylist()
    assert "'some'" in err[0] and "[0, 1]" in err[0] and err[1] is None


def test_a_lhotse_supervision_that_starts_before_its_recording_is_clipped_to_it(tmp_path):
    # Lhotse keeps supervisions that overhang their cut (a window cut out of a longer one starts in
    # the middle of an utterance: the supervision's start is negative). There is no audio before the
    # recording's start: the row is the part that exists, as Lhotse's own `trim` gives it, not an
    # error row for a negative time. One wholly before the recording is an error row, never the file.
    from pipeline.audio import cut as cut_span

    lhotse = pytest.importorskip("lhotse")
    src = lhotse.audio.AudioSource(type="file", channels=[0], source="/a/rec.wav")
    rec = lhotse.Recording("rec", [src], sampling_rate=16000, num_samples=160000, duration=10.0)
    sup = lhotse.SupervisionSegment
    at0 = lhotse.MonoCut("c0", 0.0, 2.0, 0, recording=rec, supervisions=[sup("s0", "rec", -0.2, 0.5)])
    later = lhotse.MonoCut("c1", 4.0, 2.0, 0, recording=rec, supervisions=[sup("s1", "rec", -0.2, 0.5)])
    gone = lhotse.MonoCut("c2", 0.0, 2.0, 0, recording=rec, supervisions=[sup("s2", "rec", -2.0, 1.0)])
    lhotse.CutSet.from_cuts([at0, later, gone]).to_file(tmp_path / "cuts.jsonl")
    t = read(tmp_path / "cuts.jsonl")
    trimmed = at0.supervisions[0].trim(at0.duration)  # Lhotse: the supervision inside a cut at 0
    assert t["id"].to_pylist() == ["s0", "s1", "s2"]
    assert t["offset_s"][0].as_py() == pytest.approx(trimmed.start)
    assert t["_end_s"][0].as_py() == pytest.approx(trimmed.end)
    # a supervision overhanging a later cut is its span inside the recording, as before
    assert t["offset_s"][1].as_py() == pytest.approx(3.8) and t["_end_s"][1].as_py() == pytest.approx(4.3)
    assert t["_input_error"].to_pylist()[:2] == [None, None]
    samples = np.zeros(160000, np.float32)
    assert cut_span(samples, t["offset_s"][0].as_py(), t["_end_s"][0].as_py()).size == 4800
    assert "before the start of its recording" in t["_input_error"][2].as_py()


@pytest.mark.parametrize("form", ["jsonl", "json", "csv", "tsv", "parquet"])
@pytest.mark.parametrize("first, second", [("offset", "end"), ("start", "duration")])
def test_a_span_given_by_a_start_and_an_end_or_a_duration_is_read_under_every_name(
    tmp_path, form, first, second
):
    # NeMo's `offset` with an `end` (no `duration`), or a `start` with a `duration` (no `end`): the
    # second column was ignored and the row ran over the whole file (from `offset` to its end)
    starts, seconds = [1.5, 4.0], [3.0, 2.5]
    ends = seconds if second == "end" else [s + d for s, d in zip(starts, seconds, strict=True)]
    table = pa.table({"id": ["u1", "u2"], "path": ["/a.wav", "/b.wav"], first: starts, second: seconds})
    path = tmp_path / f"m.{form}"
    if form == "parquet":
        pq.write_table(table, path)
    elif form in ("csv", "tsv"):
        sep = "," if form == "csv" else "\t"
        rows = [sep.join(table.column_names)] + [sep.join(map(str, r.values())) for r in table.to_pylist()]
        path.write_text("\n".join(rows) + "\n")
    elif form == "json":
        path.write_text(json.dumps(table.to_pylist()))
    else:
        path.write_text("".join(json.dumps(r) + "\n" for r in table.to_pylist()))
    t = read(path)
    assert t["offset_s"].to_pylist() == starts
    assert t["_end_s"].to_pylist() == pytest.approx(ends)
    assert first not in t.column_names and second not in t.column_names  # read as the span, not passed on


def test_a_negative_end_other_than_kaldis_minus_one_is_an_error_row_never_the_rest_of_the_file(tmp_path):
    # Kaldi's `segments` write an end of -1 for "to the end of the file"; every negative end was read so,
    # so a span whose end is a bad time (start 0.2 s, end -0.3 s) ran, without a word, as [0.2 s, the
    # end of the recording). -1 keeps its meaning; another negative end is an error row at the cut.
    import soundfile as sf

    from pipeline.prepare import prepare_block

    sf.write(str(tmp_path / "c1.wav"), np.full(5 * 16000, 0.1, np.float32), 16000, subtype="FLOAT")
    rows = [
        {"id": "bad", "audio_filepath": "c1.wav", "start": 0.2, "end": -0.3},
        {"id": "kaldi", "audio_filepath": "c1.wav", "start": 0.2, "end": -1},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    t = read(tmp_path / "m.jsonl")
    assert t["_end_s"].to_pylist() == [-0.3, None]
    (out,) = prepare_block(t, storage=Storage())
    got = {r["id"]: r for r in out.to_pylist()}
    assert "times must be finite and >= 0" in got["bad"]["error"] and got["bad"]["waveform"] is None
    # -1: from 0.2 s to the end of the 5 s file
    assert got["kaldi"]["error"] is None and (got["kaldi"]["start_s"], got["kaldi"]["end_s"]) == (0.2, 5.0)


@pytest.mark.parametrize(
    "name", ["m.csv.gz", "m.tsv.gz", "m.json.gz", "m.ndjson.gz", "wav.scp.gz", "m.CSV.GZ"]
)
def test_a_gzipped_text_manifest_is_read_by_the_format_of_its_name(tmp_path, name):
    # gzipped JSON lines were read by name, but `m.csv.gz` (as corpora and pandas write them) stopped the
    # run asking for input.format, though every text form is decompressed whatever its name
    rows = [
        {"id": "u1", "path": "/a/1.wav", "emo": "ang"},
        {"id": "u2", "path": "/a/2.wav", "emo": "hap"},
    ]
    fmt = name.lower().split(".")[-2]
    if fmt in ("csv", "tsv"):
        sep = "," if fmt == "csv" else "\t"
        body = "\n".join([sep.join(rows[0])] + [sep.join(r.values()) for r in rows]) + "\n"
    elif fmt == "scp":
        body = "".join(f"{r['id']} {r['path']}\n" for r in rows)
    else:
        body = "".join(json.dumps(r) + "\n" for r in rows)
    (tmp_path / name).write_bytes(gzip.compress(body.encode()))
    t = read(tmp_path / name)
    assert t["id"].to_pylist() == ["u1", "u2"] and t["path"].to_pylist() == ["/a/1.wav", "/a/2.wav"]
    if fmt != "scp":
        assert t["emo"].to_pylist() == ["ang", "hap"]


def test_a_nemo_row_with_a_null_offset_runs_its_duration_from_the_start_of_the_file(tmp_path):
    """NeMo reads a null (or absent) `offset` as 0 and `duration` as the span's length: such a row is
    [0, duration), not the whole file; a null `duration` runs from the offset to the end of the file,
    both null the whole file. A 3 s wav made by sox, with the times the rows ask for."""
    from pipeline.prepare import prepare_block

    wav = tmp_path / "tone.wav"
    subprocess.run(
        ["sox", "-n", "-r", "16000", "-c", "1", "-b", "16", str(wav), "synth", "3", "sine", "440"], check=True
    )
    lines = [
        {"audio_filepath": "tone.wav", "offset": None, "duration": 1.5},
        {"audio_filepath": "tone.wav", "offset": 1.0, "duration": None},
        {"audio_filepath": "tone.wav", "offset": None, "duration": None},
        {"audio_filepath": "tone.wav", "duration": 0.75},  # offset absent from the line: null too
        {"audio_filepath": "tone.wav", "offset": 2.0, "duration": 0.5},
    ]
    (tmp_path / "m.json").write_text("".join(json.dumps(r) + "\n" for r in lines))
    table = read(tmp_path / "m.json")
    (out,) = prepare_block(table, storage=Storage())
    got = [(r["id"], r["start_s"], r["end_s"], r["duration_s"], r["error"]) for r in out.to_pylist()]
    assert got == [
        ("tone.wav@0.000-1.500", 0.0, 1.5, 1.5, None),
        ("tone.wav@1.000-", 1.0, 3.0, 2.0, None),
        ("tone.wav", None, None, 3.0, None),
        ("tone.wav@0.000-0.750", 0.0, 0.75, 0.75, None),
        ("tone.wav@2.000-2.500", 2.0, 2.5, 0.5, None),
    ]


def _hf_shard(path, seconds: list[float], label: str) -> None:
    """A Hugging Face Parquet shard as `datasets` writes it: audio given as bytes (wavs made by sox)
    without a name, so the `Audio` struct holds no path and the default id is `<shard name>:<row>`."""
    datasets = pytest.importorskip("datasets")
    clips = []
    for s in seconds:
        cmd = [
            "sox",
            "-n",
            "-r",
            "16000",
            "-c",
            "1",
            "-b",
            "16",
            "-t",
            "wav",
            "-",
            "synth",
            str(s),
            "sine",
            "300",
        ]
        clips.append({"bytes": subprocess.run(cmd, check=True, capture_output=True).stdout, "path": None})
    ds = datasets.Dataset.from_dict({"audio": clips, "label": [label] * len(clips)})
    ds = ds.cast_column("audio", datasets.Audio(sampling_rate=16000))
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.to_parquet(str(path))


def _checked_ids(manifest, **kw) -> list[str]:
    """The ids of every row, after the uniqueness checks the job makes before any work (per file,
    then across files)."""
    from pipeline.manifest import check_unique_across

    cfg = InputConfig(manifest=str(manifest), **kw)
    sources = discover(cfg, Storage())
    details = [count_rows(s, cfg, Storage()) for s in sources]
    check_unique_across([s.uri for s in sources], [c.ids for c in details])
    return read(manifest, **kw)["id"].to_pylist()


def test_default_ids_of_shards_of_one_name_in_config_folders_are_their_relative_paths(tmp_path):
    """A Hugging Face dataset with several configs keeps `data/<config>/train-00000-of-00001.parquet`:
    rows named by `<file>:<row>` in two configs had the same id and the job refused them as duplicates.
    Shards whose names repeat are named by their path under the manifest's folder (or glob) instead;
    where names do not repeat the ids stay as they were (outputs written before resume unchanged)."""
    data = tmp_path / "data"
    name = "train-00000-of-00001.parquet"
    _hf_shard(data / "calm" / name, [0.5, 0.6], "calm")
    _hf_shard(data / "angry" / name, [0.7], "angry")
    _hf_shard(data / "angry" / "test-00000-of-00001.parquet", [0.8], "angry")
    expected = [f"angry/{name}:1", "test-00000-of-00001.parquet:1", f"calm/{name}:1", f"calm/{name}:2"]
    assert sorted(_checked_ids(data)) == sorted(expected)
    assert sorted(_checked_ids(f"{data}/*/*.parquet")) == sorted(expected)
    # one config: names do not repeat, the ids are the shard's name as before
    assert sorted(_checked_ids(data / "calm")) == [f"{name}:1", f"{name}:2"]
    assert sorted(_checked_ids(f"{data}/angry/*.parquet")) == sorted(
        [f"{name}:1", "test-00000-of-00001.parquet:1"]
    )


LIBRISPEECH_TEXT = {  # <speaker>-<chapter>-<utterance>: transcript, as a LibriSpeech .trans.txt holds them
    "84-121123-0000": "GO DO YOU HEAR",
    "84-121123-0001": "BUT IN LESS THAN FIVE MINUTES THE STAIRCASE GROANED",
    "174-50561-0000": "FORGOTTEN TOO THE NAME OF GILLIAN THE LOVELY CAPTIVE",
}


def librispeech(root):
    """A LibriSpeech release as openslr.org unpacks it: `<part>/<speaker>/<chapter>/*.flac`, the
    chapter's `<speaker>-<chapter>.trans.txt` beside its flac files, and README/LICENSE/SPEAKERS/CHAPTERS
    text files at the top. The speech is espeak-ng's, written as 16 kHz flac by sox."""
    from pipeline.testing.samples import synthesize

    chapters: dict = {}
    for utt, words in LIBRISPEECH_TEXT.items():
        spk, chapter, _ = utt.split("-")
        d = root / "LibriSpeech" / "dev-clean" / spk / chapter
        synthesize(words.lower(), d / f"{utt}.flac")
        chapters.setdefault(d / f"{spk}-{chapter}.trans.txt", []).append(f"{utt} {words}\n")
    for path, lines in chapters.items():
        path.write_text("".join(lines))
    top = root / "LibriSpeech"
    (top / "README.TXT").write_text("LibriSpeech ASR corpus\n======================\n\nIdentifier: SLR12\n")
    (top / "LICENSE.TXT").write_text("Creative Commons Attribution 4.0 International\n")
    (top / "SPEAKERS.TXT").write_text(
        "; ID      |SEX| SUBSET           |MINUTES| NAME\n84   | F | dev-clean        |  8.02 | Christie\n"
        "174  | M | dev-clean        |  8.04 | Peter\n"
    )
    (top / "CHAPTERS.TXT").write_text(
        "; ID    |READER|MINUTES| SUBSET   |PROJ.|BOOK ID| CH. TITLE | PROJECT TITLE\n"
        "121123 |  84  | 8.02  | dev-clean| 1    | 1601  | Chapter 1 | Sense and Sensibility\n"
    )
    return top


@pytest.mark.skipif(not (shutil.which("sox") and shutil.which("espeak-ng")), reason="needs sox and espeak-ng")
def test_a_librispeech_folder_is_read_as_its_flac_files_and_its_text_files_are_skipped(tmp_path):
    """A folder of audio holds other files beside the audio (LibriSpeech: `.trans.txt` per chapter,
    README/LICENSE at the top): only a file whose name a manifest format reads makes it a mix of
    manifests and audio; the rest are skipped, never taken for manifests (it was refused as one)."""
    top = librispeech(tmp_path)
    for folder, prefix in ((top, "dev-clean/"), (top / "dev-clean", "")):
        t = read(folder)
        ids = sorted(f"{prefix}{u.split('-')[0]}/{u.split('-')[1]}/{u}" for u in LIBRISPEECH_TEXT)
        assert sorted(t["id"].to_pylist()) == ids, folder
        assert all(p.endswith(".flac") for p in t["path"].to_pylist())
    # a file a manifest format reads by its name beside the audio still makes a mix: say so
    (top / "dev-clean" / "84" / "metadata.csv").write_text("id,path\n")
    with pytest.raises(ManifestError, match="mixes manifests .metadata.csv"):
        read(top)
    # the transcripts come in through Lhotse's recipe and the command docs/corpora.md gives
    cli = shutil.which("lhotse") or str(Path(sys.executable).parent / "lhotse")
    if not Path(cli).exists():
        pytest.skip("the lhotse command is not installed")
    (top / "dev-clean" / "84" / "metadata.csv").unlink()
    out = tmp_path / "lhotse"
    subprocess.run(
        [cli, "prepare", "librispeech", "-p", "dev-clean", top, out], check=True, capture_output=True
    )
    parts = [out / f"librispeech_{m}_dev-clean.jsonl.gz" for m in ("recordings", "supervisions")]
    cuts = out / "cuts_dev-clean.jsonl.gz"
    subprocess.run(
        [cli, "cut", "simple", "-r", parts[0], "-s", parts[1], cuts], check=True, capture_output=True
    )
    t = read(cuts)
    assert dict(zip(t["id"].to_pylist(), t["text"].to_pylist(), strict=True)) == LIBRISPEECH_TEXT
    assert sorted(t["speaker"].to_pylist()) == ["174", "84", "84"]


def test_lhotse_recordings_or_supervisions_are_refused_naming_the_file_and_the_cutset_to_make(tmp_path):
    """Lhotse recipes write `<corpus>_recordings_<part>.jsonl.gz` and `<corpus>_supervisions_<part>...`;
    either named as input.manifest was read as a manifest without a path column, or (under
    `input.format: lhotse`) as cuts without recordings. Both are refused naming the file and the
    `lhotse cut simple` command that joins them into the CutSet the pipeline reads; that CutSet reads."""
    lhotse = pytest.importorskip("lhotse")
    recs = lhotse.RecordingSet.from_recordings(
        lhotse.Recording(
            f"rec{k}",
            [lhotse.audio.AudioSource(type="file", channels=[0], source=f"/data/rec{k}.flac")],
            sampling_rate=16000,
            num_samples=48000,
            duration=3.0,
        )
        for k in range(2)
    )
    sups = lhotse.SupervisionSet.from_segments(
        lhotse.SupervisionSegment(f"rec{k}-utt", f"rec{k}", start=0.5, duration=2.0, text="HELLO")
        for k in range(2)
    )
    d = tmp_path / "manifests"
    d.mkdir()
    recordings, supervisions = d / "corpus_recordings_dev.jsonl.gz", d / "corpus_supervisions_dev.jsonl.gz"
    recs.to_file(recordings)
    sups.to_file(supervisions)
    command = f"lhotse cut simple -r {recordings} -s {supervisions} cuts.jsonl.gz"
    for named, kind, kw in (
        (recordings, "RecordingSet", {}),
        (supervisions, "SupervisionSet", {}),
        (d, "RecordingSet", {}),  # the recipe's output folder: its first file
        (recordings, "RecordingSet", {"format": "lhotse"}),
        (supervisions, "SupervisionSet", {"format": "lhotse"}),
    ):
        with pytest.raises(ManifestError) as e:
            read(named, **kw)
        msg = str(e.value)
        assert msg.startswith(f"{named if named != d else recordings}:"), msg
        assert f"a Lhotse {kind}" in msg and command in msg, msg
    # a supervision manifest named with its audio (a path template) is a manifest of spans, as any other
    t = read(supervisions, path_template="/data/{recording_id}.flac")
    assert t["path"].to_pylist() == ["/data/rec0.flac", "/data/rec1.flac"]
    assert t["offset_s"].to_pylist() == [0.5, 0.5] and t["_end_s"].to_pylist() == [2.5, 2.5]
    # the command the message gives, run as it stands, makes a CutSet that reads
    cli = shutil.which("lhotse") or str(Path(sys.executable).parent / "lhotse")
    if not Path(cli).exists():
        pytest.skip("the lhotse command is not installed")
    subprocess.run([cli, *command.split()[1:]], check=True, cwd=tmp_path, capture_output=True)
    t = read(tmp_path / "cuts.jsonl.gz")
    assert sorted(t["id"].to_pylist()) == ["rec0-utt", "rec1-utt"]
    assert sorted(t["path"].to_pylist()) == ["/data/rec0.flac", "/data/rec1.flac"]
    assert t["text"].to_pylist() == ["HELLO", "HELLO"] and t["offset_s"].to_pylist() == [0.5, 0.5]


def test_a_lhotse_multicut_reads_each_supervision_on_its_own_channel_where_they_name_several(tmp_path):
    """A MultiCut of a stereo call (Fisher, Switchboard: `CutSet.from_manifests` on 2-channel recordings)
    holds supervisions on channel 0 and 1: each is read on its own channel, as Lhotse's `to_mono()` puts
    it, not on the mix of both sides; decided per recording over the CutSet, so a window holding one side's
    supervisions only is still that side. Where a recording's supervisions all name one channel (Lhotse's
    default, 0, on audio diarised as a mix), the MultiCut is the mix, as before."""
    lhotse = pytest.importorskip("lhotse")
    source = lhotse.audio.AudioSource

    def rec(rid, sources):
        return lhotse.Recording(rid, sources, sampling_rate=16000, num_samples=160000, duration=10.0)

    recs = [
        rec("call", [source(type="file", channels=[0, 1], source="/a/call.wav")]),
        rec("mtg", [source(type="file", channels=[c], source=f"/a/mtg.Headset-{c}.wav") for c in (0, 1)]),
        rec("room", [source(type="file", channels=[0, 1], source="/a/room.wav")]),
    ]
    sup = lhotse.SupervisionSegment
    sups = [
        sup("call-A", "call", start=1.0, duration=2.0, channel=0),
        sup("call-B", "call", start=2.5, duration=2.0, channel=[1]),  # a list of one is that channel
        sup("call-AB", "call", start=6.0, duration=1.0, channel=[0, 1]),  # both sides laugh: the mix
        sup("mtg-A", "mtg", start=1.0, duration=1.0, channel=0),
        sup("mtg-B", "mtg", start=2.0, duration=1.0, channel=1),
        sup("room-1", "room", start=1.0, duration=1.0),  # channel 0 by Lhotse's default
        sup("room-2", "room", start=3.0, duration=1.0),
    ]
    cuts = lhotse.CutSet.from_manifests(
        recordings=lhotse.RecordingSet.from_recordings(recs),
        supervisions=lhotse.SupervisionSet.from_segments(sups),
    )
    assert {type(c).__name__ for c in cuts} == {"MultiCut"}
    cuts.to_file(tmp_path / "cuts.jsonl")
    want = {  # id: (path, channel of that file; None: the file's mix or a one-channel file)
        "call-A": ("/a/call.wav", 0),
        "call-B": ("/a/call.wav", 1),
        "call-AB": ("/a/call.wav", None),
        "mtg-A": ("/a/mtg.Headset-0.wav", None),
        "mtg-B": ("/a/mtg.Headset-1.wav", None),
        "room-1": ("/a/room.wav", None),
        "room-2": ("/a/room.wav", None),
    }
    t = read(tmp_path / "cuts.jsonl")
    got = {r["id"]: (r["path"], r["_channel"]) for r in t.to_pylist()}
    assert got == want
    assert t["_input_error"].to_pylist() == [None] * len(want)
    assert t["offset_s"].to_pylist() == [
        s.start for s in sorted(sups, key=lambda s: (s.recording_id, s.start))
    ]
    # windows of the call, each holding one side's supervision only: still that side, not the mix
    [call] = [c for c in cuts if c.recording_id == "call"]
    windows = [
        call.truncate(offset=0.5, duration=3.0, keep_excessive_supervisions=False),
        call.truncate(offset=2.4, duration=2.2, keep_excessive_supervisions=False),
    ]
    assert [[s.id for s in w.supervisions] for w in windows] == [["call-A"], ["call-B"]]
    lhotse.CutSet.from_cuts(windows).to_file(tmp_path / "windows_cuts.jsonl")
    t = read(tmp_path / "windows_cuts.jsonl")
    assert t["id"].to_pylist() == ["call-A", "call-B"] and t["_channel"].to_pylist() == [0, 1]
    assert t["offset_s"].to_pylist() == [1.0, 2.5] and t["_input_error"].to_pylist() == [None, None]
    # a MultiCut of some channels of a 3-channel file: a supervision on one of them is that channel alone;
    # one on a channel the cut does not hold (Lhotse's to_mono() drops it) is an error row that says so
    src = source(type="file", channels=[0, 1, 2], source="/a/three.wav")
    three = lhotse.Recording("three", [src], sampling_rate=16000, num_samples=160000, duration=10.0)
    on = [sup(f"three-{c}", "three", start=1.0 + c, duration=1.0, channel=c) for c in (0, 1, 2)]
    cut = lhotse.MultiCut("some", 0.0, 10.0, [0, 1], recording=three, supervisions=on)
    assert [len(m.supervisions) for m in cut.to_mono()] == [1, 1]  # three-2 is in neither
    lhotse.CutSet.from_cuts([cut]).to_file(tmp_path / "some_cuts.jsonl")
    t = read(tmp_path / "some_cuts.jsonl")
    assert t["path"].to_pylist() == ["/a/three.wav"] * 2 + [None] and t["_channel"].to_pylist() == [
        0,
        1,
        None,
    ]
    errors = t["_input_error"].to_pylist()
    assert errors[:2] == [None, None] and "'three-2' is on channel 2" in errors[2] and "'some'" in errors[2]
