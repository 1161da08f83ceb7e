"""Manifest, audio and output on s3:// against moto's S3 server over real HTTP on 127.0.0.1."""

import io
import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from pipeline.cli import extract

ROOT = Path(__file__).resolve().parent.parent

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


def test_credentials_stay_out_of_logs_summary_and_files(s3_server, s3_bucket, tiny_model_dir, tmp_path):
    """Distinctive fake credentials in the environment and in a profile file: the job (its own
    process, so its Ray workers inherit that environment) must never echo them."""
    from pipeline.testing.samples import synthesize

    secrets = {
        "AWS_ACCESS_KEY_ID": "AKIAENVLEAKCHECK7Q2Z",
        "AWS_SECRET_ACCESS_KEY": "envSecret/LeakCheck+9f3Kq2Wd7Xv",
        "AWS_SESSION_TOKEN": "envSessionTokenLeakCheckZ81",
    }
    profile_key, profile_secret = "AKIAPROFILELEAKCHK55", "profileSecret/LeakCheck+4hT8Rb"
    creds = tmp_path / "aws-credentials"
    creds.write_text(
        f"[e2v-leak-check]\naws_access_key_id = {profile_key}\naws_secret_access_key = {profile_secret}\n"
    )
    client, bucket = s3_bucket
    client.upload_file(str(synthesize("hello there", tmp_path / "a.flac")), bucket, "c/a.flac")
    client.put_object(Bucket=bucket, Key="c/m.jsonl", Body=b'{"id": "a", "path": "a.flac"}\n')
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: s3://{bucket}/c/m.jsonl\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cpu\n"
        f"output:\n  path: s3://{bucket}/out\n"
        f"storage:\n  endpoint_url: {s3_server}\n  profile: e2v-leak-check\n"
        f"ray:\n  num_cpus: 2\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(secrets, AWS_SHARED_CREDENTIALS_FILE=str(creds), PYTHONPATH=str(ROOT))
    job = subprocess.run(
        [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg), "--log-level", "DEBUG"],
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert job.returncode == 0, job.stderr[-3000:]

    run = client.get_object(Bucket=bucket, Key="out/_run.json")["Body"].read().decode()
    assert "e2v-leak-check" in run  # the profile name is no secret: proves the config was recorded
    searched = {"stdout": job.stdout, "stderr": job.stderr, "_run.json": run}
    keys = [o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="out/")["Contents"]]
    parquet = [k for k in keys if k.endswith(".parquet")]
    assert parquet
    for key in parquet:
        data = client.get_object(Bucket=bucket, Key=key)["Body"].read()
        meta = pq.ParquetFile(io.BytesIO(data)).metadata
        searched[key] = repr(meta.metadata) + repr(meta.schema.to_arrow_schema().metadata)
        searched[key + " (raw bytes)"] = data.decode("latin-1")
    for secret in [*secrets.values(), profile_key, profile_secret]:
        leaks = [where for where, text in searched.items() if secret in text]
        assert not leaks, f"{secret!r} appears in {leaks}"


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


def test_a_throttling_bucket_costs_retries_not_rows(
    ray_session, s3_server, s3_bucket, tiny_model_dir, tmp_path
):
    """Every 4th request to S3 answers 503 SlowDown (a proxy in front of moto): every row is still ok,
    and `_run.json` counts the retries."""
    from pipeline.testing.samples import synthesize

    from .test_storage import FaultProxy

    client, bucket = s3_bucket
    lines = []
    for i in range(4):
        local = synthesize(f"number {i} please", tmp_path / f"t{i}.wav", pitch=30 + 10 * i)
        client.upload_file(str(local), bucket, f"slow/audio/t{i}.wav")
        lines.append(json.dumps({"id": f"t{i}", "path": f"audio/t{i}.wav"}))
    client.put_object(Bucket=bucket, Key="slow/manifest.jsonl", Body="\n".join(lines).encode())
    with FaultProxy(s3_server, fail_every=4) as proxy:
        cfg = tmp_path / "slow.yaml"
        cfg.write_text(
            f"input:\n  manifest: s3://{bucket}/slow/manifest.jsonl\n"
            f"model:\n  source: {tiny_model_dir}\n  device: cpu\n"
            f"output:\n  path: s3://{bucket}/slow/out\n"
            f"storage:\n  endpoint_url: {proxy.url}\n  retry_backoff_s: 0.05\n  retry_backoff_max_s: 0.2\n"
        )
        assert extract.main(["--config", str(cfg)]) == 0
        assert proxy.failed > 0
    run = json.loads(client.get_object(Bucket=bucket, Key="slow/out/_run.json")["Body"].read())
    assert run["rows"] == {"input": 4, "ok": 4, "error": 0, "skipped": 0}
    assert run["storage_retries"] > 0


def _parquet_manifest(client, bucket: str, tmp_path, prefix: str, n: int) -> str:
    """`n` rows of spoken audio on S3 and a Parquet manifest naming them (small row groups: many
    ranged reads) -> the manifest's key."""
    import pyarrow as pa

    from pipeline.testing.samples import synthesize

    clip = synthesize("one two three", tmp_path / "clip.wav")
    for i in range(n):
        client.upload_file(str(clip), bucket, f"{prefix}/audio/p{i}.wav")
    table = pa.table({"id": [f"p{i}" for i in range(n)], "path": [f"audio/p{i}.wav" for i in range(n)]})
    sink = io.BytesIO()
    pq.write_table(table, sink, row_group_size=3)
    client.put_object(Bucket=bucket, Key=f"{prefix}/manifest.parquet", Body=sink.getvalue())
    return f"{prefix}/manifest.parquet"


@pytest.mark.slow  # about 80 s on 2 cores
def test_a_throttled_parquet_manifest_costs_retries_not_the_job(
    ray_session, s3_server, s3_bucket, tiny_model_dir, tmp_path
):
    """Every other GET of the Parquet manifest (count pass and read tasks) answers 503 SlowDown, and
    every 5th request of any kind: the job ends 0 with every row once."""
    from .test_storage import FaultProxy

    client, bucket = s3_bucket
    key = _parquet_manifest(client, bucket, tmp_path, "pq", 12)
    manifest_gets = []

    def every_other_manifest_get(method: str, path: str) -> bool:
        if method != "GET" or not path.split("?")[0].endswith(key):
            return False
        manifest_gets.append(path)
        return len(manifest_gets) % 2 == 1

    with FaultProxy(s3_server, fail_every=5, fail_if=every_other_manifest_get) as proxy:
        cfg = tmp_path / "pq.yaml"
        cfg.write_text(
            f"input:\n  manifest: s3://{bucket}/{key}\n  rows_per_unit: 4\n"
            f"model:\n  source: {tiny_model_dir}\n  device: cpu\n"
            f"audio:\n  decode_batch_size: 2\n"
            f"output:\n  path: s3://{bucket}/pq/out\n"
            f"storage:\n  endpoint_url: {proxy.url}\n  retry_backoff_s: 0.05\n  retry_backoff_max_s: 0.2\n"
        )
        assert extract.main(["--config", str(cfg)]) == 0
    failed_manifest_gets = [p for m, p in proxy.failures if m == "GET" and p.split("?")[0].endswith(key)]
    assert len(failed_manifest_gets) >= 2  # the count pass and the read tasks both met a 503
    fs = pafs.S3FileSystem(endpoint_override=s3_server.split("://")[1], scheme="http", region="us-east-1")
    ids = pads.dataset(f"{bucket}/pq/out", filesystem=fs, format="parquet").to_table()["id"].to_pylist()
    assert sorted(ids) == sorted(f"p{i}" for i in range(12))  # every row, once
    run = json.loads(client.get_object(Bucket=bucket, Key="pq/out/_run.json")["Body"].read())
    assert run["rows"] == {"input": 12, "ok": 12, "error": 0, "skipped": 0}


def test_a_manifest_store_that_stays_down_is_not_bad_input(ray_session, s3_server, s3_bucket, tmp_path):
    """Storage failing through every retry while a task reads the manifest: the read task's failure
    reaches the driver as StorageUnavailable, which restarts the pipeline (not exit 2, "bad input");
    in the count pass (a Ray task per source, or the driver's thread for one source) it ends the run
    as failed (exit 1: rerun), not as a bad manifest."""
    import ray.data

    from pipeline import run as job
    from pipeline.config import parse_config
    from pipeline.manifest import Piece, Plan, Source
    from pipeline.manifest.tasks import read_task
    from pipeline.storage import Storage

    from .test_storage import FaultProxy

    client, bucket = s3_bucket
    key = _parquet_manifest(client, bucket, tmp_path, "down", 4)
    uri = f"s3://{bucket}/{key}"
    cfg = parse_config({"input": {"manifest": uri}, "output": {"path": str(tmp_path / "out")}})
    source = Source(uri, "parquet", "k", f"s3://{bucket}/down")
    with FaultProxy(s3_server, always=True) as proxy:
        storage = Storage(
            endpoint_url=proxy.url, max_retries=1, retry_backoff_s=0.01, retry_backoff_max_s=0.02
        )
        with pytest.raises(job.RunFailed, match="StorageUnavailable: .*still failing after 2 attempts"):
            job._count(cfg, storage, [source, source])  # several sources: counted by Ray tasks
        with pytest.raises(job.RunFailed, match="StorageUnavailable: .*still failing after 2 attempts"):
            job._count(cfg, storage, [source], job._count_early(source, cfg, storage))  # one: by the driver
        kwargs = {"plan": Plan(uri, [source], [4]), "cfg": cfg.input, "storage": storage, "skip": None}
        ds = ray.data.from_items([Piece(0, 0, 1, 0, 4).item()]).map_batches(
            read_task, batch_size=1, batch_format="pyarrow", fn_kwargs={**kwargs, "block_rows": 4}
        )
        with pytest.raises(Exception) as failed:
            ds.take_all()
    assert proxy.seen > 0
    assert job._manifest_cause(failed.value) is None  # not reported as a bad manifest (exit 2)
    assert job._recoverable(failed.value)  # run() restarts the pipeline on what is left
    assert job._one_line(failed.value).startswith("StorageUnavailable: ")


def test_a_store_down_while_finding_the_manifest_is_not_bad_input(s3_server, s3_bucket, tmp_path, capsys):
    """Storage failing through every retry before the first row is read (`input.manifest` is being
    looked up: a listing, a HEAD) is a failed run to rerun (exit 1), as in the count pass; not "bad
    input" (exit 2), which would tell the user to fix a manifest that is fine."""
    from .test_storage import FaultProxy

    client, bucket = s3_bucket
    client.put_object(Bucket=bucket, Key="m/manifest.jsonl", Body=b'{"id": "a", "path": "a.wav"}\n')
    with FaultProxy(s3_server, always=True) as proxy:
        cfg = tmp_path / "down.yaml"
        cfg.write_text(
            f"input:\n  manifest: s3://{bucket}/m/manifest.jsonl\n"
            f"output:\n  path: {tmp_path / 'out'}\n"
            f"storage:\n  endpoint_url: {proxy.url}\n  retries: 1\n  retry_backoff_s: 0.01\n"
            "  retry_backoff_max_s: 0.02\n"
        )
        assert extract.main(["--config", str(cfg)]) == 1
    assert proxy.failed > 0
    err = capsys.readouterr().err
    assert "still failing after 2 attempts" in err and f"s3://{bucket}/m/manifest.jsonl" in err
    assert not (tmp_path / "out").exists()


def test_an_output_the_role_may_not_write_is_refused_naming_it(s3_server, s3_bucket, tmp_path, capsys):
    """An output bucket the credentials may not use (403 AccessDenied: a role without s3:PutObject,
    the wrong account's bucket) is an unusable output: exit 2, one line naming output.path, before
    any work; not exit 1 with a bare 'PermissionError: Access Denied'."""
    from .test_storage import ACCESS_DENIED, FaultProxy

    _, bucket = s3_bucket
    (tmp_path / "m.jsonl").write_text('{"id": "a", "path": "a.wav"}\n')
    for denied in ("everything", "writes"):
        fail = (
            (lambda method, path: True) if denied == "everything" else (lambda method, path: method == "PUT")
        )
        with FaultProxy(s3_server, fail_if=fail, status=403, body=ACCESS_DENIED) as proxy:
            cfg = tmp_path / "denied.yaml"
            cfg.write_text(
                f"input:\n  manifest: {tmp_path / 'm.jsonl'}\n"
                f"output:\n  path: s3://{bucket}/out/run1\n"
                f"storage:\n  endpoint_url: {proxy.url}\n  retries: 1\n  retry_backoff_s: 0.01\n"
            )
            assert extract.main(["--config", str(cfg)]) == 2, denied
        assert proxy.failed > 0
        err = capsys.readouterr().err
        assert f"output.path: cannot use s3://{bucket}/out/run1" in err and "PermissionError" in err, err
