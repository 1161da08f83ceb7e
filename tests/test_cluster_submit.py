"""`ray job submit` against a real `ray start --head` cluster that this test starts and stops by
its own process session (never `ray stop`: other Ray instances may share the machine)."""

import contextlib
import json
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .conftest import free_port, kill_session

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.slow


@pytest.fixture
def head_node(tmp_path):
    with start_head(tmp_path) as head:
        yield head


@contextlib.contextmanager
def start_head(tmp_path, num_gpus: int = 0):
    """A `ray start --head` cluster of 2 CPUs (and `num_gpus` logical GPUs: a node that advertises
    GPUs it does not have) with its job server -> (dashboard address, client env, GCS port)."""
    bindir = os.path.dirname(sys.executable)
    env = {**os.environ, "PATH": bindir + os.pathsep + os.environ.get("PATH", "")}
    env.pop("RAY_ADDRESS", None)
    # Ray 2.5x+ clusters use token authentication; give this cluster and its clients their own token
    token = tmp_path / "ray_auth_token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    temp = f"/tmp/ray_e2v_{uuid.uuid4().hex[:8]}"
    low = 20000 + (os.getpid() % 200) * 100

    def port() -> int:  # a free port outside the workers' range (Ray refuses an overlap)
        while low <= (p := free_port()) <= low + 99:
            pass
        return p

    gcs, dash = port(), port()
    ports = {
        "--port": gcs,
        "--dashboard-port": dash,
        "--dashboard-agent-listen-port": port(),
        "--dashboard-agent-grpc-port": port(),
        "--metrics-export-port": port(),
        "--runtime-env-agent-port": port(),
        "--node-manager-port": port(),
        "--object-manager-port": port(),
        "--ray-client-server-port": port(),
    }
    cmd = [
        os.path.join(bindir, "ray"),
        "start",
        "--head",
        "--num-cpus",
        "2",
        "--include-dashboard",
        "true",
        "--dashboard-host",
        "127.0.0.1",
        "--node-ip-address",
        "127.0.0.1",
        "--temp-dir",
        temp,
        "--min-worker-port",
        str(low),
        "--max-worker-port",
        str(low + 99),
        "--disable-usage-stats",
        "--num-gpus",
        str(num_gpus),
    ]
    for k, v in ports.items():
        cmd += [k, str(v)]
    leader = subprocess.Popen(
        ["setsid", "--wait", *cmd], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    sid = leader.pid  # setsid --wait: the leader's pid is the new session id
    try:  # whatever fails from here on, the cluster is killed
        out, _ = leader.communicate(timeout=120)
        assert leader.returncode == 0, out[-3000:]
        address = f"http://127.0.0.1:{dash}"
        deadline = time.time() + 60
        while True:  # the job server answers a few seconds after `ray start` returns
            r = subprocess.run(
                [os.path.join(bindir, "ray"), "job", "list", "--address", address],
                env=env,
                capture_output=True,
                text=True,
            )
            if r.returncode == 0:
                break
            assert time.time() < deadline, r.stderr[-2000:]
            time.sleep(1)
        yield address, env, gcs
    finally:
        kill_session(sid)
        subprocess.run(["rm", "-rf", temp], check=False)


def test_ray_job_submit_runs_the_job_on_the_cluster(head_node, tiny_model_dir, tmp_path):
    """As the README's recipe runs it, with the manifest given relative to the working directory."""
    address, env, gcs = head_node
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        "input:\n  manifest: samples/demo/manifest.jsonl\n  limit: 6\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cpu\n"
        f"output:\n  path: {out}\n"
    )
    r = subprocess.run(
        [
            os.path.join(os.path.dirname(sys.executable), "ray"),
            "job",
            "submit",
            "--address",
            address,
            "--working-dir",
            str(ROOT),
            "--",
            "python",
            "jobs/extract.py",
            "--config",
            str(cfg),
        ],
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert r.returncode == 0, (r.stdout + r.stderr)[-4000:]
    assert "succeeded" in (r.stdout + r.stderr)
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"]["ok"] == 6 and run["rows"]["input"] == 6
    # the job joined the cluster it was submitted to instead of starting its own Ray
    assert run["ray"]["started_local"] is False
    assert run["ray"]["gcs_address"].endswith(f":{gcs}")
