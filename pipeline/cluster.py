"""Ray: join or start a cluster (failing fast when it cannot be reached), and size the model pool."""

from __future__ import annotations

import logging
import math
import os
import signal
import socket
import sys
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from .config import JobConfig

REACH_TIMEOUT_S = 10.0
# Ray keeps about one idle worker per CPU and by default kills the others after 1 s idle. The read,
# decode and write tasks ask for fractions of a CPU, so more workers than CPUs are busy at once and
# the extra ones go idle between tasks; each replacement pays the imports again (Ray Data, torch:
# 2-4 CPU-s), which on a small node is a large share of the job's CPU (bench/RESULTS.md). So idle
# workers live a minute. Clusters started with `ray start` take the same setting from the
# environment (infra/).
WORKER_IDLE_MS = 60_000


# CPUs of one decode task (run.build_dataset). The model actors hold theirs for the whole run: a
# decode task must still fit beside them, or no row is ever decoded
DECODE_CPUS = 0.5


class ClusterError(RuntimeError):
    """Ray cannot be used as configured (unreachable cluster, GPUs it does not have)."""


def init_ray(cfg: JobConfig) -> tuple[bool, bool]:
    """Join the configured cluster (`ray.address`, else RAY_ADDRESS as set by `ray job submit`), or
    start an embedded local Ray. -> (this call initialised Ray, it started a local Ray)."""
    import ray

    if ray.is_initialized():
        return False, False
    quiet_ray_logs()
    with _keeps_sigterm_handler():
        return _init(ray, cfg)


@contextmanager
def _keeps_sigterm_handler() -> Iterator[None]:
    """ray.init installs its own SIGTERM handlers (Python's sys.exit(15), the core worker's stack dump
    and abort): a driver that handles SIGTERM itself (interrupt.on_interrupt: release the lease, exit
    143 with one line) gets its handler back. A default handler is left to Ray."""
    previous = signal.getsignal(signal.SIGTERM)
    try:
        yield
    except SystemExit as e:
        # a SIGTERM while ray.init ran met Ray's sys.exit(15): the caller's handler says what it means
        if callable(previous) and e.code == signal.SIGTERM:
            previous(signal.SIGTERM, None)
        raise
    finally:
        if callable(previous) and threading.current_thread() is threading.main_thread():
            signal.signal(signal.SIGTERM, previous)


def _init(ray: Any, cfg: JobConfig) -> tuple[bool, bool]:
    address = cluster_address(cfg)
    # Ray's own INFO lines (local instance started, data executor plans) are not the job's news
    quiet = {"logging_level": logging.WARNING, "log_to_driver": True}
    if address:
        check_reachable(address)
        try:
            ray.init(address=address, **quiet)
        except (ConnectionError, ValueError) as e:  # `auto` finding no cluster, an address Ray refuses
            why = " ".join(str(e).split())  # Ray's message spans lines; the job's error is one
            raise ClusterError(
                f"cannot join the Ray cluster at {address} (ray.address, or RAY_ADDRESS): {why}"
            ) from None
        return True, False
    # "local": always a fresh embedded Ray, never some other cluster found on this machine. Without
    # Ray's dashboard: the job prints its own progress and reads what it watches (ActorWatch,
    # lost_nodes) from the GCS, and the dashboard's modules make ray.init ~1 s slower on a 2-core
    # box (bench/RESULTS.md).
    ray.init(
        address="local",
        num_cpus=cfg.ray.num_cpus,
        include_dashboard=False,
        _system_config={"idle_worker_killing_time_threshold_ms": WORKER_IDLE_MS},
        **quiet,
    )
    return True, True


def cluster_address(cfg: JobConfig) -> str | None:
    """The cluster this job joins (`ray.address`, else RAY_ADDRESS), or None for an embedded Ray.
    `local` (Ray's own word for "start a new local instance") is the embedded Ray, with its CPUs,
    settings and `started_local`, also where RAY_ADDRESS names a cluster."""
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    return None if address is None or address.strip().lower() in ("", "local") else address


def quiet_ray_logs() -> None:
    """The job prints its own progress and summary; Ray Data's plan and executor lines, and the
    note that a local Ray uses token auth (its default), would only look like news to the user.
    A worker or actor that died (a poison row, a killed process) ends the attempt with Ray Data's
    ERROR line and a traceback; the job restarts and says so in one line of its own, so that
    record is dropped (other errors of the executor still print)."""
    for name in ("ray.data", "ray._private.authentication"):
        logging.getLogger(name).setLevel(logging.ERROR)
    # Ray Data's executor thread warns when an operator got fewer inputs than its pool size (the write
    # pool, for any manifest of a few blocks: every small job) and prints two lines of advice on
    # override_num_blocks that is not the user's to take; the filter is process-wide because the
    # warning comes from that thread, outside any catch_warnings of the driver's
    warnings.filterwarnings(
        "ignore", message="The maximum number of concurrent tasks for", category=UserWarning
    )
    # and its actor pools the same when an operator got fewer inputs than the pool's minimum: the model
    # pool's minimum is every GPU actor (run._model_stage), so every small job on 2+ GPU actors
    warnings.filterwarnings(
        "ignore", message="The minimum number of concurrent actors for", category=UserWarning
    )
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
    if address.lower().startswith(("http://", "https://")):
        # the dashboard's URL, which `ray job submit --address` takes; Ray's own error names RAY_ADDRESS
        raise ClusterError(
            f"ray.address {address!r} (or RAY_ADDRESS) is an HTTP address (the dashboard's, for `ray job "
            f"submit`); the job joins a cluster at its GCS address, host:6379, or leave it unset under "
            f"`ray job submit`"
        )
    target = address.split("://", 1)[-1]
    if address == "auto" or ":" not in target:
        return
    host, _, port = target.rpartition(":")
    try:
        # an IPv6 host comes in brackets ([::1]:6379, as Ray takes it); the socket wants it bare
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout_s):
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
    # the share of its GPU's memory each model actor's allocator may use (gpus_per_actor < 1, as each
    # actor sets it from the GPU share Ray assigned it); None: the whole device
    gpu_memory_fraction: float | None = None
    # nodes whose GPU broke under two model actors of this run: the pool is kept off them
    avoid_nodes: list[str] = field(default_factory=list)


# Model actors per GPU when `model.gpus_per_actor` is unset. One actor cannot keep a big GPU busy: its
# forward launches the GPU's work from one Python thread and its host work (collate, copies, Arrow)
# runs beside it, so the GPU idles between its calls (on an H200 with 16 cores: 1 actor 4,805
# audio-s/s at 34 % GPU busy, 2 actors 6,559, 4 actors 9,892, bench/RESULTS.md "GPU"). Each actor
# needs GPU memory (the base model's 600 s batches peaked at ~17 GB per actor there, with the CUDA
# context beside the allocator's cap) and CPUs: its own core, and the cores decoding for it.
MAX_ACTORS_PER_GPU = 4
GPU_GB_PER_ACTOR = 24
CPUS_PER_GPU_ACTOR = 4
# GPU memory by Ray's accelerator type (the `accelerator_type:<name>` resource Ray gives a GPU node,
# named from NVML's device name: "NVIDIA A100-SXM4-80GB" -> A100, "NVIDIA RTX 6000 Ada Generation" ->
# RTX-6000). Where one name covers several sizes (A100, V100, GH200) the smaller one.
# A type not listed gets one actor per GPU.
GPU_MEMORY_GB = {
    "T4": 16,
    "V100": 16,
    "A10": 24,
    "A10G": 24,
    "A30": 24,
    "L4": 24,
    "A40": 48,
    "L40": 48,
    "L40S": 48,
    "RTX-A6000": 48,
    "RTX-6000": 48,
    "A100": 40,
    "A100-40G": 40,
    "A100-80G": 80,
    "H100": 80,
    "H800": 80,
    "H20": 96,
    "GH200": 96,
    "RTX-PRO-6000": 96,
    "H200": 141,
    "B200": 180,
}


# `model.dtype: auto` on a GPU is bfloat16 where the GPU computes it natively (compute capability 8.0
# and later), else float16 (predictor.gpu_auto_dtype). By Ray's accelerator type; a name not listed
# here (or one that covers both kinds, RTX-6000) leaves the answer to the driver.
NO_BF16_GPUS = {"T4", "V100", "V100S", "P100", "P4", "P40", "K80", "M60", "TITAN-V"}
BF16_GPUS = {
    "A10", "A10G", "A30", "A40", "A100", "A100-40G", "A100-80G", "RTX-A6000", "L4", "L40", "L40S",
    "H100", "H800", "H20", "H200", "GH200", "B200", "B300", "GB200", "GB300", "RTX-PRO-6000",
}  # fmt: skip


def auto_gpu_dtype(gpu_types: list[str | None]) -> str | None:
    """The dtype `model.dtype: auto` runs in on GPU nodes of these accelerator types (float16 when
    none has bfloat16, bfloat16 when all have it), or None when the names do not tell."""
    if gpu_types and all(t in NO_BF16_GPUS for t in gpu_types):
        return "float16"
    if gpu_types and all(t in BF16_GPUS for t in gpu_types):
        return "bfloat16"
    return None


@dataclass(frozen=True)
class GpuNode:
    """What the pool size needs to know of one GPU node (from Ray's node table)."""

    cpus: float
    gpus: float
    accelerator: str | None  # Ray's accelerator type, e.g. "H200"; None when Ray did not name it


def actors_per_gpu(nodes: list[GpuNode]) -> tuple[int, str]:
    """The default model actors per GPU (all actors of a pool ask for the same GPU share, so the
    smallest node decides) -> (actors, why)."""
    if not nodes:
        return 1, "no GPU node to size it from"
    counts, why = [], []
    for node in nodes:
        memory = GPU_MEMORY_GB.get(node.accelerator or "")
        by_memory = memory // GPU_GB_PER_ACTOR if memory else 1
        by_cpus = int(node.cpus / node.gpus) // CPUS_PER_GPU_ACTOR
        counts.append(max(1, min(MAX_ACTORS_PER_GPU, by_memory, by_cpus)))
        gpu = (
            f"{node.accelerator} ({memory} GB)"
            if memory
            else f"{node.accelerator or 'unnamed'} (memory not known)"
        )
        why.append(f"{gpu}, {node.cpus / node.gpus:g} CPUs per GPU")
    return min(counts), "; ".join(sorted(set(why)))


def gpu_nodes() -> list[GpuNode]:
    """The alive nodes with GPUs, from Ray's node table."""
    import ray

    out = []
    for n in ray.nodes():
        res = n.get("Resources", {}) if n.get("Alive") else {}
        if res.get("GPU", 0) > 0:
            kinds = [k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")]
            out.append(GpuNode(res.get("CPU", 0.0), res["GPU"], kinds[0] if kinds else None))
    return out


def gpu_share(cfg: JobConfig, nodes: list[GpuNode] | None = None) -> float:
    """The GPU share of one model actor: `model.gpus_per_actor`; unset, a whole GPU when
    `model.num_actors` sizes the pool by hand (the actors are then GPUs, as an autoscaling group is
    sized), else 1 / actors_per_gpu(nodes), rounded down to Ray's resource precision so that that
    many actors fit on one GPU."""
    if cfg.model.gpus_per_actor is not None:
        return cfg.model.gpus_per_actor
    if cfg.model.num_actors is not None:
        return 1.0
    k, _ = actors_per_gpu(nodes or [])
    return math.floor(10_000 / k) / 10_000


def plan_placement(
    cfg: JobConfig, resources: dict[str, float], nodes: list[GpuNode] | None = None
) -> Placement:
    """Devices and pool size from the cluster's resources and its GPU nodes (see place_model for a
    cluster that has no GPU yet). Asking Ray for a GPU the cluster does not have and cannot get would
    wait forever."""
    m = cfg.model
    gpus = resources.get("GPU", 0.0)
    cpus = resources.get("CPU", 1.0)
    if m.device == "cuda" and gpus <= 0:
        raise ClusterError(
            "model.device is cuda but the Ray cluster has no GPUs (set model.device: auto or cpu)"
        )
    if gpus > 0 and m.device in ("auto", "cuda"):
        share_of_gpu = gpu_share(cfg, nodes)
        # Ray places a fractional share within one GPU (and counts shares to 1e-4): the pieces of
        # several GPUs left over do not add up to room for another actor
        per_gpu = 10_000 // max(1, round(share_of_gpu * 10_000))
        n = m.num_actors or max(1, math.floor(gpus + 1e-6) * per_gpu)
        threads = m.torch_threads or max(1, math.ceil(m.cpus_per_actor))
        cpus_each = min(m.cpus_per_actor, max(cpus / n - 0.5, 0.5))
        # the actors hold their CPUs for the whole run: a pool of more actors than half the CPUs (4
        # GPUs on 2 CPUs, gpus_per_actor 0.25 on a 2-CPU node) took every CPU at 0.5 each and no
        # decode task could ever start (the job waited forever, as on CPU: DECODE_CPUS)
        cpus_each = min(cpus_each, max(math.floor((cpus - DECODE_CPUS) / n * 10_000) / 10_000, 0.0))
        # the pool asks for every GPU it may use at once (num_actors, else the GPUs there are): an actor
        # that waits for a GPU is the demand an autoscaler adds a GPU node for. Its minimum is that
        # size: Ray Data scales a pool down to its minimum while its actors need more GPUs than the
        # cluster has now, which would drop exactly the actors waiting for new nodes. Idle actors go
        # once every input is handed out, and the whole pool at the end of the run.
        share = share_of_gpu if share_of_gpu < 1 else None
        return Placement("cuda", n, m.num_actors, cpus_each, share_of_gpu, threads, share)
    # CPU: leave a core for the decode and write tasks, or the pipeline starves (Ray Data does not
    # reserve CPUs for upstream tasks). The model is the only heavy work, so its threads may use the
    # cores the light stages leave idle.
    n = m.num_actors or max(1, int((cpus - 1) / m.cpus_per_actor))
    threads = m.torch_threads or max(1, int(cpus // n))
    # an actor asking for every CPU (the defaults on one CPU, cpus_per_actor >= the CPUs) would leave
    # no decode task room to start: it gets what one decode task leaves
    cpus_each = min(m.cpus_per_actor, max(cpus - DECODE_CPUS, DECODE_CPUS))
    # start with one actor and let Ray Data grow the pool within the CPUs the other stages leave (a
    # pool started whole can hold every CPU the decode tasks need, and the job then waits forever)
    return Placement("cpu", 1, n, cpus_each, 0.0, threads)


def place_model(
    cfg: JobConfig, say: Callable[[str], None], local: bool = False
) -> tuple[Placement, dict[str, Any]]:
    """The model pool's placement on the cluster as it is, or as it becomes: a GPU pool on a cluster
    with no GPU yet (`model.device: cuda`, or `auto` on a cluster whose autoscaler offers GPU nodes)
    waits up to `ray.gpu_wait_s` for one actor's GPU share to join, asking the autoscaler for it.
    -> (placement, facts for _run.json)."""
    import ray

    resources = ray.cluster_resources()
    m = cfg.model
    facts: dict[str, Any] = {"gpu_wait_s": 0.0}
    if m.device == "cpu":
        return plan_placement(cfg, resources), facts
    nodes = gpu_nodes() if resources.get("GPU", 0.0) > 0 else []
    if nodes and ray.available_resources().get("GPU", 0.0) >= gpu_share(cfg, nodes):
        return _gpu_placement(cfg, resources, nodes, say), facts
    offered = gpu_node_types()
    if m.device == "auto" and not offered and resources.get("GPU", 0.0) <= 0:
        if not local:  # on a cluster, a model on CPU actors may be a surprise: say so
            say(
                "model.device auto: the Ray cluster has no GPU and offers no GPU node type; the model runs on "
                "CPU actors (set model.device: cuda to wait for GPUs the cluster adds another way)"
            )
        return plan_placement(cfg, resources), facts
    t0 = time.monotonic()
    resources = wait_for_gpus(cfg, offered, say)
    facts["gpu_wait_s"] = round(time.monotonic() - t0, 3)
    return _gpu_placement(cfg, resources, gpu_nodes(), say), facts


def _gpu_placement(
    cfg: JobConfig, resources: dict[str, float], nodes: list[GpuNode], say: Callable[[str], None]
) -> Placement:
    """plan_placement on a cluster with GPUs, saying how many actors share a GPU when it chose."""
    placement = plan_placement(cfg, resources, nodes)
    if placement.device == "cuda" and cfg.model.gpus_per_actor is None and cfg.model.num_actors is None:
        k, why = actors_per_gpu(nodes)
        say(
            f"model pool: {k} actor(s) per GPU ({why}; model.gpus_per_actor sets it), "
            f"{placement.min_actors} in all"
        )
    return placement


def gpu_node_types() -> list[str]:
    """Names of the node types with GPUs that the cluster's autoscaler may add, as it reported its
    config to the GCS ([] without an autoscaler, or when the GCS does not tell)."""
    try:
        import ray._private.state as state  # the autoscaler's config has no public reader in Ray 2.60

        config = state.state.get_cluster_config()
        groups = config.node_group_configs if config else []
        return [g.name for g in groups if g.resources.get("GPU", 0) > 0 and g.max_count != 0]
    except Exception:  # noqa: BLE001 - no autoscaler or another Ray: treated as "offers none"
        return []


def wait_for_gpus(cfg: JobConfig, offered: list[str], say: Callable[[str], None]) -> dict[str, float]:
    """Ask the autoscaler for the GPU actors' bundles and wait until one actor's GPU share joined.
    The request is withdrawn afterwards: from then on the pool's own pending actors are the demand
    (and the autoscaler may take idle GPU nodes back once the pool lets them go)."""
    import ray
    from ray.autoscaler.sdk import request_resources

    m = cfg.model
    # with gpus_per_actor unset the share follows the GPU nodes there are: a whole GPU until one joins
    bundle = {"GPU": gpu_share(cfg)}
    where = f" (node types {', '.join(offered)})" if offered else ""
    request_resources(bundles=[bundle] * (m.num_actors or 1))
    t0 = time.monotonic()
    try:
        while True:
            resources = ray.cluster_resources()
            need = gpu_share(cfg, gpu_nodes() if resources.get("GPU", 0.0) > 0 else [])
            free = ray.available_resources().get("GPU", 0.0)
            total = resources.get("GPU", 0.0)
            waited = time.monotonic() - t0
            if free >= need:
                say(f"GPU {free:g} free on the cluster after {waited:.0f} s (GPU {total:g} in all)")
                return resources
            # GPUs that exist but are all held by other work are waited for like GPUs not there yet
            have = (
                f"its GPU {total:g} are all in use by other work" if total > 0 else "the cluster has none yet"
            )
            if waited >= cfg.ray.gpu_wait_s:
                raise ClusterError(
                    f"model.device {m.device}: no GPU became free on the Ray cluster within ray.gpu_wait_s "
                    f"{cfg.ray.gpu_wait_s:g} s (missing resource: GPU {need:g} per model actor{where}; {have})"
                )
            say(
                f"waiting for a GPU node{where}: model actors need GPU {need:g} each, {have} "
                f"({waited:.0f} s of ray.gpu_wait_s {cfg.ray.gpu_wait_s:g})"
            )
            time.sleep(min(cfg.ray.progress_interval_s, max(cfg.ray.gpu_wait_s - waited, 0.1)))
    finally:
        request_resources(bundles=[])


# a node whose device broke under this many model actors of a run is avoided for the rest of it
BROKEN_TWICE = 2
NODE_ID_LABEL = "ray.io/node-id"  # Ray's default label of every node


def nodes_to_avoid(placement: Placement, broken: dict[str, int], say: Callable[[str], None]) -> list[str]:
    """The nodes the model pool should avoid: those whose device broke under `BROKEN_TWICE` actors
    (broken: node -> count, poison.broken_devices), as long as another alive node can hold a model
    actor or the autoscaler offers GPU nodes (a pool with nowhere to go would wait forever)."""
    import ray

    want = sorted(n for n, count in broken.items() if count >= BROKEN_TWICE)
    new = [n for n in want if n not in placement.avoid_nodes]
    if not new:
        return placement.avoid_nodes
    need = "GPU" if placement.num_gpus else "CPU"
    size = placement.num_gpus or placement.num_cpus
    try:
        elsewhere = [
            n["NodeID"]
            for n in ray.nodes()
            if n.get("Alive") and n["NodeID"] not in want and n.get("Resources", {}).get(need, 0) >= size
        ]
    except Exception:  # noqa: BLE001 - without the node table, avoid nothing
        elsewhere = []
    if not elsewhere and not gpu_node_types():
        say(
            f"the device of node {', '.join(n[:12] for n in new)} failed under {BROKEN_TWICE} model actors, "
            f"but no other node can hold one: the pool stays on it"
        )
        return placement.avoid_nodes
    say(
        f"the device of node {', '.join(n[:12] for n in new)} failed under {BROKEN_TWICE} model actors: the "
        f"model pool avoids it for the rest of the run"
    )
    return want


def model_actor_options(placement: Placement) -> dict[str, Any]:
    """Ray options of the model actors beyond their resources: a label selector that keeps them off
    the nodes to avoid."""
    if not placement.avoid_nodes:
        return {}
    return {"label_selector": {NODE_ID_LABEL: f"!in({','.join(placement.avoid_nodes)})"}}


def cpu_task_options(cfg: JobConfig) -> dict[str, Any]:
    """Ray options of the read, decode and write tasks: `ray.cpu_task_label_selector` keeps them off
    the nodes it excludes (GPU nodes whose CPUs their model actors need)."""
    selector = cfg.ray.cpu_task_label_selector
    return {"label_selector": dict(selector)} if selector else {}


class ActorLost(RuntimeError):
    """A model actor's process died while the actor held no task (see ActorWatch)."""


# how an actor the pool let go dies: ray.kill(), or its last handle dropped (a pool scaling down)
LET_GO = ("RAY_KILL", "OUT_OF_SCOPE", "REF_DELETED")
UNWATCHED_AFTER = 5  # failed polls in a row before the watch says it cannot see the actors


def dead_by_accident(class_fragment: str, job: str | None = None) -> dict[str, str]:
    """Actor id -> why it died, for the actors of `class_fragment` of this job (or `job`, hex) that
    died by accident, not let go by their pool; from the GCS's actor table. (Ray's state API,
    `ray.util.state`, serves the same table through the dashboard, which the job's embedded Ray
    does not start and a joined cluster may lack.)"""
    import ray
    from ray._private import state

    job = job or ray.get_runtime_context().get_job_id()
    out = {}
    for actor_id, a in state.actors(job_id=ray.JobID.from_hex(job), actor_state_name="DEAD").items():
        if class_fragment not in a["ActorClassName"]:
            continue
        cause = a["DeathCause"]
        kind = cause.WhichOneof("context")
        if kind == "actor_died_error_context":
            ctx = cause.actor_died_error_context
            reason = ctx.Reason.Name(ctx.reason)
        else:  # its constructor raised, its runtime env failed, ...
            reason = (kind or "unknown").upper()
        if reason in LET_GO:
            continue  # the pool let it go (scaling down, the end of an execution)
        out[actor_id] = f"pid {a['Pid']}: {reason}"
    return out


class ActorWatch:
    """Ray Data expects its pool actors to restart; the job runs them without restarts (see
    run._model_stage), and an actor that dies while it holds no task then stays in the pool as
    running, never replaced and never reported: the run would wait forever. This watch polls the
    GCS's actor table for actors of `class_fragment` of this job that died by accident
    (not let go by the pool: `ray.kill`, its handle dropped) since it started, and stops the dataset's
    executor so that run() restarts the pipeline. It also notes the nodes that were alive while it
    watched and died without being drained (a preempted GPU node), for `_run.json`."""

    def __init__(
        self, class_fragment: str, interval_s: float = 2.0, say: Callable[[str], None] | None = None
    ):
        import ray

        self.fragment, self.interval_s, self.say = class_fragment, interval_s, say
        self.job = ray.get_runtime_context().get_job_id()
        self.lost: str | None = None
        self.unwatched: str | None = None  # why the GCS could not be asked (said once)
        self._failures = 0
        self.nodes_seen: set[str] = set()
        self._seen = self._poll()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="actor-watch", daemon=True)

    def __enter__(self) -> ActorWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self._note_nodes()

    def dead_actors(self) -> dict[str, str]:
        """Actor id -> why it died, for this job's actors of the watched class that died by accident."""
        return dead_by_accident(self.fragment, self.job)

    def _poll(self) -> dict[str, str] | None:
        self._note_nodes()
        try:
            dead = self.dead_actors()
            self._failures = 0
            return dead
        except Exception as e:  # noqa: BLE001 - the watch is a safety net: never the reason a run fails
            self._failures += 1
            # a GCS that is busy or failing over misses a poll or two: say so only when it stays away
            if self.unwatched is None and self._failures >= UNWATCHED_AFTER:
                self.unwatched = f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
                if self.say:
                    self.say(
                        f"Ray's GCS does not tell its actors ({self.unwatched[:200]}): a model actor that "
                        f"dies while idle is not noticed"
                    )
            return None

    def _note_nodes(self) -> None:
        import ray

        try:
            self.nodes_seen |= {n["NodeID"] for n in ray.nodes() if n.get("Alive")}
        except Exception:  # noqa: BLE001 - the GCS may be briefly unreachable; the next poll tells
            pass

    def _loop(self) -> None:
        while not self._stop.wait(self.interval_s):
            now = self._poll()
            if now is None:
                continue
            if self._seen is None:
                self._seen = now
                continue
            new = {k: v for k, v in now.items() if k not in self._seen}
            if new:
                self.lost = next(iter(new.values()))
                # Ray Data has no public way to stop a running execution from outside its consumer;
                # its executor thread has shutdown() (tests/test_reliability.py fails if it goes)
                for t in threading.enumerate():
                    if t.name.startswith("StreamingExecutor-") and hasattr(t, "shutdown"):
                        t.shutdown(force=True, exception=ActorLost(self.lost))
                return


# Ray's GCS declares a silent node dead after its health checks fail (by default 5 checks 3 s apart,
# each with a 10 s timeout): the wait for a node whose raylet no longer answers is bounded by that.
NODE_DEATH_WAIT_S = 60.0


def lost_nodes(seen: set[str], wait_s: float = NODE_DEATH_WAIT_S) -> list[str]:
    """Of the nodes seen alive, those that died by accident (raylet killed, node preempted or lost),
    as the GCS's node table tells: not those stopped or that the autoscaler drained as idle.
    A run can end before the GCS has noticed a node it lost; so while a seen node that Ray still
    lists as alive does not answer at its raylet's port, wait (up to `wait_s`) for the GCS's verdict."""
    wait_for_silent_nodes(seen, wait_s)
    return _dead_by_accident(seen)


def wait_for_silent_nodes(
    seen: set[str], wait_s: float = NODE_DEATH_WAIT_S, say: Callable[[str], None] | None = None
) -> list[str]:
    """Wait (up to `wait_s`) while a node of `seen` that Ray still lists as alive does not answer at
    its raylet's port, until the GCS declares it dead: Ray places new actors on a node it believes
    alive, and an actor placed on a dying node fails once more. -> the nodes that were silent."""
    import ray

    deadline = time.monotonic() + wait_s
    waited: list[str] = []
    while True:
        try:
            silent = [
                n["NodeID"] for n in ray.nodes() if n["NodeID"] in seen and n.get("Alive") and not _answers(n)
            ]
        except Exception:  # noqa: BLE001 - a wait that cannot ask the GCS does not wait
            silent = []
        if silent and not waited and say is not None:
            say(
                f"{len(silent)} node(s) no longer answer ({', '.join(n[:12] for n in silent)}); waiting up to "
                f"{wait_s:.0f} s for Ray to declare them dead before the pipeline restarts"
            )
        waited = sorted(set(waited) | set(silent))
        if not silent or time.monotonic() > deadline:
            return waited
        time.sleep(2)


def _answers(node: dict) -> bool:
    """Whether anything listens at the node's raylet port (a killed raylet refuses, a gone VM times out)."""
    try:
        with socket.create_connection((node["NodeManagerAddress"], int(node["NodeManagerPort"])), timeout=2):
            return True
    except (OSError, KeyError, ValueError):
        return False


# how a node the job did not lose ends: stopped (SIGTERM, `ray stop`), or drained by the autoscaler
# as idle. An unexpected end, a preemption or an unreadable reason counts as lost.
NODE_ENDS_NOT_LOST = ("EXPECTED_TERMINATION", "AUTOSCALER_DRAIN_IDLE")


def _dead_by_accident(seen: set[str]) -> list[str]:
    import ray
    from ray.core.generated.common_pb2 import NodeDeathInfo

    try:
        nodes = ray.nodes()
    except Exception:  # noqa: BLE001 - a count for _run.json is never the reason a run fails
        return []
    out = []
    for n in nodes:
        if n["NodeID"] not in seen or n.get("Alive"):
            continue
        try:
            reason = NodeDeathInfo.Reason.Name(n.get("DeathReason", 0))
        except ValueError:
            reason = "UNKNOWN"
        if reason not in NODE_ENDS_NOT_LOST or "unexpected" in (n.get("DeathReasonMessage") or "").lower():
            out.append(n["NodeID"])
    return sorted(out)
