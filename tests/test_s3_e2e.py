"""Manifest, audio and output on s3:// against moto's S3 server over real HTTP on 127.0.0.1."""

import json
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pytest

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "jobs"))
import extract  # noqa: E402

pytestmark = pytest.mark.s3


def test_s3_manifest_audio_and_output(ray_session, s3_server, s3_bucket, tiny_model_dir, tmp_path):
    from pipeline.testing.samples import synthesize

    client, bucket = s3_bucket
    lines = []
    for i, text in enumerate(["good morning", "this is terrible", "wow"]):
        local = synthesize(text, tmp_path / f"c{i}.flac", pitch=40 + 10 * i)
        client.upload_file(str(local), bucket, f"corpus/audio/c{i}.flac")
        lines.append(json.dumps({"key": f"k{i}", "wav": f"audio/c{i}.flac", "emo": ["hap", "ang", "sur"][i]}))
    lines.append(json.dumps({"key": "missing", "wav": "audio/does-not-exist.flac", "emo": "neu"}))
    client.put_object(Bucket=bucket, Key="corpus/manifest.jsonl", Body="\n".join(lines).encode())

    cfg = tmp_path / "s3.yaml"
    cfg.write_text(
        f"input:\n  manifest: s3://{bucket}/corpus/manifest.jsonl\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cpu\n"
        f"output:\n  path: s3://{bucket}/features/run1\n  max_error_fraction: 0.5\n"
        f"storage:\n  endpoint_url: {s3_server}\n"
    )
    assert extract.main(["--config", str(cfg)]) == 0

    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="features/run1/")["Contents"]]
    assert any(k.endswith(".parquet") for k in keys) and "features/run1/_run.json" in keys
    fs = pafs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http", region="us-east-1")
    rows = {
        r["id"]: r
        for r in pads.dataset(f"{bucket}/features/run1", filesystem=fs, format="parquet")
        .to_table()
        .to_pylist()
    }
    assert sorted(rows) == ["k0", "k1", "k2", "missing"]
    assert all(rows[k]["error"] is None and rows[k]["label"] for k in ("k0", "k1", "k2"))
    assert rows["k1"]["emo"] == "ang" and rows["k0"]["path"] == f"s3://{bucket}/corpus/audio/c0.flac"
    err = rows["missing"]["error"]
    assert err.startswith("fetch: FileNotFoundError") and "does-not-exist.flac" in err
    assert rows["missing"]["embedding"] is None

    run = json.loads(client.get_object(Bucket=bucket, Key="features/run1/_run.json")["Body"].read())
    assert run["rows"] == {"input": 4, "ok": 3, "error": 1, "skipped": 0}
    assert "testing" not in json.dumps(run)  # no credentials leak into the summary


def test_error_fraction_above_threshold_exits_3_after_writing(
    ray_session, s3_server, s3_bucket, tiny_model_dir, tmp_path
):
    client, bucket = s3_bucket
    client.put_object(
        Bucket=bucket,
        Key="m.jsonl",
        Body=b'{"id": "a", "path": "nope1.wav"}\n{"id": "b", "path": "nope2.wav"}',
    )
    cfg = tmp_path / "s3.yaml"
    cfg.write_text(
        f"input:\n  manifest: s3://{bucket}/m.jsonl\nmodel:\n  source: {tiny_model_dir}\n"
        f"output:\n  path: s3://{bucket}/out\nstorage:\n  endpoint_url: {s3_server}\n"
    )
    assert extract.main(["--config", str(cfg)]) == 3
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    assert "out/_run.json" in keys and any(k.endswith(".parquet") for k in keys)
