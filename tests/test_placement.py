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
