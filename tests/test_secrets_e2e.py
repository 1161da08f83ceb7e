"""Secrets in URLs and size limits, through `jobs/extract.py` in its own process, as a user meets them.

The manifest is served by `http.server` under a presigned-looking URL; its rows name audio by a boto3
presigned URL to moto's S3 server, an Azure SAS URL, a GCS signed URL and `user:password@` URLs, some
of them missing (404: error rows), and two files bigger than `audio.max_file_mb` (one over http, one
on S3 behind a proxy that logs requests and counts what the job took)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path
from urllib.parse import parse_qsl, quote, urlsplit

import boto3
import pyarrow.dataset as pads
import pytest
from botocore.config import Config

from .test_storage import FaultProxy, SendCounter, counting_handler

ROOT = Path(__file__).resolve().parent.parent
BIG = 48 << 20

pytestmark = [pytest.mark.s3, pytest.mark.slow]  # one job in its own process: about 2 min on 2 cores


@pytest.fixture
def http_files(tmp_path):
    """http.server over `tmp_path/www` that counts what it sends; yields (folder, base URL, counter)."""
    www = tmp_path / "www"
    www.mkdir()
    counter = SendCounter()
    server = ThreadingHTTPServer(("127.0.0.1", 0), counting_handler(counter, str(www)))
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield www, f"http://127.0.0.1:{server.server_address[1]}", counter
    server.shutdown()
    server.server_close()
    thread.join(timeout=10)


def _presign(s3_server: str, bucket: str, key: str, version: str) -> tuple[str, list[str]]:
    """A presigned GET URL with a session token, SigV4 (`s3v4`) or the older query form (`s3`:
    `AWSAccessKeyId`, `Signature`) -> (URL, its secret values)."""
    client = boto3.client(
        "s3",
        endpoint_url=s3_server,
        region_name="us-east-1",
        aws_access_key_id="AKIAPRESIGNE2ELEAK01",
        aws_secret_access_key="presignE2eSecret",
        aws_session_token="PresignE2eSessionTokenLeak",
        config=Config(signature_version=version),
    )
    url = client.generate_presigned_url("get_object", Params={"Bucket": bucket, "Key": key}, ExpiresIn=900)
    q = {k.lower(): v for k, v in parse_qsl(urlsplit(url).query)}
    assert q["x-amz-security-token"] == "PresignE2eSessionTokenLeak"
    signature = q["x-amz-signature"] if version == "s3v4" else q["signature"]
    return url, [signature, "AKIAPRESIGNE2ELEAK01", "PresignE2eSessionTokenLeak"]


def _watch(path: Path, seen: list[str], stop: threading.Event) -> None:
    """Keep every version of `path` seen while the job runs (the lease lives only that long)."""
    while not stop.is_set():
        try:
            text = path.read_text()
        except OSError:
            text = ""
        if text and (not seen or seen[-1] != text):
            seen.append(text)
        time.sleep(0.05)


def test_no_secret_leaves_the_job_and_big_files_are_refused_unread(
    s3_server, s3_bucket, http_files, tiny_model_dir, tmp_path
):
    from pipeline.testing.samples import synthesize

    www, base, counter = http_files
    client, bucket = s3_bucket
    for name, text in (("a", "good morning"), ("b", "this is terrible"), ("c", "what a surprise")):
        synthesize(text, www / f"{name}.wav")
    (www / "big.wav").write_bytes(b"\0" * BIG)
    client.upload_file(str(www / "a.wav"), bucket, "audio/s.wav")
    client.put_object(Bucket=bucket, Key="audio/huge.wav", Body=b"\0" * BIG)

    ok_s3, secrets = _presign(s3_server, bucket, "audio/s.wav", "s3v4")
    gone_s3, more = _presign(s3_server, bucket, "audio/gone.wav", "s3")
    secrets += more
    sas = "sv=2022-11-02&sp=r&se=2030-01-01T00%3A00%3A00Z&sig=SaSe2eLeak%2Bsig%3D"
    goog = "X-Goog-Algorithm=GOOG4-RSA-SHA256&X-Goog-Credential=leaksvc%40p.iam&X-Goog-Signature=goog5e2eleak"
    userinfo = base.replace("http://", "http://alice:Pa55e2eLeak@")
    rows = {
        "s3-ok": ok_s3,
        "s3-gone": gone_s3,
        "sas-ok": f"{base}/b.wav?{sas}",
        "sas-gone": f"{base}/nope.wav?{sas}",
        "gcs-ok": f"{base}/c.wav?{goog}",
        "user-ok": f"{userinfo}/a.wav",
        "user-gone": f"{userinfo}/missing.wav",
        "big-http": f"{base}/big.wav?sig=BigE2eSigLeak",
        "big-s3": f"s3://{bucket}/audio/huge.wav",
    }
    secrets += ["SaSe2eLeak", "goog5e2eleak", "leaksvc", "Pa55e2eLeak", "BigE2eSigLeak"]
    (www / "m.jsonl").write_text("".join(json.dumps({"id": k, "path": p}) + "\n" for k, p in rows.items()))
    manifest_secrets = ["ManifestE2eSigLeak", "AKIAMANIFESTE2ELEAK", "ManifestE2eTokenLeak"]
    manifest = (
        f"{base}/m.jsonl?X-Amz-Algorithm=AWS4-HMAC-SHA256"
        f"&X-Amz-Credential={quote('AKIAMANIFESTE2ELEAK/20250101/us-east-1/s3/aws4_request', safe='')}"
        f"&X-Amz-Security-Token=ManifestE2eTokenLeak&X-Amz-Signature=ManifestE2eSigLeak"
    )
    secrets += manifest_secrets

    out = tmp_path / "out"
    with FaultProxy(s3_server) as s3_log:  # fails nothing: logs the requests to S3
        cfg = tmp_path / "job.yaml"
        cfg.write_text(
            f"input:\n  manifest: '{manifest}'\n  format: jsonl\n"
            f"model:\n  source: {tiny_model_dir}\n  device: cpu\n"
            f"audio:\n  max_file_mb: 1\n"
            f"output:\n  path: {out}\n  max_error_fraction: 0.9\n"
            f"storage:\n  endpoint_url: {s3_log.url}\n"
            f"ray:\n  num_cpus: 2\n"
        )
        env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
        env["PYTHONPATH"] = str(ROOT)
        leases: list[str] = []
        stop = threading.Event()
        watcher = threading.Thread(target=_watch, args=(out / "_lease.json", leases, stop), daemon=True)
        watcher.start()
        try:
            job = subprocess.run(
                [
                    sys.executable,
                    str(ROOT / "jobs" / "extract.py"),
                    "--config",
                    str(cfg),
                    "--log-level",
                    "DEBUG",
                ],
                env=env,
                capture_output=True,
                text=True,
                timeout=400,
            )
        finally:
            stop.set()
            watcher.join()
    assert job.returncode == 0, job.stderr[-3000:]

    table = pads.dataset(str(out), format="parquet").to_table()
    got = {r["id"]: r for r in table.to_pylist()}
    assert sorted(got) == sorted(rows) and table.num_rows == len(rows)  # every row once
    for k in ("s3-ok", "sas-ok", "gcs-ok", "user-ok"):
        assert got[k]["error"] is None and got[k]["label"], (k, got[k]["error"])
    for k in ("s3-gone", "sas-gone", "user-gone"):
        assert got[k]["error"].startswith("fetch: FileNotFoundError"), got[k]["error"]

    # sizes: refused from the size, naming size and limit, with the body left unread
    assert "48.0 MB (50331648 bytes), over the limit of 1 MB (audio.max_file_mb)" in got["big-http"]["error"]
    assert "48.0 MB (50331648 bytes), over the limit of 1 MB (audio.max_file_mb)" in got["big-s3"]["error"]
    assert all(
        e.startswith("fetch: FileTooLarge") for e in (got["big-http"]["error"], got["big-s3"]["error"])
    )
    sent = [n for path, n in counter.sent.items() if path.startswith("/big.wav")]
    assert sent and max(sent) < BIG // 2
    # one GetObject per attempt (Ray may run a task again), refused from its ContentLength: no HEAD,
    # and all of them together took less than half of one body
    huge = {(m, p) for m, p, _ in s3_log.requests if p.split("?")[0].endswith("/huge.wav")}
    assert {m for m, _ in huge} == {"GET"}, job.stderr[-2000:]
    assert sum(s3_log.sent.sent.get(p, 0) for _, p in huge) < BIG // 2

    # the secrets: nowhere that text leaves the job
    run = (out / "_run.json").read_text()
    assert leases and all('"manifest"' in lease for lease in leases)  # the lease was seen, holder recorded
    assert "X-Amz-Signature=***" in run and f"{base}/m.jsonl?" in run  # the manifest is recorded, redacted
    assert "X-Amz-Signature=***" in job.stderr  # the console names it too
    searched = {"stdout": job.stdout, "stderr": job.stderr, "_run.json": run, "output rows": repr(got)}
    searched.update({f"_lease.json #{i}": lease for i, lease in enumerate(leases)})
    for secret in secrets:
        leaks = [
            where for where, text in searched.items() if secret in text or quote(secret, safe="") in text
        ]
        assert not leaks, f"{secret!r} appears in {leaks}"
