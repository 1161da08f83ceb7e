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


def _latin1_as_string(values: list[bytes]):
    # what a writer other than Arrow may store: Latin-1 bytes under a Parquet `string` column (Arrow
    # reads them without a check; `view` makes the same array here)
    import pyarrow as pa

    return pa.array(values, pa.binary()).view(pa.string())


@pytest.mark.parametrize("column", ["path", "text", "tags"])
def test_a_parquet_manifest_with_invalid_utf8_text_is_refused_naming_row_and_column(tmp_path, column):
    # without the check a path fails in the decode task as no error row can say, and a passthrough
    # value reaches the output Parquet, which DuckDB then refuses to read
    import pyarrow as pa
    import pyarrow.parquet as pq

    cols = {
        "id": pa.array(["a", "b", "c"]),
        "path": pa.array(["a.wav", "b.wav", "c.wav"]),
        "text": pa.array(["hello", "café 日本", None]),
        "tags": pa.array([["x"], [], None], pa.list_(pa.string())),
    }
    if column == "tags":
        cols["tags"] = pa.ListArray.from_arrays(pa.array([0, 1, 1, 2]), _latin1_as_string([b"x", CAFE]))
    else:
        good = [v.encode() if v else b"" for v in cols[column].to_pylist()]
        cols[column] = _latin1_as_string(good[:2] + [CAFE])
    pq.write_table(pa.table(cols), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=rf"m\.parquet: row 3: column '{column}' is not UTF-8 text"):
        count(tmp_path / "m.parquet")


def test_the_parquet_utf8_check_counts_rows_from_1_as_every_other_manifest_message(tmp_path):
    # the check named the row counted from 0 ("row 4999" for the 5000th), while a missing or repeated
    # id of the same file, and every line manifest, are counted from 1: the row it named was a good one
    import pyarrow as pa
    import pyarrow.parquet as pq

    n = 5000  # past the check's first batch of rows
    text = [b"fine"] * n
    text[n - 1] = CAFE
    ids = [f"u{i}" for i in range(n)]
    paths = [f"{i}.wav" for i in range(n)]
    pq.write_table(
        pa.table({"id": ids, "path": paths, "text": _latin1_as_string(text)}), tmp_path / "m.parquet"
    )
    with pytest.raises(ManifestError, match=r"m\.parquet: row 5000: column 'text' is not UTF-8 text"):
        count(tmp_path / "m.parquet")
    ids[n - 1] = None  # the same row, without its id: named as row 5000 too
    pq.write_table(pa.table({"id": ids, "path": paths}), tmp_path / "m.parquet")
    with pytest.raises(ManifestError, match=r"the first is row 5000\)"):
        count(tmp_path / "m.parquet")


def test_a_parquet_manifest_of_embedded_audio_is_checked_without_reading_the_audio(tmp_path):
    # the audio bytes are binary, not text: whatever they hold, the manifest reads
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(
        pa.table({"id": ["a"], "audio": pa.array([b"RIFF" + CAFE], pa.binary()), "text": ["café"]}),
        tmp_path / "m.parquet",
    )
    assert count(tmp_path / "m.parquet").rows == 1
