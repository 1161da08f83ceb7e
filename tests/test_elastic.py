"""The job on an elastic GPU cluster: Ray's fake autoscaler (tests/fake_cluster.py) adds "GPU" nodes
(a logical GPU each, no device) when the job asks for them and takes idle ones back, as KubeRay or the
cluster launcher would. The model actors hold those GPUs and, with EMOTION2VEC_SIMULATE_GPU=1, run the
model on their CPU. Jobs are submitted with `ray job submit`.

Kept small for a 2-core machine: a 2-CPU head, at most two 1-CPU/1-GPU nodes, the tiny model, 100 clips.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import torch

from .conftest import cpu_runs_natively
from .fake_cluster import RAY, FakeCluster
from .test_multinode import assert_exactly_once, repeated_manifest, wait_until

ROOT = Path(__file__).resolve().parent.parent
BIN = os.path.dirname(sys.executable)
# labelled as infra/kuberay labels its GPU pods, so that decode and write stay off them
GPU_NODE = {
    "resources": {"CPU": 1, "GPU": 1},
    "labels": {"emotion2vec/role": "model"},
    "min_workers": 0,
    "max_workers": 2,
}
# what a simulated GPU actor runs: the GPU's bfloat16 where this CPU has it natively, else float32
SIMULATED = f"cpu (simulated gpu) {'bfloat16' if cpu_runs_natively(torch.bfloat16) else 'float32'}"
# a few minutes each on an idle 2-core machine; allow for one shared with other work
pytestmark = [pytest.mark.slow, pytest.mark.timeout(1500)]


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


def submit(
    c: FakeCluster, model: Path, tmp_path: Path, copies: int, extra: str = "", env: dict | None = None
):
    """`ray job submit` of jobs/extract.py with model.device cuda on simulated GPUs."""
    manifest, ids = repeated_manifest(tmp_path, copies)
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n  rows_per_unit: 8\n"
        # the GPU defaults otherwise (batch budget, batch size, calls at once, torch threads, whole blocks)
        f"model:\n  source: {model}\n  device: cuda\n  num_actors: 2\n"
        f"audio:\n  decode_batch_size: 4\n"
        f"output:\n  path: {out}\n  rows_per_file: 4\n"
        f"ray:\n  progress_interval_s: 2\n  gpu_wait_s: 240\n"
        # decode and write stay on the head: the GPU nodes' one CPU is their model actor's
        f"  cpu_task_label_selector:\n    emotion2vec/role: '!model'\n{extra}"
    )
    log = tmp_path / "job.log"
    runtime_env = json.dumps({"env_vars": {"EMOTION2VEC_SIMULATE_GPU": "1", **(env or {})}})
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


def model_actor_nodes(c: FakeCluster) -> set[str]:
    """Nodes that hold (or held) a model actor of this cluster's jobs."""
    actors = c.state("actors")
    return {
        a["node_id"] for a in actors if "EmotionPredictor" in (a.get("class_name") or "") and a.get("node_id")
    }


def cpu_task_nodes(c: FakeCluster) -> set[str]:
    """Nodes where the decode and write tasks ran (Ray's task events)."""
    tasks = c.state("tasks", "state=FINISHED")
    return {
        t["node_id"] for t in tasks if any(k in t.get("name", "") for k in ("prepare_block", "write_parts"))
    }


def head_node(c: FakeCluster) -> str:
    return next(n["node_id"] for n in c.state("nodes", "state=ALIVE") if n.get("is_head_node"))


def test_from_zero_gpu_nodes_are_added_and_used(fake_cluster, tiny_model_dir, tmp_path):
    """No GPU at the start: the job asks for GPUs, waits, and runs on the two nodes the autoscaler adds;
    decoding and writing stay on the head (ray.cpu_task_label_selector)."""
    fake_cluster.start(head_cpus=2, gpu_nodes=GPU_NODE)
    assert fake_cluster.gpu_nodes() == []
    t0 = time.time()
    job, log, out, ids = submit(fake_cluster, tiny_model_dir, tmp_path, copies=5)
    run = finish(job, log, out, timeout=900)
    text = log.read_text()
    assert "waiting for a GPU node" in text and "free on the cluster" in text, text[-3000:]
    assert text.count("EMOTION2VEC_SIMULATE_GPU=1: this model actor") >= 1
    assert run["rows"] == {"input": len(ids), "ok": len(ids), "error": 0, "skipped": 0}
    assert_exactly_once(out, ids)
    assert run["placement"]["device"] == "cuda" and run["ray"]["gpu_wait_s"] > 0
    assert run["rows_per_model_runtime"] == {SIMULATED: len(ids)}
    gpu_nodes = {n["node_id"] for n in fake_cluster.state("nodes") if n["resources_total"].get("GPU")}
    assert len(gpu_nodes) == 2
    assert model_actor_nodes(fake_cluster) == gpu_nodes  # a model actor on each of the two GPU nodes
    assert set(run["rows_per_model_node"]) <= gpu_nodes, (run["rows_per_model_node"], gpu_nodes)
    assert cpu_task_nodes(fake_cluster) == {head_node(fake_cluster)}
    print(
        f"\nfrom zero: first GPU after {run['ray']['gpu_wait_s']} s, rows per node "
        f"{run['rows_per_model_node']}, restarts {run['ray']['restarts']}, {time.time() - t0:.0f} s"
    )


def test_the_pool_grows_onto_a_gpu_node_that_joins_while_it_runs(fake_cluster, tiny_model_dir, tmp_path):
    """One GPU node at the start; the pool asks for model.num_actors (2) at once, the autoscaler adds a
    second GPU node while the job runs, and the pool's second actor runs rows there."""
    fake_cluster.start(head_cpus=2, gpu_nodes={**GPU_NODE, "min_workers": 1})
    deadline = time.time() + 180
    while len(first := fake_cluster.gpu_nodes()) != 1:
        assert time.time() < deadline, "the first GPU node did not join"
        time.sleep(2)
    job, log, out, ids = submit(fake_cluster, tiny_model_dir, tmp_path, copies=8)
    run = finish(job, log, out, timeout=900)
    assert run["ray"]["gpu_wait_s"] == 0  # it started on the GPU that was there
    assert_exactly_once(out, ids)
    gpu_nodes = {n["node_id"] for n in fake_cluster.state("nodes") if n["resources_total"].get("GPU")}
    joined = gpu_nodes - set(first)
    assert len(joined) == 1, (first, gpu_nodes)
    per_node = run["rows_per_model_node"]
    assert set(per_node) == gpu_nodes and sum(per_node.values()) == len(ids), per_node
    print(f"\ngrowth: rows per node {per_node} (joined: {joined})")


def test_a_preempted_gpu_node_costs_only_its_uncommitted_units(fake_cluster, tiny_model_dir, tmp_path):
    """Two GPU nodes; one that holds a model actor is killed, raylet, workers and agents at once, when
    the first unit is committed (a spot preemption mid-run): the job ends exit 0 with every row once,
    and _run.json counts the restart and the lost node.
    The kill waits for a committed unit and finds the model actors' nodes in /proc: waiting to see
    both actors through the state API raced the job (on a fast machine one actor finished the corpus
    first; on a loaded one the state API did not answer in time)."""
    fake_cluster.start(head_cpus=2, gpu_nodes={**GPU_NODE, "min_workers": 2})
    deadline = time.time() + 180
    while len(fake_cluster.gpu_nodes()) != 2:
        assert time.time() < deadline, "the GPU nodes did not join"
        time.sleep(2)
    job, log, out, ids = submit(fake_cluster, tiny_model_dir, tmp_path, copies=8)
    units = len(ids) // 8  # rows_per_unit 8
    committed = lambda: len(list((out / "_units").glob("*.json")))  # noqa: E731
    try:
        wait_until(committed, job, log, 600, "a committed unit")
        holders = wait_until(fake_cluster.model_actor_nodes_now, job, log, 120, "a live model actor")
        victim = sorted(holders)[0]
        killed = fake_cluster.kill_node(victim)
        at_kill = committed()
    except BaseException:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(job.pid, signal.SIGKILL)
        raise
    run = finish(job, log, out, timeout=900)
    assert at_kill < units, "the job had committed every unit before the node was lost"
    assert run["rows"] == {"input": len(ids), "ok": len(ids), "error": 0, "skipped": 0}
    assert_exactly_once(out, ids)
    # one lost node, one restart: the restarted pool is not placed on the dying node
    assert run["ray"]["restarts"] == 1 and run["ray"]["nodes_lost"] == [victim], run["ray"]
    print(
        f"\npreemption: rows per node {run['rows_per_model_node']}, ray {run['ray']}, killed at {at_kill}/{units}"
        f" ({len(killed)} processes of the node)"
    )


def test_a_gpu_that_breaks_twice_is_avoided_for_the_rest_of_the_run(fake_cluster, tiny_model_dir, tmp_path):
    """Two GPU nodes; the GPU of one raises a sticky CUDA error on every model call (injected,
    `E2V_INJECT_DEVICE_ERROR`): its actor ends (exit 70), the restarted pool places an actor there
    again, it ends again, and from then on the pool avoids that node. The job ends exit 0 with every
    row once, as results: the rows in flight on the broken GPU were redone elsewhere."""
    fake_cluster.start(head_cpus=2, gpu_nodes={**GPU_NODE, "min_workers": 2})
    deadline = time.time() + 180
    while len(nodes := fake_cluster.gpu_nodes()) != 2:
        assert time.time() < deadline, "the GPU nodes did not join"
        time.sleep(2)
    broken = sorted(nodes)[0]
    job, log, out, ids = submit(
        fake_cluster, tiny_model_dir, tmp_path, copies=8, env={"E2V_INJECT_DEVICE_ERROR": broken}
    )
    run = finish(job, log, out, timeout=1200)
    text = log.read_text()
    assert run["rows"] == {"input": len(ids), "ok": len(ids), "error": 0, "skipped": 0}
    assert_exactly_once(out, ids)
    assert run["placement"]["avoid_nodes"] == [broken], run["placement"]
    assert run["ray"]["restarts"] == 2 and run["ray"]["nodes_lost"] == [], run["ray"]
    assert broken not in run["rows_per_model_node"], run["rows_per_model_node"]
    assert "model pool avoids it for the rest of the run" in text, text[-3000:]
    print(f"\nbroken GPU: rows per node {run['rows_per_model_node']}, ray {run['ray']}")
