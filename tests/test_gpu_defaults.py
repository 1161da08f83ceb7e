"""The GPU path as users meet it: a config that sets nothing the README does not tell users to set,
run with `ray job submit` on a Ray node that advertises a GPU it does not have. With
EMOTION2VEC_SIMULATE_GPU=1 the model actor takes every decision a GPU takes (Ray's bundle of whole
blocks, two concurrent calls, the 600 s batch budget, 256 clips, page-locked buffers) and runs its
tensors on the CPU; without it, the actor that holds a GPU PyTorch cannot use ends the job with one
line (as a CUDA driver older than the installed PyTorch would), not with restarts."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from .conftest import cpu_runs_natively
from .test_cluster_submit import start_head

ROOT = Path(__file__).resolve().parent.parent
RAY = os.path.join(os.path.dirname(sys.executable), "ray")
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def gpu_head(tmp_path_factory):
    with start_head(tmp_path_factory.mktemp("gpu_head"), num_gpus=1) as head:
        yield head


def _submit(head, tmp_path: Path, cfg_text: str, env_vars: dict[str, str]) -> subprocess.CompletedProcess:
    address, env, _ = head
    cfg = tmp_path / "job.yaml"
    cfg.write_text(cfg_text)
    cmd = [RAY, "job", "submit", "--address", address, "--working-dir", str(ROOT)]
    if env_vars:
        cmd += ["--runtime-env-json", json.dumps({"env_vars": env_vars})]
    cmd += ["--", "python", "jobs/extract.py", "--config", str(cfg)]
    return subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)


def test_a_default_config_runs_on_a_gpu_node(gpu_head, tiny_model_dir, tmp_path):
    """Only input, model.source and output: model.device auto finds the node's GPU. Before the fix
    Ray Data refused the model stage ("You must provide `batch_size` to `map_batches` when requesting
    GPUs") and the job exited 1."""
    import torch

    out = tmp_path / "out"
    cfg = (
        "input:\n  manifest: samples/demo/manifest.jsonl\n"
        f"model:\n  source: {tiny_model_dir}\n"
        f"output:\n  path: {out}\n"
    )
    r = _submit(gpu_head, tmp_path, cfg, {"EMOTION2VEC_SIMULATE_GPU": "1"})
    text = r.stdout + r.stderr
    assert r.returncode == 0 and "succeeded" in text, text[-4000:]
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"] == {"input": 20, "ok": 20, "error": 0, "skipped": 0}, run["rows"]
    assert run["placement"]["device"] == "cuda" and run["placement"]["num_gpus"] == 1
    dtype = "bfloat16" if cpu_runs_natively(torch.bfloat16) else "float32"
    assert run["rows_per_model_runtime"] == {f"cpu (simulated gpu) {dtype}": 20}
    # the actor took the GPU's decisions, not the CPU's (16 s, 32 clips, no pinning)
    line = next(x for x in text.splitlines() if "EMOTION2VEC_SIMULATE_GPU=1: this model actor" in x)
    assert "batch_seconds 600, max_batch_size 256, page-locked buffers True" in line, line


def test_a_simulated_gpu_records_the_dtype_its_cpu_ran_in_the_files(gpu_head, tiny_model_dir, tmp_path):
    """model.dtype float16 on a simulated GPU: the actors run float16 only where this CPU computes it
    natively, else float32; the output's file metadata (the resume fingerprint) says what they ran,
    as `_run.json` does. It said float16 while the numbers were float32's."""
    import pyarrow.parquet as pq
    import torch

    from pipeline.schema import read_metadata

    out = tmp_path / "out"
    cfg = (
        "input:\n  manifest: samples/demo/manifest.jsonl\n  limit: 4\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cuda\n  dtype: float16\n"
        f"output:\n  path: {out}\n"
    )
    r = _submit(gpu_head, tmp_path, cfg, {"EMOTION2VEC_SIMULATE_GPU": "1"})
    text = r.stdout + r.stderr
    assert r.returncode == 0 and "succeeded" in text, text[-4000:]
    ran = "float16" if cpu_runs_natively(torch.float16) else "float32"
    run = json.loads((out / "_run.json").read_text())
    assert run["rows_per_model_runtime"] == {f"cpu (simulated gpu) {ran}": 4}
    assert run["model"]["dtype"] == run["output_metadata"]["dtype"] == ran
    files = sorted(out.glob("*.parquet"))
    assert files and {read_metadata(pq.read_schema(f))["dtype"] for f in files} == {ran}


def test_a_gpu_that_pytorch_cannot_use_ends_the_job_in_one_line(gpu_head, tiny_model_dir, tmp_path):
    """The node advertises a GPU, the actor's PyTorch finds no CUDA device (the case of a driver too
    old for the installed PyTorch): exit 2 with one error line saying so, and no restarts."""
    out = tmp_path / "out"
    cfg = (
        "input:\n  manifest: samples/demo/manifest.jsonl\n  limit: 4\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cuda\n"
        f"output:\n  path: {out}\n"
    )
    r = _submit(gpu_head, tmp_path, cfg, {})
    text = r.stdout + r.stderr
    (tmp_path / "job.log").write_text(text)
    assert r.returncode != 0, text[-3000:]
    assert "failed with exit code 2" in text, text[-3000:]
    # (ray job submit prints the job's last lines twice: once as they come, once in its status)
    errors = {x for x in text.splitlines() if x.startswith("error:")}
    assert len(errors) == 1, text[-3000:]
    assert "holds a Ray GPU, but PyTorch cannot use it: PyTorch" in errors.pop(), text[-3000:]
    assert "restarting on what is left" not in text, text[-3000:]


HOLD_GPU = """
import sys, time
import ray
ray.init(address=sys.argv[1])
@ray.remote(num_gpus=1, num_cpus=0)
class Holder:
    def ping(self):
        return 1
h = Holder.remote()
ray.get(h.ping.remote())
print("holding", flush=True)
time.sleep(600)
"""


def test_gpus_all_held_by_other_work_are_waited_for_then_one_line(gpu_head, tiny_model_dir, tmp_path):
    """The cluster has a GPU but another job holds it: the job says it waits for a GPU (as for GPUs
    not there yet), and after ray.gpu_wait_s exits 2 naming the missing resource. Before, it
    started a pool that waited silently for as long as the GPU stayed taken."""
    address, env, gcs = gpu_head
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_GPU, f"127.0.0.1:{gcs}"],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        said = []
        while (line := holder.stdout.readline()) and line.strip() != "holding":
            said.append(line)  # Ray's own lines about connecting
        assert line.strip() == "holding", "".join(said)[-2000:]
        cfg = (
            "input:\n  manifest: samples/demo/manifest.jsonl\n  limit: 2\n"
            f"model:\n  source: {tiny_model_dir}\n  device: cuda\n"
            f"output:\n  path: {tmp_path / 'out'}\n"
            "ray:\n  gpu_wait_s: 6\n  progress_interval_s: 2\n"
        )
        r = _submit(gpu_head, tmp_path, cfg, {"EMOTION2VEC_SIMULATE_GPU": "1"})
    finally:
        holder.kill()
        holder.wait()
    text = r.stdout + r.stderr
    assert "failed with exit code 2" in text, text[-3000:]
    assert "waiting for a GPU node: model actors need GPU 1 each, its GPU 1 are all in use" in text, text[
        -3000:
    ]
    errors = {x for x in text.splitlines() if x.startswith("error:")}
    assert (
        len(errors) == 1 and "no GPU became free on the Ray cluster within ray.gpu_wait_s 6 s" in errors.pop()
    )
