"""The job on an elastic GPU cluster: Ray's fake autoscaler (tests/fake_cluster.py) adds "GPU" nodes
(a logical GPU each, no device) when the job asks for them and takes idle ones back, as KubeRay or the
cluster launcher would. The model actors hold those GPUs and, with EMOTION2VEC_SIMULATE_GPU=1, run the
model on their CPU. Jobs are submitted with `ray job submit`.

Kept small for a 2-core machine: a 2-CPU head, at most two 1-CPU/1-GPU nodes, the tiny model, 100 clips.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

from .fake_cluster import RAY, FakeCluster
from .test_multinode import assert_exactly_once, repeated_manifest, wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = os.path.dirname(sys.executable)
GPU_NODE = {"resources": {"CPU": 1, "GPU": 1}, "min_workers": 0, "max_workers": 2}
SIMULATED = "cpu (simulated gpu) bfloat16"  # this CPU runs bfloat16 natively (tests/conftest.py)
pytestmark = pytest.mark.slow


@pytest.fixture
def fake_cluster(tmp_path):
    """An elastic cluster (started by the test with .start()), killed afterwards with every node the
    autoscaler added, on failure too."""
    env = {**os.environ, "PATH": BIN + os.pathsep + os.environ.get("PATH", "")}
    env.pop("RAY_ADDRESS", None)
    token = tmp_path / "ray_auth_token"
    token.write_text(uuid.uuid4().hex + uuid.uuid4().hex)
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    c = FakeCluster(env=env, workdir=tmp_path)
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        yield c
    finally:
        c.shutdown(keep_logs=tmp_path)
        signal.signal(signal.SIGTERM, previous)


def submit(c: FakeCluster, model: Path, tmp_path: Path, copies: int, extra: str = ""):
    """`ray job submit` of jobs/extract.py with model.device cuda on simulated GPUs."""
    manifest, ids = repeated_manifest(tmp_path, copies)
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n  rows_per_unit: 8\n"
        f"model:\n  source: {model}\n  device: cuda\n  num_actors: 2\n  torch_threads: 1\n  rows_per_call: 4\n"
        f"audio:\n  decode_batch_size: 4\n"
        f"output:\n  path: {out}\n  rows_per_file: 4\n"
        f"ray:\n  progress_interval_s: 2\n  gpu_wait_s: 240\n"
        # decode and write stay on the head: the GPU nodes' one CPU is their model actor's
        f"  cpu_task_label_selector:\n    ray.io/node-group: '!in(gpu_node)'\n{extra}"
    )
    log = tmp_path / "job.log"
    runtime_env = json.dumps({"env_vars": {"EMOTION2VEC_SIMULATE_GPU": "1"}})
    job = subprocess.Popen(
        [RAY, "job", "submit", "--address", c.address, "--working-dir", str(ROOT)]
        + ["--runtime-env-json", runtime_env, "--", "python", "jobs/extract.py", "--config", str(cfg)],
        env=c.env,
        stdout=log.open("w"),
        stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    return job, log, out, ids


def finish(job: subprocess.Popen, log: Path, out: Path, timeout: float) -> dict:
    try:
        rc = job.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(job.pid, signal.SIGKILL)
        pytest.fail(f"the job did not finish in {timeout:.0f} s:\n{log.read_text()[-4000:]}")
    text = log.read_text()
    assert rc == 0 and "succeeded" in text, text[-4000:]
    return json.loads((out / "_run.json").read_text())


def test_from_zero_gpu_nodes_are_added_and_used(fake_cluster, tiny_model_dir, tmp_path):
    """No GPU at the start: the job asks for GPUs, waits, and runs on the two nodes the autoscaler adds."""
    fake_cluster.start(head_cpus=2, gpu_nodes=GPU_NODE)
    assert fake_cluster.gpu_nodes() == []
    t0 = time.time()
    job, log, out, ids = submit(fake_cluster, tiny_model_dir, tmp_path, copies=5)
    run = finish(job, log, out, timeout=600)
    text = log.read_text()
    assert "waiting for a GPU node" in text and "joined the cluster" in text, text[-3000:]
    assert run["rows"] == {"input": len(ids), "ok": len(ids), "error": 0, "skipped": 0}
    assert_exactly_once(out, ids)
    assert run["placement"]["device"] == "cuda" and run["ray"]["gpu_wait_s"] > 0
    assert run["rows_per_model_runtime"] == {SIMULATED: len(ids)}
    per_node = run["rows_per_model_node"]
    gpu_nodes = {n["node_id"] for n in fake_cluster.state("nodes") if n["resources_total"].get("GPU")}
    assert len(per_node) == 2 and set(per_node) <= gpu_nodes, (per_node, gpu_nodes)
    print(f"\nfrom zero: gpu_wait_s {run['ray']['gpu_wait_s']}, rows per node {per_node}, {time.time() - t0:.0f} s")
