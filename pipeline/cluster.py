"""Ray: join or start a cluster (failing fast when it cannot be reached), and size the model pool."""

from __future__ import annotations

import logging
import math
import os
import socket
import sys
import threading
from dataclasses import dataclass

from .config import JobConfig

REACH_TIMEOUT_S = 10.0
# Ray keeps about one idle worker per CPU and by default kills the others after 1 s idle. The read,
# decode and write tasks ask for fractions of a CPU, so more workers than CPUs are busy at once and
# the extra ones go idle between tasks; each replacement pays the imports again (Ray Data, torch:
# 2-4 CPU-s), which on a small node is a large share of the job's CPU (bench/RESULTS.md). So idle
# workers live a minute. Clusters started with `ray start` take the same setting from the
# environment (infra/).
WORKER_IDLE_MS = 60_000


class ClusterError(RuntimeError):
    """Ray cannot be used as configured (unreachable cluster, GPUs it does not have)."""


def init_ray(cfg: JobConfig) -> tuple[bool, bool]:
    """Join the configured cluster (`ray.address`, else RAY_ADDRESS as set by `ray job submit`), or
    start an embedded local Ray. -> (this call initialised Ray, it started a local Ray)."""
    import ray

    if ray.is_initialized():
        return False, False
    quiet_ray_logs()
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    # Ray's own INFO lines (local instance started, data executor plans) are not the job's news
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        check_reachable(address)
        ray.init(address=address, **quiet)
        return True, False
    # "local": always a fresh embedded Ray, never some other cluster found on this machine
    ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus,
        include_dashboard=False,
        _system_config={"idle_worker_killing_time_threshold_ms": WORKER_IDLE_MS},
        **quiet,
    )
    return True, True


def quiet_ray_logs() -> None:
    """The job prints its own progress and summary; Ray Data's plan and executor lines, and the
    note that a local Ray uses token auth (its default), would only look like news to the user.
    A worker or actor that died (a poison row, a killed process) ends the attempt with Ray Data's
    ERROR line and a traceback; the job restarts and says so in one line of its own, so that
    record is dropped (other errors of the executor still print)."""
    for name in ("ray.data", "ray._private.authentication"):
        logging.getLogger(name).setLevel(logging.ERROR)
    for name in ("ray.data._internal.execution.streaming_executor_state", "ray.data.exceptions"):
        logger = logging.getLogger(name)
        if not any(isinstance(f, _DeathsTheJobReports) for f in logger.filters):
            logger.addFilter(_DeathsTheJobReports())


class _DeathsTheJobReports(logging.Filter):
    """Drops log records about a process that died under Ray (the job's restart line reports
    those): the record's exception, or the one being handled where it is logged without one."""

    def filter(self, record: logging.LogRecord) -> bool:
        e = record.exc_info[1] if record.exc_info else sys.exc_info()[1]
        return not died(e)


def died(e: BaseException | None) -> bool:
    """Whether `e` (or what it wraps) is a worker, actor or node that died under Ray."""
    import ray.exceptions as rex

    kinds = (
        ActorLost,
        rex.ActorDiedError,
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.ActorUnavailableError,
    )
    for _ in range(10):
        if e is None:
            return False
        if isinstance(e, kinds):
            return True
        e = getattr(e, "cause", None) or e.__cause__ or e.__context__
    return False


def check_reachable(address: str, timeout_s: float = REACH_TIMEOUT_S) -> None:
    """Ray retries an unreachable GCS for minutes with only its own log lines; a TCP connect says
    within seconds whether anything listens at host:port."""
    target = address.split("://", 1)[-1]
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        with socket.create_connection((host, int(port)), timeout=timeout_s):
            return
    except ValueError:
        raise ClusterError(f"ray.address {address!r} is not host:port") from None
    except OSError as e:
        reason = "timed out" if isinstance(e, TimeoutError) else (e.strerror or type(e).__name__)
        raise ClusterError(
            f"cannot reach the Ray cluster at {address} ({reason} after {timeout_s:.0f} s); check ray.address "
            f"(or RAY_ADDRESS), or leave it unset to run on an embedded local Ray"
        ) from None


@dataclass
class Placement:
    device: str  # "cuda" | "cpu"
    min_actors: int
    max_actors: int | None  # None: grow with the GPUs the cluster gains (autoscaling)
    num_cpus: float
    num_gpus: float
    torch_threads: int


def plan_placement(cfg: JobConfig, resources: dict[str, float]) -> Placement:
    """Devices and pool size from the cluster's resources. Asking Ray for a GPU the cluster does
    not have would wait forever, so that case is an error up front."""
    m = cfg.model
    gpus = resources.get("GPU", 0.0)
    cpus = resources.get("CPU", 1.0)
    if m.device == "cuda" and gpus <= 0:
        raise ClusterError(
            "model.device is cuda but the Ray cluster has no GPUs (set model.device: auto or cpu)"
        )
    if gpus > 0 and m.device in ("auto", "cuda"):
        n = m.num_actors or max(1, int(gpus / m.gpus_per_actor))
        threads = m.torch_threads or max(1, math.ceil(m.cpus_per_actor))
        cpus_each = min(m.cpus_per_actor, max(cpus / n - 0.5, 0.5))
        # the pool starts with every GPU busy and, unless num_actors pins it, follows GPUs added later
        return Placement("cuda", n, m.num_actors, cpus_each, m.gpus_per_actor, threads)
    # CPU: leave a core for the decode and write tasks, or the pipeline starves (Ray Data does not
    # reserve CPUs for upstream tasks). The model is the only heavy work, so its threads may use the
    # cores the light stages leave idle.
    n = m.num_actors or max(1, int((cpus - 1) / m.cpus_per_actor))
    threads = m.torch_threads or max(1, int(cpus // n))
    # start with one actor and let Ray Data grow the pool within the CPUs the other stages leave (a
    # pool started whole can hold every CPU the decode tasks need, and the job then waits forever)
    return Placement("cpu", 1, n, m.cpus_per_actor, 0.0, threads)


class ActorLost(RuntimeError):
    """A model actor's process died while the actor held no task (see ActorWatch)."""


def dead_by_accident(class_fragment: str) -> dict[str, str]:
    """Actor id -> why it died, for this job's actors of `class_fragment` that died by accident
    (not killed on purpose by their pool)."""
    import ray
    import ray._private.state as state
    from ray.core.generated import common_pb2

    job = ray.get_runtime_context().get_job_id()
    names = common_pb2.ActorDiedErrorContext.Reason
    out = {}
    for actor_id, a in state.actors().items():
        if a.get("State") != "DEAD" or class_fragment not in a.get("ActorClassName", ""):
            continue
        if a.get("JobID") != job:
            continue
        ctx = a["DeathCause"].actor_died_error_context
        if names.Name(ctx.reason) in ("RAY_KILL", "OUT_OF_SCOPE"):
            continue  # the pool let it go
        out[actor_id] = f"pid {a.get('Pid')}: {names.Name(ctx.reason)}"
    return out


class ActorWatch:
    """Ray Data expects its pool actors to restart; the job runs them without restarts (see
    run._model_stage), and an actor that dies while it holds no task then stays in the pool as
    running, never replaced and never reported: the run would wait forever. This watch polls the
    GCS for actors of `class_fragment` that died (not killed on purpose: a pool scaling down) since
    it started, and stops the dataset's executor so that run() restarts the pipeline."""

    def __init__(self, class_fragment: str, interval_s: float = 2.0):
        self.fragment, self.interval_s = class_fragment, interval_s
        self.lost: str | None = None
        try:
            self._seen = self._dead()
        except Exception:  # the watch is a safety net: never the reason a run fails
            self._seen = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="actor-watch", daemon=True)

    def __enter__(self) -> ActorWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _dead(self) -> dict[str, str]:
        return dead_by_accident(self.fragment)

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            try:
                if self._seen is None:
                    self._seen = self._dead()
                    continue
                new = {k: v for k, v in self._dead().items() if k not in self._seen}
            except Exception:  # the GCS may be briefly unreachable; the next poll tells
                continue
            if new:
                self.lost = next(iter(new.values()))
                for t in threading.enumerate():
                    if t.name.startswith("StreamingExecutor-") and hasattr(t, "shutdown"):
                        t.shutdown(force=True, exception=ActorLost(self.lost))
                return
