"""Device and pool decisions from a cluster's resource map (no cluster, no GPU needed; the model on a
GPU is tests/test_gpu.py)."""

import signal

import pytest

from pipeline.cluster import ClusterError, GpuNode, actors_per_gpu, plan_placement
from pipeline.config import parse_config


def cfg(**model):
    return parse_config({"input": {"manifest": "m.jsonl"}, "output": {"path": "o"}, "model": model})


def test_gpu_cluster_gets_one_actor_per_gpu_or_more_with_fractions():
    p = plan_placement(cfg(), {"CPU": 32.0, "GPU": 4.0})
    assert (p.device, p.min_actors, p.num_gpus) == ("cuda", 4, 1.0)
    p = plan_placement(cfg(gpus_per_actor=0.5), {"CPU": 32.0, "GPU": 4.0})
    assert (p.min_actors, p.num_gpus) == (8, 0.5)


@pytest.mark.parametrize(
    "share,gpus,actors",
    [
        # Ray packs a fractional share within one GPU: a GPU holds one 0.6 actor, two 0.4, three 0.3
        (0.6, 2.0, 2),
        (0.4, 2.0, 4),
        (0.3, 3.0, 9),
        (0.75, 4.0, 4),
        (0.5, 3.0, 6),
        (1.0, 3.0, 3),
    ],
)
def test_a_gpu_share_pool_has_as_many_actors_as_the_gpus_hold(share, gpus, actors):
    """The default pool size with model.gpus_per_actor set was GPUs / share (0.6 on 2 GPUs: 3, 0.3 on
    3 GPUs: 10), counting the left-over pieces of several GPUs as room for one more actor that Ray
    never places: it stayed pending (on an autoscaling cluster, asking for a GPU node it does not
    need) and _run.json's pool size was wrong."""
    p = plan_placement(cfg(gpus_per_actor=share), {"CPU": 64.0, "GPU": gpus})
    assert (p.min_actors, p.num_gpus) == (actors, share)


def test_gpu_pool_asks_for_num_actors_gpus_and_keeps_asking():
    # fewer GPUs than actors (an autoscaler is adding them): every actor is asked for at the start,
    # and the pool's minimum keeps Ray Data from dropping the ones that wait for a GPU
    p = plan_placement(cfg(num_actors=3), {"CPU": 8.0, "GPU": 1.0})
    assert (p.min_actors, p.max_actors) == (3, 3)


def test_gpu_pool_follows_gpus_added_later_unless_pinned():
    # no upper bound: Ray Data grows the pool when an autoscaler adds GPU nodes mid-run
    assert plan_placement(cfg(), {"CPU": 32.0, "GPU": 4.0}).max_actors is None
    assert plan_placement(cfg(num_actors=2), {"CPU": 32.0, "GPU": 4.0}).max_actors == 2


def test_cpu_cluster_leaves_room_for_decode_and_write():
    p = plan_placement(cfg(), {"CPU": 2.0})
    assert (p.device, p.max_actors, p.num_gpus, p.torch_threads) == ("cpu", 1, 0.0, 2)
    p = plan_placement(cfg(cpus_per_actor=4), {"CPU": 16.0})
    assert (p.max_actors, p.torch_threads) == (3, 5)
    assert plan_placement(cfg(device="cpu"), {"CPU": 8.0, "GPU": 1.0}).device == "cpu"


@pytest.mark.parametrize(
    "cpus,model",
    [(1.0, {}), (2.0, {"cpus_per_actor": 2}), (2.0, {"cpus_per_actor": 4}), (3.0, {"cpus_per_actor": 2.9})],
)
def test_a_cpu_model_actor_leaves_a_decode_task_room_to_run(cpus, model):
    """A decode task asks for DECODE_CPUS; the model actor holds its CPUs for the whole run. An actor
    asking for every CPU there is (the defaults on one CPU, or cpus_per_actor >= the CPUs) left no
    decode task able to start: the job waited forever."""
    from pipeline.cluster import DECODE_CPUS

    p = plan_placement(cfg(**model), {"CPU": cpus})
    assert p.device == "cpu" and 0 < p.num_cpus and p.num_cpus + DECODE_CPUS <= cpus


@pytest.mark.parametrize(
    "cpus,gpus,model",
    [
        (2.0, 4.0, {}),
        (2.0, 1.0, {"gpus_per_actor": 0.25}),
        (4.0, 1.0, {"gpus_per_actor": 0.125}),
        (2.0, 1.0, {"num_actors": 4, "gpus_per_actor": 0.25}),
        (3.0, 8.0, {"cpus_per_actor": 2}),
    ],
)
def test_a_gpu_pool_leaves_a_decode_task_room_to_run(cpus, gpus, model):
    """More GPU actors than half the CPUs (4 GPUs on a 2-CPU node, `gpus_per_actor: 0.25` there) got
    half a CPU each, every CPU of the node: no decode task could start and the job waited forever
    with no row done."""
    from pipeline.cluster import DECODE_CPUS

    p = plan_placement(cfg(**model), {"CPU": cpus, "GPU": gpus})
    assert p.device == "cuda" and p.min_actors * p.num_cpus + DECODE_CPUS <= cpus, p


def test_a_job_on_one_cpu_finishes(tiny_model_dir, tmp_path):
    """`ray.num_cpus: 1` (or a one-vCPU machine): the model actor took the only CPU and the job hung
    without a row (on 2 CPUs the same 3 rows take ~10 s)."""
    import json
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {root / 'samples/demo/manifest.jsonl'}\n  limit: 3\n"
        f"model:\n  source: {tiny_model_dir}\noutput:\n  path: {out}\nray:\n  num_cpus: 1\n"
    )
    try:
        r = subprocess.run(
            [sys.executable, str(root / "jobs/extract.py"), "--config", str(cfg)],
            capture_output=True,
            text=True,
            timeout=150,
        )
    except subprocess.TimeoutExpired as e:
        pytest.fail(f"the job on one CPU did not finish: {(e.stderr or b'')[-2000:]!r}")
    assert r.returncode == 0, r.stderr[-3000:]
    assert json.loads((out / "_run.json").read_text())["rows"]["ok"] == 3


def test_asking_for_cuda_without_gpus_fails_fast_instead_of_hanging():
    with pytest.raises(ClusterError, match="no GPUs"):
        plan_placement(cfg(device="cuda"), {"CPU": 8.0})


@pytest.mark.parametrize(
    "resources,model,expected",
    [
        # (device, min_actors, max_actors, CPUs per actor, GPUs per actor, torch threads)
        ({"CPU": 32.0, "GPU": 4.0}, {}, ("cuda", 4, None, 1.0, 1.0, 1)),
        # a GPU node short of CPUs still gets an actor per GPU, on what a decode task leaves: (2 - 0.5) / 4
        ({"CPU": 2.0, "GPU": 4.0}, {}, ("cuda", 4, None, 0.375, 1.0, 1)),
        # two actors per GPU; 4 CPUs asked, 16 / 4 - 0.5 = 3.5 given; threads follow what was asked
        (
            {"CPU": 16.0, "GPU": 2.0},
            {"cpus_per_actor": 4, "gpus_per_actor": 0.5},
            ("cuda", 4, None, 3.5, 0.5, 4),
        ),
        ({"CPU": 8.0, "GPU": 1.0}, {"num_actors": 2, "torch_threads": 3}, ("cuda", 2, 2, 1.0, 1.0, 3)),
        ({"CPU": 8.0, "GPU": 2.0}, {"device": "cuda", "cpus_per_actor": 2.5}, ("cuda", 2, None, 2.5, 1.0, 3)),
    ],
)
def test_gpu_placement_from_the_cluster_resource_map(resources, model, expected):
    p = plan_placement(cfg(**model), resources)
    assert (p.device, p.min_actors, p.max_actors, p.num_cpus, p.num_gpus, p.torch_threads) == expected


@pytest.mark.parametrize(
    "nodes,expected",
    [
        # one H200 (141 GB) with 16 cores, the node bench/RESULTS.md measured: 4 actors, 24 GB and 4 CPUs each
        ([GpuNode(16, 1, "H200")], 4),
        # 8 x H100 (80 GB) with 208 vCPUs: memory allows 3 (80 // 24), CPUs 6
        ([GpuNode(208, 8, "H100")], 3),
        # the same GPU with 8 CPUs per GPU: the CPUs allow 2
        ([GpuNode(64, 8, "H100")], 2),
        ([GpuNode(48, 1, "L40S")], 2),
        # a 16 GB T4 with 48 vCPUs per 4 GPUs: memory allows none beyond the one
        ([GpuNode(48, 4, "T4")], 1),
        # a GPU Ray could not name, or one not in the table: one actor, as before
        ([GpuNode(64, 1, None)], 1),
        ([GpuNode(64, 1, "GeForce-RTX-4090")], 1),
        # the smallest node decides (one GPU share for every actor of the pool)
        ([GpuNode(16, 1, "H200"), GpuNode(8, 1, "L4")], 1),
        ([], 1),
    ],
)
def test_default_actors_per_gpu_from_the_gpu_memory_and_the_cpus_per_gpu(nodes, expected):
    assert actors_per_gpu(nodes)[0] == expected


@pytest.mark.parametrize(
    "nvml_name,gb",
    [
        ("NVIDIA H200", 141),
        ("NVIDIA H100 80GB HBM3", 80),
        ("NVIDIA A100-SXM4-80GB", 40),  # Ray names both A100 sizes "A100": the smaller one counts
        ("Tesla T4", 16),
        ("NVIDIA A10G", 24),
        ("NVIDIA L4", 24),
        ("NVIDIA L40S", 48),
        ("NVIDIA RTX 6000 Ada Generation", 48),
        ("NVIDIA B200", 180),
    ],
)
def test_the_gpu_memory_table_knows_the_names_ray_gives_real_devices(nvml_name, gb):
    # Ray's own naming of an NVML device name (what `accelerator_type:<name>` says on a GPU node)
    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    from pipeline.cluster import GPU_MEMORY_GB

    assert GPU_MEMORY_GB[NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(nvml_name)] == gb


def test_a_default_gpu_pool_shares_each_big_gpu_between_actors():
    p = plan_placement(cfg(), {"CPU": 16.0, "GPU": 1.0}, [GpuNode(16, 1, "H200")])
    assert (p.device, p.min_actors, p.max_actors, p.num_gpus, p.num_cpus) == ("cuda", 4, None, 0.25, 1.0)
    assert p.gpu_memory_fraction == 0.25
    # three per GPU: a share that three actors fit in (Ray counts GPU shares to 1e-4)
    p = plan_placement(cfg(), {"CPU": 208.0, "GPU": 8.0}, [GpuNode(208, 8, "H100")])
    assert (p.min_actors, p.num_gpus) == (24, 0.3333) and 3 * p.num_gpus <= 1
    # what the user sets wins; num_actors set by hand keeps one actor per GPU
    p = plan_placement(cfg(gpus_per_actor=1.0), {"CPU": 16.0, "GPU": 1.0}, [GpuNode(16, 1, "H200")])
    assert (p.min_actors, p.num_gpus, p.gpu_memory_fraction) == (1, 1.0, None)
    p = plan_placement(cfg(num_actors=8), {"CPU": 16.0, "GPU": 1.0}, [GpuNode(16, 1, "H200")])
    assert (p.min_actors, p.num_gpus) == (8, 1.0)


PLACE_ON_A_NODE = """
import json, sys
import ray
from pipeline.cluster import place_model
from pipeline.config import parse_config

kind = sys.argv[1]
ray.init(num_cpus=16, num_gpus=1, resources={f"accelerator_type:{kind}": 1} if kind else {},
         include_dashboard=False, log_to_driver=False)
cfg = parse_config({"input": {"manifest": "m.jsonl"}, "output": {"path": "o"}})
said = []
placement, _ = place_model(cfg, said.append)
print(json.dumps({"actors": placement.min_actors, "gpus": placement.num_gpus,
                  "fraction": placement.gpu_memory_fraction, "said": said}))
"""


@pytest.mark.parametrize("kind,actors", [("H200", 4), ("", 1)])
def test_the_pool_is_sized_from_the_nodes_ray_reports(kind, actors, tmp_path):
    """A real Ray node that advertises a GPU and, as Ray names a GPU it detects, its accelerator type
    (nothing is scheduled: 16 logical CPUs cost nothing). The job says what it chose and why."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    script = tmp_path / "place.py"
    script.write_text(PLACE_ON_A_NODE)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent), "RAY_AUTH_MODE": "token"}
    r = subprocess.run(
        [sys.executable, str(script), kind], capture_output=True, text=True, timeout=300, env=env
    )
    assert r.returncode == 0, r.stderr[-3000:]
    facts = json.loads(r.stdout.strip().splitlines()[-1])
    assert (facts["actors"], facts["gpus"]) == (actors, 1 / actors), facts
    assert facts["fraction"] == (None if actors == 1 else 1 / actors), facts
    line = next(x for x in facts["said"] if x.startswith("model pool:"))
    want = "H200 (141 GB), 16 CPUs per GPU" if kind else "unnamed (memory not known), 16 CPUs per GPU"
    assert f"{actors} actor(s) per GPU ({want}" in line, line


def test_an_unreachable_ray_address_ends_in_one_line_within_seconds(tiny_model_dir, tmp_path):
    """As a user runs it (its own process: no Ray already running in it)."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    (tmp_path / "m.jsonl").write_text('{"id": "a", "path": "a.wav"}\n')
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {tmp_path / 'm.jsonl'}\nmodel:\n  source: {tiny_model_dir}\n"
        f"output:\n  path: {tmp_path / 'out'}\nray:\n  address: 127.0.0.9:6999\n"
    )
    extract = Path(__file__).resolve().parent.parent / "jobs" / "extract.py"
    t0 = time.time()
    r = subprocess.run(
        [sys.executable, str(extract), "--config", str(cfg)], capture_output=True, text=True, timeout=120
    )
    err = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode == 2 and time.time() - t0 < 60
    assert len(err) == 1 and "cannot reach the Ray cluster at 127.0.0.9:6999" in err[0], err
    assert not (tmp_path / "out").exists()  # nothing left behind


def test_a_dashboard_url_as_ray_address_is_a_config_error_naming_the_key(tiny_model_dir, tmp_path):
    """`ray job submit --address http://HEAD:8265` (README) takes the dashboard's URL; the same URL as
    ray.address passed the reachability check (the dashboard listens) and Ray's ValueError about
    RAY_ADDRESS ended the job as a failure under Ray (exit 1), not as a bad config (exit 2)."""
    import socket

    with socket.socket() as dashboard:  # something listens there, as a head node's dashboard does
        dashboard.bind(("127.0.0.1", 0))
        dashboard.listen()
        url = f"http://127.0.0.1:{dashboard.getsockname()[1]}"
        r = _run_job(tmp_path, tiny_model_dir, f"ray:\n  address: {url}\n")
    err = [line for line in r.stderr.strip().splitlines() if line.strip()]
    assert r.returncode == 2, r.stderr[-3000:]
    assert len(err) == 1 and err[0].startswith("error: ") and "ray.address" in err[0] and url in err[0], err
    assert not (tmp_path / "out").exists()  # nothing left behind


def _run_job(tmp_path, model_dir, extra: str):
    import subprocess
    import sys
    from pathlib import Path

    (tmp_path / "m.jsonl").write_text('{"id": "a", "path": "a.wav"}\n')
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {tmp_path / 'm.jsonl'}\noutput:\n  path: {tmp_path / 'out'}\n"
        f"model:\n  source: {model_dir}\n{extra}"
    )
    extract = Path(__file__).resolve().parent.parent / "jobs" / "extract.py"
    return subprocess.run(
        [sys.executable, str(extract), "--config", str(cfg)], capture_output=True, text=True, timeout=300
    )


def test_cuda_on_a_cluster_that_gets_no_gpu_waits_then_ends_in_one_line(tiny_model_dir, tmp_path):
    """An embedded Ray has no GPU and no autoscaler: the job says what it waits for, and after
    ray.gpu_wait_s exits 2 with one error line naming the missing resource."""
    extra = "  device: cuda\nray:\n  num_cpus: 1\n  gpu_wait_s: 3\n  progress_interval_s: 1\n"
    r = _run_job(tmp_path, tiny_model_dir, extra)
    assert r.returncode == 2, r.stderr[-3000:]
    assert "waiting for a GPU node: model actors need GPU 1 each" in r.stderr
    last = r.stderr.strip().splitlines()[-1]
    assert "no GPU became free on the Ray cluster within ray.gpu_wait_s 3 s" in last, last
    assert "missing resource: GPU 1 per model actor" in last, last
    # a failed start leaves nothing behind: the lease released and the output folder it created gone
    assert not (tmp_path / "out").exists(), sorted(p.name for p in (tmp_path / "out").rglob("*"))


@pytest.mark.parametrize(("sig", "code"), [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_while_the_job_waits_for_a_gpu_stops_it_in_one_line(tiny_model_dir, tmp_path, sig, code):
    """README: SIGTERM / SIGINT (Kubernetes eviction, `ray job stop`, Ctrl-C) release the lease and exit
    143 / 130 with one line. Before the first row (the GPU wait of up to ray.gpu_wait_s, the manifest
    count) SIGTERM met the handler ray.init installs (sys.exit(15): exit 15, no line) and SIGINT a
    KeyboardInterrupt traceback."""
    import subprocess
    import sys
    import time
    from pathlib import Path

    (tmp_path / "m.jsonl").write_text('{"id": "a", "path": "a.wav"}\n')
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {tmp_path / 'm.jsonl'}\noutput:\n  path: {out}\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cuda\n"
        "ray:\n  num_cpus: 1\n  gpu_wait_s: 120\n  progress_interval_s: 1\n"
    )
    extract = Path(__file__).resolve().parent.parent / "jobs" / "extract.py"
    log = tmp_path / "job.log"
    with open(log, "w") as f:
        proc = subprocess.Popen([sys.executable, str(extract), "--config", str(cfg)], stderr=f, text=True)
    try:
        deadline = time.time() + 120
        while "waiting for a GPU node" not in log.read_text() and time.time() < deadline:
            assert proc.poll() is None, log.read_text()[-3000:]
            time.sleep(0.2)
        proc.send_signal(sig)
        rc = proc.wait(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    err = [x for x in log.read_text().splitlines() if x.strip() and not x.startswith("[emotion2vec]")]
    assert rc == code, log.read_text()[-3000:]
    assert len(err) == 1 and err[0].startswith(f"error: interrupted by {signal.Signals(sig).name}"), err
    assert not (out / "_lease.json").exists()  # released on the way out


WATCH = """
import json, os, sys, time
import ray
from pipeline.cluster import ActorWatch, init_ray
from pipeline.config import parse_config

cfg = parse_config({"input": {"manifest": "m"}, "output": {"path": "o"}, "ray": {"num_cpus": 2}})
init_ray(cfg)

@ray.remote(num_cpus=0, max_restarts=0)
class WatchedEmotionPredictor:
    def pid(self):
        return os.getpid()

victim, killed, dropped = (WatchedEmotionPredictor.remote() for _ in range(3))
pid = ray.get(victim.pid.remote())
ray.get([killed.pid.remote(), dropped.pid.remote()])
with ActorWatch("EmotionPredictor", interval_s=0.5) as watch:
    # the pool letting actors go (the end of an execution, scaling down): not losses
    ray.kill(killed)
    del dropped
    time.sleep(4)
    quiet = watch.lost
    os.kill(pid, 9)
    deadline = time.time() + 60
    while watch.lost is None and time.time() < deadline:
        time.sleep(0.5)
print(json.dumps({"pid": pid, "quiet": quiet, "lost": watch.lost, "failures": watch._failures}))
"""


def test_the_actor_watch_sees_a_model_actor_die_and_ignores_those_let_go(tmp_path):
    """The watch behind the idle-actor restart (cluster.ActorWatch) on the job's embedded Ray: it must
    notice an actor of the watched class whose process was killed, and not one ray.kill()ed or one
    whose last handle was dropped (how Ray Data's pool lets actors go)."""
    import json
    import os
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "PYTHONPATH": str(root)}
    r = subprocess.run(
        [sys.executable, "-c", WATCH], capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path
    )
    assert r.returncode == 0, r.stderr[-3000:]
    got = json.loads(r.stdout.strip().splitlines()[-1])
    assert got["failures"] == 0, got
    assert got["quiet"] is None, got
    assert got["lost"] and f"pid {got['pid']}" in got["lost"] and "WORKER_DIED" in got["lost"], got


@pytest.mark.parametrize(
    "nvml_names,dtype",
    [
        (["Tesla T4"], "float16"),
        (["Tesla V100-SXM2-16GB", "Tesla T4"], "float16"),
        (["NVIDIA A100-SXM4-80GB"], "bfloat16"),
        (["NVIDIA L4", "NVIDIA H100 80GB HBM3"], "bfloat16"),
    ],
)
def test_the_fingerprint_dtype_of_a_gpu_pool_follows_its_gpus_not_the_driver(nvml_names, dtype):
    """`model.dtype: auto` runs float16 on GPUs without bfloat16 (T4, V100) and bfloat16 on the others,
    as each actor decides on its GPU. The output's fingerprint took the driver's view: on a driver
    without a GPU (a KubeRay head, this test) always bfloat16, so an output made on T4s said bfloat16
    and a resume on A100s added bfloat16 rows to its float16 ones without a word."""
    from types import SimpleNamespace

    from ray._private.accelerators.nvidia_gpu import NvidiaGPUAcceleratorManager

    from pipeline.cluster import Placement
    from pipeline.run import _fingerprint

    types = [NvidiaGPUAcceleratorManager._gpu_name_to_accelerator_type(n) for n in nvml_names]
    model = SimpleNamespace(fingerprint={}, frame_rate=50.0, sample_rate=16000)
    plan = SimpleNamespace(passthrough=[])
    placement = Placement("cuda", 1, None, 1.0, 1.0, 1)
    assert _fingerprint(cfg(), model, placement, plan, gpu_types=types)["dtype"] == dtype
    # a dtype the user sets is that dtype on any GPU
    assert _fingerprint(cfg(dtype="float32"), model, placement, plan, gpu_types=types)["dtype"] == "float32"


def test_under_a_simulated_gpu_the_fingerprint_dtype_is_what_the_cpu_runs_and_real_gpus_keep_theirs(
    monkeypatch,
):
    """EMOTION2VEC_SIMULATE_GPU=1 on GPUs Ray names no kind of (logical GPUs: nothing behind them):
    the actors run on their CPU, float16 only where it computes float16 natively; the fingerprint (the
    files' metadata) says that. GPUs Ray names are real: their dtype, with the variable set or not."""
    from types import SimpleNamespace

    import torch

    from pipeline.cluster import Placement
    from pipeline.run import _fingerprint

    from .conftest import cpu_runs_natively

    model = SimpleNamespace(fingerprint={}, frame_rate=50.0, sample_rate=16000)
    plan = SimpleNamespace(passthrough=[])
    placement = Placement("cuda", 1, None, 1.0, 1.0, 1)
    monkeypatch.setenv("EMOTION2VEC_SIMULATE_GPU", "1")
    cpu = {d: d if cpu_runs_natively(getattr(torch, d)) else "float32" for d in ("float16", "bfloat16")}
    for types in ([None], []):
        assert _fingerprint(cfg(dtype="float16"), model, placement, plan, types)["dtype"] == cpu["float16"]
        assert _fingerprint(cfg(), model, placement, plan, types)["dtype"] == cpu["bfloat16"]  # auto
    assert _fingerprint(cfg(dtype="float16"), model, placement, plan, ["H100"])["dtype"] == "float16"
    assert _fingerprint(cfg(), model, placement, plan, ["T4"])["dtype"] == "float16"
    monkeypatch.delenv("EMOTION2VEC_SIMULATE_GPU")
    assert _fingerprint(cfg(dtype="float16"), model, placement, plan, [None])["dtype"] == "float16"


def test_an_ipv6_ray_address_is_checked_at_its_host():
    """Ray takes `[host]:port` for IPv6 GCS addresses; the reachability check connected to the host
    "[::1]" with its brackets, which never resolves: a listening cluster was "cannot reach" (exit 2)."""
    import socket

    from pipeline.cluster import check_reachable

    if not socket.has_ipv6:
        pytest.skip("no IPv6 here")
    with socket.socket(socket.AF_INET6) as gcs:
        try:
            gcs.bind(("::1", 0))
        except OSError:
            pytest.skip("no IPv6 loopback here")
        gcs.listen()
        port = gcs.getsockname()[1]
        check_reachable(f"[::1]:{port}", timeout_s=5)
    with pytest.raises(ClusterError, match="cannot reach"):  # nothing listens there any more
        check_reachable(f"[::1]:{port}", timeout_s=5)


def test_ray_address_local_is_the_embedded_ray_also_under_ray_address(monkeypatch):
    """`ray.address: local` (Ray's word for a new local instance) went to ray.init as a cluster to join:
    the embedded Ray's CPUs (`ray.num_cpus`) and settings were dropped and `_run.json` said it joined a
    cluster. It is the embedded Ray, also where RAY_ADDRESS names a cluster."""
    from pipeline.cluster import cluster_address

    def with_address(address):
        return parse_config(
            {"input": {"manifest": "m.jsonl"}, "output": {"path": "o"}, "ray": {"address": address}}
        )

    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.5:6379")
    assert cluster_address(with_address("local")) is None
    assert cluster_address(with_address("LOCAL")) is None
    assert cluster_address(with_address("auto")) == "auto"
    assert cluster_address(cfg()) == "10.0.0.5:6379"
    monkeypatch.setenv("RAY_ADDRESS", "local")
    assert cluster_address(cfg()) is None


def test_ray_datas_few_inputs_warning_stays_off_the_console():
    """The README promises a console of the job's own lines. Ray Data's executor thread warned on every
    small job (fewer blocks than the write pool's size) with two lines of advice on
    `override_num_blocks`, not the user's to take; quiet_ray_logs drops that warning process-wide."""
    import warnings

    from ray.data._internal.execution.operators import task_pool_map_operator as op

    from pipeline.cluster import quiet_ray_logs

    with warnings.catch_warnings(record=True) as seen:
        quiet_ray_logs()
        # the operator's own call, from its module (what the executor thread runs at the end of the inputs)
        fake = op.TaskPoolMapOperator.__new__(op.TaskPoolMapOperator)
        fake._name, fake._max_concurrency, fake._additional_split_factor = "MapBatches(write_parts)", 2, None
        fake._metrics = type("M", (), {"num_inputs_received": 1})()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(op.MapOperator, "all_inputs_done", lambda self: None)
            op.TaskPoolMapOperator.all_inputs_done(fake)
        warnings.warn("another UserWarning still shows", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another UserWarning still shows"]


def test_ray_datas_few_inputs_warning_of_a_gpu_pool_stays_off_the_console():
    """The same warning from an actor pool: a GPU pool's minimum is every GPU actor (2 GPUs, or
    `gpus_per_actor: 0.5`, or the 4 per H200 the defaults choose), so every job of fewer decoded blocks
    than actors printed Ray Data's advice on `override_num_blocks` among the job's lines."""
    import warnings

    from ray.data._internal.execution.operators import actor_pool_map_operator as op

    from pipeline.cluster import quiet_ray_logs

    with warnings.catch_warnings(record=True) as seen:
        quiet_ray_logs()
        fake = op.ActorPoolMapOperator.__new__(op.ActorPoolMapOperator)
        fake._name, fake._additional_split_factor = "MapBatches(EmotionPredictor)", None
        fake._metrics = type("M", (), {"num_inputs_received": 1})()
        fake._actor_pool = type("P", (), {"min_size": lambda self: 4})()
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr(op.MapOperator, "all_inputs_done", lambda self: None)
            op.ActorPoolMapOperator.all_inputs_done(fake)
        warnings.warn("another UserWarning still shows", UserWarning, stacklevel=1)
    assert [str(w.message) for w in seen] == ["another UserWarning still shows"]
