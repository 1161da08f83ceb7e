"""Device and pool decisions from a cluster's resource map (no cluster, no GPU needed; the model on a
GPU is tests/test_gpu.py)."""

import pytest

from pipeline.cluster import ClusterError, plan_placement
from pipeline.config import parse_config


def cfg(**model):
    return parse_config({"input": {"manifest": "m.jsonl"}, "output": {"path": "o"}, "model": model})


def test_gpu_cluster_gets_one_actor_per_gpu_or_more_with_fractions():
    p = plan_placement(cfg(), {"CPU": 32.0, "GPU": 4.0})
    assert (p.device, p.min_actors, p.num_gpus) == ("cuda", 4, 1.0)
    p = plan_placement(cfg(gpus_per_actor=0.5), {"CPU": 32.0, "GPU": 4.0})
    assert (p.min_actors, p.num_gpus) == (8, 0.5)


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


def test_asking_for_cuda_without_gpus_fails_fast_instead_of_hanging():
    with pytest.raises(ClusterError, match="no GPUs"):
        plan_placement(cfg(device="cuda"), {"CPU": 8.0})


@pytest.mark.parametrize(
    "resources,model,expected",
    [
        # (device, min_actors, max_actors, CPUs per actor, GPUs per actor, torch threads)
        ({"CPU": 32.0, "GPU": 4.0}, {}, ("cuda", 4, None, 1.0, 1.0, 1)),
        # a GPU node short of CPUs still gets an actor per GPU, on half a CPU each (32 / 4 ... 2 / 4 - 0.5)
        ({"CPU": 2.0, "GPU": 4.0}, {}, ("cuda", 4, None, 0.5, 1.0, 1)),
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
