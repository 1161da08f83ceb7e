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


def test_outside_ray_nothing_is_recorded():
    flight = InFlight(None)
    flight.record(["x"])
    flight.clear()
