"""The poison guard's bookkeeping in Ray's key-value store: per run, collected, forgotten."""

from pipeline.poison import Guard, InFlight, collect_suspects, forget, scope


def _keys(namespace: str) -> list[bytes]:
    from ray.experimental import internal_kv

    return internal_kv._internal_kv_list("", namespace=namespace)


def test_in_flight_rows_become_suspects_of_their_own_run_only(ray_session):
    a, b = scope("run-a"), scope("run-b")  # two jobs on the same manifest: the same row ids
    first, second = InFlight(a), InFlight(a)
    first.record(["r1", "r2"])
    second.clear(second.record(["r3"]))  # its call finished
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


def test_two_calls_of_one_actor_in_flight_at_once_are_recorded_apart(ray_session):
    """A GPU actor runs two calls at once: the one that finishes clears its own rows only."""
    ns = scope("run-d")
    flight = InFlight(ns)
    slow = flight.record(["s1", "s2"])
    fast = flight.record(["f1"])
    flight.clear(fast)
    assert collect_suspects(ns) == {"s1", "s2"}
    flight.clear(slow)
    forget(ns)


def test_outside_ray_nothing_is_recorded():
    flight = InFlight(None)
    flight.clear(flight.record(["x"]))


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
