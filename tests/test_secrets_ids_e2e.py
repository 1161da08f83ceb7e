"""Secrets in a manifest without an id column, through `jobs/extract.py` in its own process.

The rows name their audio by URLs with secrets in them (an Azure SAS `sig`, a presigned S3 query,
`user:password@`), served by `http.server`; two are missing (error rows, whose ids the commit markers
list). With no id column, each row's id is made from its URL: no secret may reach the `id` column,
the markers, `_run.json`, the lease or the console. A worker process of the job also prints and logs
a URL with a secret (a `sitecustomize` on the job's PYTHONPATH stands in for a library that quotes the
URL it fetches): Ray forwards those lines to the driver, whose console must show them redacted."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import threading
from pathlib import Path
from urllib.parse import quote

import pyarrow.dataset as pads
import pytest

from .test_secrets_e2e import _watch, http_files  # noqa: F401 - a fixture

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.slow  # one job in its own process: about a minute on 2 cores

# Runs in every process of the job; acts in Ray workers only, once, when the worker first imports
# the decode stage (by then Ray forwards what it prints: it runs a task of the job).
SITECUSTOMIZE = """
import os
import sys

def _hook(event, args):
    if event != "import" or args[0] != "pipeline.prepare" or "default_worker" not in " ".join(sys.argv):
        return
    if os.environ.get("_E2E_SAID") == "1":
        return
    os.environ["_E2E_SAID"] = "1"
    import logging

    url = os.environ["E2E_WORKER_URL"]
    print(f"e2e worker stdout: fetching {url}", flush=True)
    logging.getLogger("e2e.worker").warning("e2e worker log: fetching %s", url)

sys.addaudithook(_hook)
"""


def _default_id(url: str, redacted: str) -> str:
    """The id docs/corpora.md (Ids) promises for a URL with secrets, worked out here."""
    return f"{redacted}#{hashlib.sha256(url.encode()).hexdigest()[:12]}"


def test_default_ids_and_worker_lines_carry_no_secret(http_files, tiny_model_dir, tmp_path):  # noqa: F811
    from pipeline.testing.samples import synthesize

    www, base, _ = http_files
    for name, text in (("a", "good morning"), ("b", "this is terrible")):
        synthesize(text, www / f"{name}.wav")
    cred = quote("AKIAIDSE2ELEAK/20250101/us-east-1/s3/aws4_request", safe="")
    presigned = (
        f"X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential={cred}&X-Amz-Date=20250101T000000Z"
        "&X-Amz-Security-Token=IdsE2eTokenLeak&X-Amz-Signature=IdsE2eSigLeak"
    )
    sas = "sv=2022-11-02&sp=r&sig=IdsE2eSasLeak%2Bx%3D"
    userinfo = base.replace("http://", "http://bob:IdsE2ePassLeak@")
    masked = (
        "X-Amz-Algorithm=AWS4-HMAC-SHA256&X-Amz-Credential=***&X-Amz-Date=20250101T000000Z"
        "&X-Amz-Security-Token=***&X-Amz-Signature=***"
    )
    rows = {  # url -> its id, and whether it is an error row (missing file)
        f"{base}/a.wav?{presigned}": (
            _default_id(f"{base}/a.wav?{presigned}", f"{base}/a.wav?{masked}"),
            False,
        ),
        f"{base}/b.wav?{sas}": (
            _default_id(f"{base}/b.wav?{sas}", f"{base}/b.wav?sv=2022-11-02&sp=r&sig=***"),
            False,
        ),
        f"{base}/gone.wav?{sas}": (
            _default_id(f"{base}/gone.wav?{sas}", f"{base}/gone.wav?sv=2022-11-02&sp=r&sig=***"),
            True,
        ),
        f"{userinfo}/missing.wav": (
            _default_id(f"{userinfo}/missing.wav", base.replace("http://", "http://***@") + "/missing.wav"),
            True,
        ),
        f"{base}/a.wav": (f"{base}/a.wav", False),  # no secret: the URL is the id
    }
    secrets = ["AKIAIDSE2ELEAK", "IdsE2eTokenLeak", "IdsE2eSigLeak", "IdsE2eSasLeak", "IdsE2ePassLeak"]
    worker_secret = "IdsE2eWorkerSigLeak"
    secrets.append(worker_secret)
    (www / "m.jsonl").write_text("".join(json.dumps({"path": u, "lang": "en"}) + "\n" for u in rows))
    manifest = f"{base}/m.jsonl?X-Amz-Signature=IdsE2eManifestLeak"
    secrets.append("IdsE2eManifestLeak")

    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(SITECUSTOMIZE)
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: '{manifest}'\n  format: jsonl\n  rows_per_unit: 2\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cpu\n"
        f"output:\n  path: {out}\n  max_error_fraction: 0.9\n  compression: none\n"
        f"ray:\n  num_cpus: 2\n"
    )
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), str(site)])
    env["E2E_WORKER_URL"] = f"{base}/a.wav?sv=2022-11-02&sig={worker_secret}"
    leases: list[str] = []
    stop = threading.Event()
    watcher = threading.Thread(target=_watch, args=(out / "_lease.json", leases, stop), daemon=True)
    watcher.start()
    try:
        job = subprocess.run(
            [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)],
            env=env,
            capture_output=True,
            text=True,
            timeout=400,
            cwd=tmp_path,
        )
    finally:
        stop.set()
        watcher.join()
    assert job.returncode == 0, job.stderr[-3000:]

    table = pads.dataset(str(out), format="parquet").to_table()
    got = {r["id"]: r for r in table.to_pylist()}
    assert sorted(got) == sorted(i for i, _ in rows.values()) and table.num_rows == len(rows)
    for url, (i, bad) in rows.items():
        assert (got[i]["error"] is not None) == bad, (url, got[i]["error"])
    markers = {p.name: p.read_text() for p in sorted((out / "_units").glob("*.json"))}
    error_ids = sorted(e for text in markers.values() for e in json.loads(text)["error_ids"])
    assert error_ids == sorted(i for i, bad in rows.values() if bad)  # the markers name them, redacted

    # the worker's lines reached the driver's console, redacted
    console = job.stdout + job.stderr
    shown = f"fetching {base}/a.wav?sv=2022-11-02&sig=***"
    assert f"e2e worker stdout: {shown}" in console, console[-3000:]
    assert f"e2e worker log: {shown}" in console, console[-3000:]
    said = [line for line in console.splitlines() if "e2e worker" in line]
    assert said and all(" pid=" in line for line in said), said  # as Ray forwards a worker's lines

    searched = {"stdout": job.stdout, "stderr": job.stderr, "output rows": repr(table.to_pylist())}
    searched.update({f"_lease.json #{k}": lease for k, lease in enumerate(leases)})
    for p in sorted(out.rglob("*")):  # every file the job wrote: _run.json, markers, Parquet (uncompressed)
        if p.is_file():
            searched[str(p.relative_to(out))] = p.read_bytes().decode("latin-1")
    assert "_run.json" in searched and len(markers) == 3 and leases
    for secret in secrets:
        leaks = [w for w, text in searched.items() if secret in text or quote(secret, safe="") in text]
        assert not leaks, f"{secret!r} appears in {leaks}"
