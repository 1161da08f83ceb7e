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
    ns = scope("run-two-calls")
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


class BrokenDevice:
    """A model actor whose device breaks: it notes its node, as EmotionPredictor does before it ends."""

    def __init__(self, namespace: str):
        self.flight = InFlight(namespace)

    def break_(self) -> str:
        import ray

        node = ray.get_runtime_context().get_node_id()
        self.flight.device_broken(node)
        return node


class Where:
    def node(self) -> str:
        import ray

        return ray.get_runtime_context().get_node_id()


def test_a_node_whose_device_broke_twice_is_avoided_where_another_can_hold_the_pool(ray_session):
    """Two actors of a run end on a broken device on one node: the driver counts two for that node.
    The pool avoids such a node through a label selector on Ray's node id, which Ray honours for
    actors; but not when no other node could hold a model actor (it would wait forever)."""
    import ray

    from pipeline.cluster import Placement, model_actor_options, nodes_to_avoid
    from pipeline.poison import broken_devices

    ns = scope("run-d")
    actor = ray.remote(num_cpus=0, max_restarts=0)(BrokenDevice)
    nodes = [ray.get(a.break_.remote()) for a in (actor.remote(ns), actor.remote(ns))]
    here = nodes[0]
    assert broken_devices(ns) == {here: 2} and broken_devices(scope("run-e")) == {}
    forget(ns)

    said: list[str] = []
    placement = Placement("cpu", 1, 1, 1.0, 0.0, 1)
    # the only node: the pool stays on it, and the driver says why
    assert nodes_to_avoid(placement, {here: 2}, said.append) == [] and "no other node" in said[-1]
    other = "f" * 56  # a node id of a node that failed twice elsewhere (gone now)
    assert nodes_to_avoid(placement, {other: 2, here: 1}, said.append) == [other]
    assert "avoids it" in said[-1]

    def node_of(options: dict) -> list:
        """The node a model-like actor with `options` is placed on ([]: not placed within 10 s)."""
        probe = ray.remote(num_cpus=0, max_restarts=0)(Where).options(**options).remote()
        ready, _ = ray.wait([probe.node.remote()], timeout=10)
        placed = ray.get(ready)
        ray.kill(probe)
        return placed

    assert node_of(model_actor_options(Placement("cpu", 1, 1, 1.0, 0.0, 1, avoid_nodes=[other]))) == [here]
    assert node_of(model_actor_options(Placement("cpu", 1, 1, 1.0, 0.0, 1, avoid_nodes=[here]))) == []
