"""Shared fixtures: tiny random-init checkpoints in the official layouts, generated audio, Ray."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 6-head (non power of two), D=48 model with a 9-way head, in the published hub layout."""
    from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint

    model = random_model(tiny(num_heads=6, embed_dim=48), seed=3)
    return write_checkpoint(model, tmp_path_factory.mktemp("tiny_hub"), "hub")


@pytest.fixture(scope="session")
def spread_model_dir(tmp_path_factory):
    """The tiny model with a head whose scores spread (0.001-0.9 instead of 0.05-0.2): label and score
    comparisons between devices or dtypes can fail on it."""
    from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint

    model = random_model(tiny(num_heads=6, embed_dim=48), seed=3)
    with torch.no_grad():
        model.proj.weight.mul_(40.0)
    return write_checkpoint(model, tmp_path_factory.mktemp("spread_hub"), "hub")


def random_clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        t = np.arange(n) / 16000.0
        # a few harmonics plus noise: not white, not silent
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(90, 300) * t) + 0.05 * rng.standard_normal(n)
        out.append(x.astype(np.float32))
    return out


# -- the CPU ------------------------------------------------------------------------------------

# /proc/cpuinfo flags that give a dtype hardware matmuls: AVX512-BF16 or AMX-BF16 for bfloat16,
# AMX-FP16 for float16 (AVX512-FP16 has no oneDNN inner-product kernel for it).
HALF_PRECISION_FLAGS = {torch.bfloat16: {"avx512_bf16", "amx_bf16"}, torch.float16: {"amx_fp16"}}


def cpu_flags() -> set[str]:
    """The CPU's ISA flags as the kernel reports them (Linux only: the tests run there)."""
    from pathlib import Path

    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("flags"):
            return set(line.split(":", 1)[1].split())
    raise RuntimeError("/proc/cpuinfo has no flags line")


def cpu_runs_natively(dtype: torch.dtype) -> bool:
    """Expected answer of `pipeline.predictor.cpu_has_native`, from /proc/cpuinfo, not from it."""
    if dtype == torch.float32:
        return True
    return bool(cpu_flags() & HALF_PRECISION_FLAGS[dtype]) and torch.backends.mkldnn.is_available()


# -- Ray and S3 --------------------------------------------------------------------------------

# Fake credentials for the local S3 server; set before any Ray worker starts so workers inherit
# them. AWS_EC2_METADATA_DISABLED keeps the AWS SDK from probing instance metadata.
for _k, _v in {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": "us-east-1",
    "AWS_EC2_METADATA_DISABLED": "true",
}.items():
    os.environ.setdefault(_k, _v)


@pytest.fixture(scope="session")
def ray_session():
    """One small local Ray for the whole test session (2 CPUs), without a dashboard as the job's
    embedded Ray: the actor watch and the poison guard read the GCS's tables."""
    import ray

    from pipeline.cluster import WORKER_IDLE_MS

    # as the job's embedded Ray: idle workers live a minute instead of being re-spawned
    ray.init(
        num_cpus=2,
        include_dashboard=False,
        log_to_driver=False,
        _system_config={"idle_worker_killing_time_threshold_ms": WORKER_IDLE_MS},
    )
    yield ray
    ray.shutdown()


_GIVEN_PORTS: set[int] = set()


def free_port() -> int:
    """A free TCP port for a server a test starts, never one this session already handed out.

    Picked below the kernel's ephemeral range and above Ray's worker ports (10002-19999): a port the
    OS hands out for `bind(0)` or an outgoing connection can be taken by any other process (a Ray
    worker's gRPC server, a client socket) between this call and the server binding it, and a Ray
    node whose port is taken fails to start. That race grows with the number of live processes,
    which is why it showed only under the full suite. Checked free on every address, as Ray binds
    some ports on 0.0.0.0."""
    import random
    import socket
    from pathlib import Path

    low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    candidates = range(20000, low) if low > 21000 else None
    while True:
        port = random.choice(candidates) if candidates else 0
        with socket.socket() as s:
            try:
                s.bind(("0.0.0.0", port))
            except OSError:
                continue
            port = s.getsockname()[1]
        if port not in _GIVEN_PORTS:
            _GIVEN_PORTS.add(port)
            return port


@pytest.fixture(scope="session")
def s3_server():
    """moto's S3 server over real HTTP on 127.0.0.1; yields its endpoint URL."""
    import shutil
    import subprocess
    import sys
    import time
    import urllib.request

    exe = shutil.which("moto_server", path=os.path.dirname(sys.executable)) or shutil.which("moto_server")
    assert exe, "moto_server not found (pip install 'moto[server]')"
    port = free_port()
    proc = subprocess.Popen(
        [exe, "-H", "127.0.0.1", "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 30
    while True:
        try:
            urllib.request.urlopen(url + "/moto-api/", timeout=1)
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("moto_server did not start") from None
            time.sleep(0.2)
    yield url
    proc.terminate()
    proc.wait(timeout=10)


@pytest.fixture
def s3_bucket(s3_server):
    import uuid

    import boto3

    name = f"e2v-{uuid.uuid4().hex[:12]}"
    client = boto3.client("s3", endpoint_url=s3_server, region_name="us-east-1")
    client.create_bucket(Bucket=name)
    return client, name


def session_pids(sid: int) -> list[int]:
    """Processes whose session id is `sid` (a process started with start_new_session/setsid and
    everything it spawned that did not leave the session)."""
    from pathlib import Path

    pids = []
    for p in Path("/proc").iterdir():
        if not p.name.isdigit():
            continue
        try:
            stat = (p / "stat").read_text()
        except OSError:
            continue
        fields = stat[stat.rindex(")") + 2 :].split()
        if int(fields[3]) == sid:  # field 6 of /proc/PID/stat: session id
            pids.append(int(p.name))
    return pids


def kill_session(sid: int) -> None:
    import signal

    for pid in session_pids(sid):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
