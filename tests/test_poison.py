"""The poison guard's bookkeeping in Ray's key-value store: per run, collected, forgotten."""

from pipeline.poison import Guard, InFlight, collect_suspects, forget, scope


def _keys(namespace: str) -> list[bytes]:
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_list("", namespace=namespace)


def test_in_flight_rows_become_suspects_of_their_own_run_only(ray_session):
    a, b = scope("run-a"), scope("run-b")  # two jobs on the same manifest: the same row ids
    first, second = InFlight(a), InFlight(a)
    first.record(["r1", "r2"])
    second.record(["r3"])
    second.clear()  # its call finished
    InFlight(b).record(["r1"])
    assert collect_suspects(a) == {"r1", "r2"}
    assert collect_suspects(a) == {"r1", "r2"}  # remembered across attempts, in-flight keys consumed
    InFlight(a).record(["r4"])
    assert collect_suspects(a) == {"r1", "r2", "r4"}
    assert collect_suspects(b) == {"r1"}
    Guard("decode", ["r1", "r2"], a).before("r1")  # a decode block's state lives there too
    assert _keys(a)
    forget(a)
    assert _keys(a) == [] and collect_suspects(b) == {"r1"}
    forget(b)
    assert _keys(b) == []


OUTSIDE_RAY = """
import ray
from pipeline.poison import Guard, InFlight, collect_suspects

InFlight("run-x").record(["x"])
InFlight(None).record(["y"])
Guard("decode", ["a", "b"], "run-x").before("a")  # as if this attempt died on row a
again = Guard("decode", ["a", "b"], "run-x")
print(again.attempt, sorted(again.poisoned), sorted(collect_suspects("run-x")), ray.is_initialized())
"""


def test_outside_ray_nothing_is_recorded():
    """The decode and model code run without Ray too (a notebook, a unit test): nothing is recorded or
    remembered (a block's second try is still its first), and no Ray is started for it. In a fresh
    interpreter: this test session may have started Ray already."""
    import os
    import subprocess
    import sys

    r = subprocess.run(
        [sys.executable, "-c", OUTSIDE_RAY], capture_output=True, text=True, timeout=120, env=os.environ
    )
    assert r.returncode == 0, r.stderr[-2000:]
    assert r.stdout.split("\n")[-2] == "1 [] [] False", r.stdout


class PoisonRecorder:
    """An actor that records a call in flight, then dies by accident or is killed by its owner."""

    def __init__(self, namespace: str):
        self.flight = InFlight(namespace)

    def call(self, ids: list[str], crash: bool) -> None:
        import os

        self.flight.record(ids)
        if crash:
            os._exit(134)  # as a native crash would


def test_only_the_calls_of_actors_that_died_by_accident_become_suspects(ray_session):
    """When an attempt fails, the pool's other actors are killed mid-call: their rows were not the
    cause and are not suspects (unless no dead actor left a record)."""
    import time

    import ray

    from pipeline.cluster import dead_by_accident

    ns = scope("run-c")
    actor = ray.remote(num_cpus=0, max_restarts=0)(PoisonRecorder)
    crashing, killed = actor.remote(ns), actor.remote(ns)
    ray.get(killed.call.remote(["k1", "k2"], False))
    ray.kill(killed)
    try:
        ray.get(crashing.call.remote(["p", "q"], True))
    except ray.exceptions.RayActorError:
        pass
    deadline = time.time() + 60
    while not (dead := set(dead_by_accident("PoisonRecorder"))) and time.time() < deadline:
        time.sleep(0.2)
    assert len(dead) == 1
    assert collect_suspects(ns, dead) == {"p", "q"}
    assert collect_suspects(ns, dead) == {"p", "q"}  # the killed actor's record is gone too
    InFlight(ns).record(["x"])  # a record of no actor known dead: taken as a suspect (the safe side)
    assert collect_suspects(ns, dead) == {"p", "q", "x"}
    forget(ns)
