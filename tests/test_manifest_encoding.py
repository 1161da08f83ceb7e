"""Text manifests that are not UTF-8 (a Latin-1 CSV from a spreadsheet, a JSON-lines file with stray
bytes): refused naming the file, line and column, never read with the text taken for audio bytes or
written to the output as invalid strings."""

import pytest

from pipeline.config import InputConfig
from pipeline.manifest import ManifestError, count_rows, discover
from pipeline.storage import Storage

CAFE = "café".encode("latin-1")  # é is one byte in Latin-1, an invalid sequence in UTF-8


def count(path, **kw):
    cfg = InputConfig(manifest=str(path), **kw)
    storage = Storage()
    return count_rows(discover(cfg, storage)[0], cfg, storage)


@pytest.mark.parametrize("sep,name", [(b",", "m.csv"), (b"\t", "m.tsv")])
def test_a_latin1_csv_is_refused_naming_file_line_and_column_not_read_as_audio_bytes(tmp_path, sep, name):
    # without the check Arrow reads the text column as binary: the column picker takes it for embedded
    # audio (then an Arrow error naming a column number, not the encoding), or, told the path, it
    # passes through to the output as bytes
    lines = [b"id" + sep + b"path" + sep + b"text", b"a" + sep + b"a.wav" + sep + b"hello"]
    lines.append(b"b" + sep + b"b.wav" + sep + CAFE)
    (tmp_path / name).write_bytes(b"\n".join(lines) + b"\n")
    for kw in ({}, {"path_column": "path"}):  # told the path: the text passed through as bytes
        with pytest.raises(ManifestError, match=rf"{name}: line 3: not UTF-8 text .*column 'text'"):
            count(tmp_path / name, **kw)


def test_a_json_lines_manifest_with_invalid_utf8_is_refused_naming_file_and_line(tmp_path):
    # without the check the bytes reach the output Parquet, which DuckDB then refuses to read
    good = b'{"id": "a", "path": "a.wav", "text": "hello"}\n'
    bad = b'{"id": "b", "path": "b.wav", "text": "' + CAFE + b'"}\n'
    (tmp_path / "m.jsonl").write_bytes(good + good.replace(b'"a"', b'"c"') + bad)
    with pytest.raises(ManifestError, match=r"m\.jsonl: line 3: not UTF-8 text"):
        count(tmp_path / "m.jsonl")


def test_utf8_text_beyond_ascii_is_read_as_written(tmp_path):
    (tmp_path / "m.csv").write_text("id,path,text\nb,b.wav,café 日本\n", encoding="utf-8")
    got = count(tmp_path / "m.csv")
    assert got.rows == 1 and str(got.schema.field("text").type) == "string"
