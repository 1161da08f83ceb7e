import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from pipeline.config import InputConfig
from pipeline.manifest import ManifestError, read_manifest
from pipeline.storage import Storage


def read(path, **kw):
    return read_manifest(InputConfig(manifest=str(path), **kw), Storage())


def test_nemo_csv_with_relative_paths_and_passthrough(tmp_path):
    (tmp_path / "m.csv").write_text(
        "audio_filepath,duration,text,speaker\na/1.wav,1.5,hello,s1\nb/2.flac,2.0,bye,s2\n"
    )
    m = read(tmp_path / "m.csv", id_column="audio_filepath", audio_root="/data")
    assert m.table["path"].to_pylist() == ["/data/a/1.wav", "/data/b/2.flac"]
    assert m.table["id"].to_pylist() == ["a/1.wav", "b/2.flac"]
    assert m.passthrough == ["duration", "text", "speaker"]
    assert m.table["duration"].type == pa.float64()


def test_jsonl_aliases_resolve_against_manifest_dir(tmp_path):
    rows = [
        {"key": "u1", "source": "x.wav", "emo": "hap"},
        {"key": "u2", "source": "/abs/y.wav", "emo": "sad"},
    ]
    (tmp_path / "m.jsonl").write_text("\n".join(json.dumps(r) for r in rows))
    m = read(tmp_path / "m.jsonl")
    assert (m.id_column, m.path_column) == ("key", "source")
    assert m.table["path"].to_pylist() == [str(tmp_path / "x.wav"), "/abs/y.wav"]
    assert m.table["emo"].to_pylist() == ["hap", "sad"]


def test_wav_scp_tsv_json_parquet(tmp_path):
    (tmp_path / "wav.scp").write_text("u1 /a/1.wav\nu2 /a/my file.wav\n\n")
    assert read(tmp_path / "wav.scp").table["path"].to_pylist() == ["/a/1.wav", "/a/my file.wav"]
    (tmp_path / "m.tsv").write_text("utt_id\twav\tlabel\nu1\t/a.wav\tang\n")
    m = read(tmp_path / "m.tsv")
    assert m.renamed == {"label": "manifest_label"} and m.table["manifest_label"].to_pylist() == ["ang"]
    (tmp_path / "m.json").write_text(json.dumps([{"id": 1, "path": "/a.wav"}, {"id": 2, "path": "/b.wav"}]))
    assert read(tmp_path / "m.json").table["id"].to_pylist() == ["1", "2"]
    pq.write_table(pa.table({"id": ["a"], "path": ["/a.wav"], "n": [3]}), tmp_path / "m.parquet")
    assert read(tmp_path / "m.parquet").passthrough == ["n"]


def test_duplicate_ids_are_refused_naming_one(tmp_path):
    (tmp_path / "m.csv").write_text("id,path\nu1,a.wav\nu2,b.wav\nu1,c.wav\n")
    with pytest.raises(
        ManifestError, match=r"duplicate ids: 1 ids occur more than once, e.g. 'u1' \(2 times\)"
    ):
        read(tmp_path / "m.csv")


def test_missing_columns_and_files(tmp_path):
    (tmp_path / "m.csv").write_text("name,file\nu1,a.wav\n")
    with pytest.raises(ManifestError, match="no id column"):
        read(tmp_path / "m.csv")
    with pytest.raises(ManifestError, match="input.path_column='wav' is not a column"):
        read(tmp_path / "m.csv", id_column="name", path_column="wav")
    with pytest.raises(ManifestError, match="no such file"):
        read(tmp_path / "missing.jsonl")
    (tmp_path / "m.txt").write_text("x")
    with pytest.raises(ManifestError, match="set input.format"):
        read(tmp_path / "m.txt")
