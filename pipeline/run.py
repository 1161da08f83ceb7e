"""The job: the only module that wires Ray Data operators.

    sources (driver lists and counts them) -> read_units (a Ray task per piece of whole units: parse,
      normalise, cut into units, skip what is committed)
      -> prepare_block (CPU tasks: fetch, decode, cut, segment) -> EmotionPredictor (actor pool)
      -> write_parts (CPU tasks: staged Parquet) -> per-file summaries -> the driver commits units

The driver never holds a row: it lists the manifest's sources, counts their rows (one source itself,
beside the start; several in Ray tasks), checks the model once (so a bad model fails before any work),
then consumes only the small per-file summaries, committing each unit of work as soon as all of its
rows are written.
"""

from __future__ import annotations

import hashlib
import logging
import os
import pickle
import sys
import threading
import time
import warnings
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import Any, TextIO

import pyarrow as pa

from . import __version__, redact
from .audio import RESAMPLERS
from .cluster import (
    DECODE_CPUS,
    ActorLost,
    ActorWatch,
    ClusterError,
    Placement,
    auto_gpu_dtype,
    cluster_address,
    cpu_task_options,
    dead_by_accident,
    gpu_nodes,
    init_ray,
    lost_nodes,
    model_actor_options,
    nodes_to_avoid,
    place_model,
    quiet_ray_logs,
    wait_for_silent_nodes,
)
from .config import JobConfig
from .errors import DeviceUnusable, causes, find
from .interrupt import Stop, on_interrupt
from .lease import Lease, LeaseHeld, LeaseLost, acquire
from .manifest import (
    Count,
    ManifestError,
    Piece,
    Plan,
    Resume,
    Source,
    check_unique_across,
    discover,
    read_units,
    unit_name,
)
from .manifest.tasks import count_task, read_task
from .poison import NAMESPACE, TASK_RETRIES, broken_devices, collect_suspects, forget, scope
from .prepare import Limits, prepare_block
from .progress import Progress, hms
from .schema import output_schema, passthrough_schema
from .storage import Storage, StorageUnavailable, join
from .writer import COUNTS, RUN_FILE, Output, OutputError, Pending, write_parts

log = logging.getLogger(__name__)

SCHEMA_VERSION = 3  # 2: units with commit markers, span and segment columns; 3: speaker, overlap_s
READ_CPUS = 0.1  # reading manifests is light: leave the cores to decoding and the model
WRITE_CPUS = 0
# Concurrent read tasks and write tasks each: a quarter of the cluster's CPUs, at least 2. Their CPU
# shares (0.1, 0) do not bound them, and every task in flight holds a Ray worker process: uncapped,
# a 16-core node ran 64-112 workers at once (Ray warns from 4x its startup concurrency, the CPU
# count), each paying Ray Data's imports. Reading and staging files are light and mostly wait on
# storage, so a few tasks keep up with any decode rate.
LIGHT_TASKS_PER_CPU, MIN_LIGHT_TASKS = 0.25, 2
STOP_ENV = "E2V_INJECT_STOP_AFTER_COMMITS"  # test seam (see _maybe_stop)


class JobError(RuntimeError):
    """A failure that ends the job with a one-line reason (bad input, model, output, cluster)."""


class RunFailed(RuntimeError):
    """The run started but could not finish (a Ray failure); what was committed stays."""


@dataclass
class RunResult:
    info: dict[str, Any]  # what _run.json holds
    too_many_errors: bool  # the output's error fraction exceeds output.max_error_fraction
    message: str


@dataclass
class ModelInfo:
    """What the driver needs of the model: its identity, output width and labels (not the weights)."""

    fingerprint: dict[str, Any]
    sample_rate: int
    frame_rate: float
    embed_dim: int
    labels: list[str]
    weights_sha256: str
    weights_file_id: str  # checkpoint.file_id of the weights the driver hashed


@dataclass
class Tally:
    """What the run did, summed over the units it committed."""

    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    per_node: dict[str, int] = field(default_factory=dict)
    per_runtime: dict[str, int] = field(default_factory=dict)
    units: int = 0  # commits: a restart loop's measure of progress

    def add(self, unit: Pending) -> None:
        self.units += 1
        for k in COUNTS:
            self.counts[k] += unit.counts[k]
        for acc, part in ((self.per_node, unit.per_node), (self.per_runtime, unit.per_runtime)):
            for key, n in part.items():
                acc[key] = acc.get(key, 0) + n

    def __getitem__(self, key: str) -> float:
        return self.counts[key]


# -- the model, checked on the driver ------------------------------------------------------------


def _resolve_model_source(cfg: JobConfig):
    """Find the checkpoint (local path, hub cache, or download): quick, and where most bad
    `model.source` values fail."""
    from .model import ModelSourceError, resolve

    try:
        return resolve(
            cfg.model.source,
            revision=cfg.model.revision,
            cache_dir=cfg.model.cache_dir,
            offline=cfg.model.offline,
        )
    except ModelSourceError as e:
        raise JobError(f"model.source: {e}") from None


def _check_model(path, ref) -> ModelInfo:
    """Load the model once (strict key and shape checks, weights hash), so that a bad checkpoint
    fails the job before any work; keep only what the driver needs."""
    from .model import CheckpointError, ConfigError, load_bundle

    try:
        bundle = load_bundle(path, device="cpu", source=str(ref), revision=ref.revision)
    except (CheckpointError, ConfigError) as e:
        raise JobError(f"model.source: {e}") from None
    return ModelInfo(
        bundle.fingerprint(),
        bundle.input.sample_rate,
        bundle.input.frame_rate,
        bundle.embed_dim,
        bundle.labels,
        bundle.weights_sha256,
        bundle.weights_file_id,
    )


def _start(cfg: JobConfig) -> tuple[ModelInfo, bool, bool]:
    """Check the model (import torch, load, hash: seconds) while an embedded Ray starts (seconds).
    A job that joins a cluster checks it first. Under `ray job submit --working-dir`, the driver runs
    in the job's unpacked working directory, and a node's runtime-env agent may unpack it again while
    the job starts (seen with several nodes on one host, as Ray's fake autoscaler runs them):
    os.getcwd() then fails for good, and importing torch asks for it."""
    import ray

    path, ref = _resolve_model_source(cfg)
    if cluster_address(cfg):
        model = _check_model(path, ref)
        try:
            return model, *init_ray(cfg)
        except ClusterError as e:
            raise JobError(str(e)) from None
    with ThreadPoolExecutor(1, thread_name_prefix="e2v-model-check") as pool:
        checking = pool.submit(_check_model, path, ref)
        try:
            started_ray, started_local = init_ray(cfg)
        except ClusterError as e:
            raise JobError(str(e)) from None
        try:
            return checking.result(), started_ray, started_local
        except BaseException:
            if started_ray:
                ray.shutdown()
            raise


# -- the run ---------------------------------------------------------------------------------------


def run(cfg: JobConfig, *, stream: TextIO | None = None) -> RunResult:
    """Run the job end to end. Raises JobError for failures that stop it before processing and
    RunFailed when Ray fails under it more than `ray.max_restarts` times in a row without a unit
    committed in between; the result says whether
    the output's error fraction is too high."""
    import ray

    stream = redact.stream(stream or sys.stderr)
    t0 = time.time()
    _check_dependencies(cfg)
    storage = Storage.from_config(cfg.storage)
    try:
        sources = discover(cfg.input, storage)
    except ManifestError as e:
        raise JobError(str(e)) from None
    except StorageUnavailable as e:
        raise RunFailed(f"the manifest could not be read: {_one_line(e, StorageUnavailable)}") from None
    try:
        fresh = not storage.exists(cfg.output.path)
        lease = _take_lease(cfg, storage)  # before anything slow: a second run is refused at once
    except StorageUnavailable as e:
        raise RunFailed(f"the output could not be reached: {_one_line(e, StorageUnavailable)}") from None
    except OSError as e:  # no permission (a 403), a file there or above it, a read-only URL: a bad output
        where = redact.redact(cfg.output.path)
        raise JobError(f"output.path: cannot use {where}: {type(e).__name__}: {e}") from None
    poison_scope = scope(lease.run_id)  # rows that killed a worker, remembered for this run only
    one = len(sources) == 1 and sources[0].audio is None  # (a folder of audio was counted as listed)
    early = _count_early(sources[0], cfg, storage) if one else None
    try:
        model, started_ray, started_local = _start(cfg)
    except BaseException:
        _let_go(lease, cfg.output.path, fresh)
        raise
    try:
        job = _Job.start(cfg, storage, sources, model, lease, poison_scope, stream, started_local, early)
        job.attempts()
        _maybe_stop()
        ray_info = {
            "gcs_address": ray.get_runtime_context().gcs_address,
            "started_local": started_local,
            **job.elastic,  # gpu_wait_s, restarts, nodes_lost
        }
        # _run.json is the run's last write to the output: under the lease, like every other
        return _finish(
            cfg, job.out, job.plan, job.tally, job.fingerprint, job.placement, ray_info, t0, stream
        )
    except ClusterError as e:  # no GPU within ray.gpu_wait_s, ...: a failed start leaves nothing behind
        _let_go(lease, cfg.output.path, fresh)
        lease = None
        raise JobError(str(e)) from None
    except LeaseLost as e:  # opening the output, cleaning up after an attempt, writing _run.json
        raise RunFailed(str(e)) from None
    except BaseException:
        _let_go(lease, cfg.output.path, fresh)
        lease = None
        raise
    finally:
        if lease is not None:
            lease.release()
        if ray.is_initialized():
            forget(poison_scope)
        if started_ray:
            ray.shutdown()


def _maybe_stop() -> None:
    """Test seam: the driver stops itself (SIGSTOP, as a paused VM or process would be) once every
    unit is committed, before `_run.json`, when STOP_ENV is set. Unset in production."""
    if os.environ.get(STOP_ENV):
        import signal

        os.kill(os.getpid(), signal.SIGSTOP)


@dataclass
class _Job:
    """One run's plan and what it has done so far, across its attempts."""

    cfg: JobConfig
    storage: Storage
    plan: Plan
    model: ModelInfo
    placement: Placement
    elastic: dict[str, Any]  # for _run.json's ray section
    fingerprint: dict[str, Any]
    out: Output
    schema: pa.Schema
    lease: Lease
    poison_scope: str
    stream: TextIO
    tally: Tally = field(default_factory=Tally)
    progress: Progress | None = None
    nodes_seen: set[str] = field(default_factory=set)

    @classmethod
    def start(cls, cfg, storage, sources, model, lease, poison_scope, stream, started_local, early) -> _Job:
        """Count the manifest, place the model, open the output: everything before the first row."""
        plan = _count(cfg, storage, sources, early)
        say = lambda line: print(f"[emotion2vec] {line}", file=stream, flush=True)  # noqa: E731
        placement, elastic = place_model(cfg, say, local=started_local)
        gpu_types = [n.accelerator for n in gpu_nodes()] if placement.device == "cuda" else []
        fingerprint = _fingerprint(cfg, model, placement, plan, gpu_types)
        out = _open_output(cfg, storage, fingerprint, lease)
        sizes = _unit_sizes(plan, cfg.input.rows_per_unit)
        whole = [
            s.key for s, n, c in zip(plan.sources, plan.counts, plan.details, strict=True) if n == c.rows
        ]
        # the units' digests without input.limit's cut: a lower limit is told from rows that moved
        uncut = replace(plan, counts=[c.rows for c in plan.details])
        out.align(
            sizes,
            unit_digests(plan, cfg.input.rows_per_unit),
            whole,
            {u: d for u, d in unit_digests(uncut, cfg.input.rows_per_unit).items() if u in sizes},
        )
        say(
            f"manifest {cfg.input.manifest}: {plan.rows} rows in {len(plan.sources)} source(s), "
            f"{len(out.markers)} units already committed -> {cfg.output.path}"
        )
        schema = output_schema(
            model.embed_dim, len(model.labels), cfg.output.frames, plan.passthrough, fingerprint
        )
        job = cls(
            cfg,
            storage,
            plan,
            model,
            placement,
            elastic,
            fingerprint,
            out,
            schema,
            lease,
            poison_scope,
            stream,
        )
        job.progress = Progress(_left(sizes, out.skip()), cfg.ray.progress_interval_s, stream)
        return job

    def attempts(self) -> None:
        """Run the pipeline on what is not committed; after a Ray failure a restart can get past, run
        it again on what is left. `ray.max_restarts` bounds the failed attempts in a row that
        committed no unit: a run that keeps committing keeps going. Before a restart, nodes Ray still
        lists as alive that no longer answer (a preempted node) are waited for until Ray declares
        them dead, so that the new pool is not placed on them."""
        cfg = self.cfg
        attempt = in_a_row = 0
        while True:
            self.elastic["restarts"] = attempt
            units = self.tally.units
            try:
                self._attempt(attempt)
                break
            except RunFailed as e:
                in_a_row = 1 if self.tally.units > units else in_a_row + 1
                if in_a_row > cfg.ray.max_restarts or not _recoverable(e.__cause__):
                    raise
                print(
                    f"[emotion2vec] {e}; restarting on what is left (restart {attempt + 1}; "
                    f"{in_a_row} in a row without a commit, of ray.max_restarts {cfg.ray.max_restarts})",
                    file=self.stream,
                    flush=True,
                )
                wait_for_silent_nodes(self.nodes_seen, say=self._say)
                self.placement.avoid_nodes = nodes_to_avoid(
                    self.placement, broken_devices(self.poison_scope), self._say
                )
                attempt += 1
                self.out.reopen()
        self.progress.print()
        self.elastic["nodes_lost"] = lost_nodes(self.nodes_seen)

    def _say(self, line: str) -> None:
        print(f"[emotion2vec] {line}", file=self.stream, flush=True)

    def _attempt(self, attempt: int) -> None:
        cfg, plan = self.cfg, self.plan
        skip = self.out.skip()
        pieces = plan.pieces(cfg.input.rows_per_unit, skip, plan.block_rows(cfg.audio.decode_batch_size))
        if not pieces:
            return  # every unit is committed without errors: nothing to read
        # rows in flight when the last attempt's model actors died run alone (poison.py)
        dead = set(dead_by_accident("EmotionPredictor")) if attempt else set()
        suspects = sorted(collect_suspects(self.poison_scope, dead)) if attempt else []
        ds = build_dataset(
            cfg,
            plan,
            pieces,
            skip,
            self.storage,
            self.schema,
            self.placement,
            self.model,
            poison_scope=self.poison_scope,
            suspects=suspects,
        )
        with on_interrupt() as stop:
            _execute(ds, self.out, self.tally, self.progress, self.lease, stop, self.nodes_seen, self.stream)


def _take_lease(cfg: JobConfig, storage: Storage) -> Lease:
    """One writer per output: a second run on the same output.path is refused, naming the first."""
    storage.makedirs(cfg.output.path)  # what fails here is told apart by the caller (run)
    try:
        return acquire(
            storage, cfg.output.path, ttl_s=cfg.output.lease_ttl_s, holder={"manifest": cfg.input.manifest}
        )
    except LeaseHeld as e:
        raise JobError(str(e)) from None


def _let_go(lease: Lease, output: str, fresh: bool) -> None:
    """Release the lease of a run that stops early; a local output folder it created and left empty
    (a bad manifest, say) goes too, so a failed start leaves nothing behind."""
    lease.release()
    if fresh and "://" not in output:
        try:
            os.rmdir(output)
        except OSError:
            pass  # not empty (or not ours to remove): leave it


def _open_output(cfg: JobConfig, storage: Storage, fingerprint: dict[str, Any], lease: Lease) -> Output:
    out = Output(storage, cfg.output.path, fence=lease.check)
    try:
        out.open(cfg.output.mode, fingerprint)
    except OutputError as e:
        raise JobError(str(e)) from None
    storage.makedirs(cfg.output.path)
    return out


def _unit_sizes(plan: Plan, rows_per_unit: int) -> dict[str, int]:
    """Unit name -> its manifest rows in this run's plan."""
    return {
        unit_name(s.key, u): rows
        for i, s in enumerate(plan.sources)
        for u, rows in enumerate(plan.unit_rows(i, rows_per_unit))
    }


def unit_digests(plan: Plan, rows_per_unit: int) -> dict[str, str]:
    """Unit name -> a digest of its manifest ids in order, from the count pass's id hashes (a source
    without them is left out: its units are compared by their counts alone). Recorded in each unit's
    commit marker: a rerun whose manifest gives a unit other rows with the same count (a file added
    to a folder of audio shifts every later row into the next unit) redoes it instead of skipping it."""
    out = {}
    for i, s in enumerate(plan.sources):
        ids = plan.details[i].ids if i < len(plan.details) else None
        if ids is None:
            continue
        lo = 0
        for u, rows in enumerate(plan.unit_rows(i, rows_per_unit)):
            if lo + rows > len(ids):
                break
            out[unit_name(s.key, u)] = hashlib.sha256(ids[lo : lo + rows].tobytes()).hexdigest()[:16]
            lo += rows
    return out


def _left(sizes: dict[str, int], resume: Resume) -> int:
    """Manifest rows this run expects to process: every row of a unit to do whole, only the rows
    behind the error rows of a unit that redoes those."""
    left = 0
    for unit, rows in sizes.items():
        if not resume.done(unit, rows):
            redo = resume.redo(unit)
            left += rows if redo is None else min(len(redo), rows)
    return left


def _recoverable(e: BaseException | None) -> bool:
    """A Ray failure that a restart on the remaining units can get past (a process or node died),
    as opposed to a bug that would fail again."""
    import ray.data.exceptions as dex
    import ray.exceptions as rex

    kinds = (
        ActorLost,  # our watch stopped an execution whose idle model actor died
        StorageUnavailable,  # a read task's storage stayed down through its retries: not bad input
        dex.SystemException,  # Ray Data's wrapper for failures that are not the user code's
        rex.ActorDiedError,
        rex.WorkerCrashedError,
        rex.NodeDiedError,
        rex.ObjectLostError,
        rex.OwnerDiedError,
        rex.ActorUnavailableError,
    )
    return find(e, kinds) is not None


def _count_early(source: Source, cfg: JobConfig, storage: Storage) -> Future[Count]:
    """A manifest of one source, counted by the driver in a thread of its own while the model is
    checked and Ray starts, instead of in a Ray task after them: a task first waits for Ray and for a
    worker (the first task of a job under `ray job submit` starts a process with the job's working
    dir), which is most of a small manifest's count and ~1-2 s of every run's start-up. The thread
    is a daemon: a job that fails before it needs the count does not wait for a large one."""
    counted: Future[Count] = Future()
    copy = pickle.loads(pickle.dumps(storage))  # as a Ray task gets it: retry counts and clients of its own

    def count() -> None:
        try:
            counted.set_result(count_task(source, cfg.input, copy))
        except BaseException as e:  # noqa: BLE001 - raised again where the count is taken
            counted.set_exception(e)

    threading.Thread(target=count, name="e2v-count", daemon=True).start()
    return counted


def _count(
    cfg: JobConfig, storage: Storage, sources: list[Source], early: Future[Count] | None = None
) -> Plan:
    """Rows per source, counted (and checked: columns, duplicate ids): one source by the driver
    (`early`), several by Ray tasks in parallel."""
    import ray

    remote = ray.remote(num_cpus=READ_CPUS)(count_task)
    by_task = early is None
    refs = [remote.remote(s, cfg.input, storage) if by_task and s.audio is None else None for s in sources]
    details = []
    for s, ref in zip(sources, refs, strict=True):
        try:
            if ref is not None:
                c = ray.get(ref)
            else:
                c = early.result() if early is not None else count_task(s, cfg.input, storage)
        except ManifestError as e:
            raise JobError(str(_manifest_cause(e))) from None
        except StorageUnavailable as e:
            # its own line names the file, the attempts and the last error; under it is one attempt's
            raise RunFailed(f"the manifest could not be read: {_one_line(e, StorageUnavailable)}") from None
        details.append(c)
    try:
        check_unique_across([s.uri for s in sources], [c.ids for c in details])
    except ManifestError as e:
        raise JobError(str(e)) from None
    counts = [c.rows for c in details]
    if sum(counts) == 0:
        raise JobError(f"input.manifest: {cfg.input.manifest}: the manifest has no rows")
    if cfg.input.limit:
        left = cfg.input.limit
        for i, n in enumerate(counts):
            counts[i] = min(n, left)
            left -= counts[i]
    row_bytes = max(c.row_bytes for c in details)
    passthrough = _passthrough(cfg, [c.schema for c, n in zip(details, counts, strict=True) if n])
    return Plan(cfg.input.manifest, sources, counts, passthrough, row_bytes, details)


def _passthrough(cfg: JobConfig, schemas: list[pa.Schema]) -> pa.Schema:
    """The passthrough columns of every source that is read, as one schema: a column only some shards
    have, or one that is null throughout a shard (JSON `null`) and typed in another, is written like
    any other. Types that cannot be merged (a number in one shard, text in another) are refused here,
    before any work, instead of failing every write of the run."""
    columns = [passthrough_schema(s) for s in schemas]
    try:
        return pa.unify_schemas(columns, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid):
        pass
    # one tool wrote a text column dictionary-encoded (a pandas category), another plain: its values
    plain = [pa.schema([f.with_type(_undictionary(f.type)) for f in c]) for c in columns]
    try:
        return pa.unify_schemas(plain, promote_options="permissive")
    except (pa.ArrowTypeError, pa.ArrowInvalid) as e:
        raise JobError(
            f"input.manifest: {cfg.input.manifest}: the sources' columns do not agree: {e}"
        ) from None


def _undictionary(t: pa.DataType) -> pa.DataType:
    return t.value_type if pa.types.is_dictionary(t) else t


def _fingerprint(
    cfg: JobConfig, model: ModelInfo, placement: Placement, plan: Plan, gpu_types: list[str | None] = ()
) -> dict[str, Any]:
    """Everything that changes the numbers in the output: a resumed run must match it."""
    from .predictor import resolve_dtype, simulate_gpu, simulated_dtype  # torch: imported by now

    dtype = str(resolve_dtype(cfg.model.dtype, placement.device)).replace("torch.", "")
    if placement.device == "cuda" and simulate_gpu() and not any(gpu_types):
        # a simulated GPU (EMOTION2VEC_SIMULATE_GPU=1, GPUs whose kind Ray did not name: no device
        # behind them) runs on its CPU, in the dtype that CPU runs (float32 for float16 without
        # native float16): the files say what made their numbers. Real GPUs are named by Ray (and
        # without the variable nothing changes)
        dtype = str(simulated_dtype(cfg.model.dtype)).replace("torch.", "")
    elif cfg.model.dtype == "auto" and placement.device == "cuda":
        # the actors decide on their GPUs; the driver (a head node without one) would say bfloat16
        dtype = auto_gpu_dtype(list(gpu_types)) or dtype
    return {
        **model.fingerprint,
        "frame_rate": model.frame_rate,
        "frames": cfg.output.frames,
        "dtype": dtype,
        "max_chunk_s": cfg.audio.max_chunk_s,
        "segmentation": _segmentation(cfg),
        "resampler": RESAMPLERS[cfg.audio.resampler],
        "sample_rate": model.sample_rate,
        "passthrough": hashlib.sha1(str(plan.passthrough).encode()).hexdigest()[:16],
        "pipeline_version": __version__,
        "schema": SCHEMA_VERSION,
    }


def _segmentation(cfg: JobConfig) -> Any:
    mode = getattr(cfg.audio, "segmentation", "none")
    return mode if mode == "none" else {"mode": mode, **cfg.audio.vad.model_dump()}


def _execute(
    ds,
    out: Output,
    tally: Tally,
    progress: Progress,
    lease: Lease,
    stop: Stop,
    nodes: set[str],
    stream: TextIO,
) -> None:
    """Consume the per-file summaries; commit each unit as soon as all its rows are written. A signal
    stops the consumption (Interrupted), never a commit halfway. `nodes` gains the nodes seen alive."""
    pending: dict[str, Pending] = {}
    watch = ActorWatch(
        "EmotionPredictor", say=lambda line: print(f"[emotion2vec] {line}", file=stream, flush=True)
    )
    try:
        with watch:
            for summary in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                for s in summary.to_pylist():
                    unit = pending.setdefault(s["unit"], Pending())
                    unit.add(s)
                    progress.update(s["sources"], s["ok"], s["error"], s["audio_s"])
                    if unit.complete:
                        with stop.shield():
                            lease.check()
                            before = out.markers.get(s["unit"])
                            try:
                                out.commit(s["unit"], unit)
                            finally:
                                # its marker landed, even if a move then failed: committed (the
                                # restart finishes the moves), so it counts for this run
                                if out.markers.get(s["unit"]) is not before:
                                    tally.add(pending.pop(s["unit"]))
        if watch.lost:
            raise ActorLost(f"a model actor died while idle ({watch.lost})")
    except LeaseLost as e:
        raise RunFailed(str(e)) from None
    except Exception as e:
        cause = _manifest_cause(e) or _device_unusable(e)
        if cause is not None:
            raise JobError(str(cause)) from None
        progress.forget(
            *(int(sum(p.counts[k] for p in pending.values())) for k in ("sources", "ok", "error")),
            sum(p.counts["audio_s"] for p in pending.values()),
        )
        if watch.lost and not isinstance(e, ActorLost):
            e = ActorLost(f"a model actor died while idle ({watch.lost})")
        raise RunFailed(f"the run failed: {_one_line(e)}") from e
    finally:
        nodes |= watch.nodes_seen
    if pending:
        raise RunFailed(f"{len(pending)} units did not receive all their rows; rerun to redo them")


def _device_unusable(e: BaseException) -> DeviceUnusable | None:
    """A model actor's PyTorch could not use its GPU (predictor.py). Raised in the actor's constructor,
    it reaches the driver only as the text of Ray's ActorDiedError (Ray keeps a creation task's error
    as a message, not as the exception): read back from there."""
    found = find(e, DeviceUnusable)
    if found is not None:
        return found
    marker = f"{DeviceUnusable.__name__}: "
    for x in causes(e):
        text = str(x)
        if marker in text:
            return DeviceUnusable(text.split(marker, 1)[1].splitlines()[0].strip())
    return None


def _manifest_cause(e: BaseException) -> ManifestError | None:
    found = find(e, ManifestError)
    return getattr(found, "cause", found)  # Ray's wrapper holds the manifest's own error


def _one_line(e: BaseException, kind: type[BaseException] = BaseException) -> str:
    """A (Ray-wrapped) exception as `Type: first line`, from the innermost cause of `kind` that says
    something."""
    chain = [c for c in causes(e) if isinstance(c, kind)]
    said = [c for c in chain if str(c).strip()] or chain
    text = str(said[-1]).strip().splitlines()
    return f"{type(said[-1]).__name__}: {text[0] if text else ''}"


def _finish(
    cfg, out: Output, plan: Plan, tally: Tally, fingerprint, placement, ray_info, t0, stream
) -> RunResult:
    wall = time.time() - t0
    totals = out.totals()
    frac = totals["error"] / totals["rows"] if totals["rows"] else 0.0
    info = {
        "pipeline_version": __version__,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
        "wall_time_s": round(wall, 3),
        "rows": {
            "input": plan.rows,
            "ok": int(tally["ok"]),
            "error": int(tally["error"]),
            "skipped": plan.rows - int(tally["sources"]),
        },
        "output_totals": totals,
        "audio_hours": round(tally["audio_s"] / 3600, 6),
        "throughput": {
            "rows_per_s": round(tally["rows"] / wall, 3) if wall else None,
            "audio_s_per_s": round(tally["audio_s"] / wall, 3) if wall else None,
        },
        "error_fraction": round(frac, 6),
        "stage_seconds": {k: round(tally[k], 3) for k in ("decode_s", "model_s", "write_s")},
        "storage_retries": int(tally["retries"]),  # transient fetch/write errors that a retry got past
        "placement": placement.__dict__,
        "ray": ray_info,
        "rows_per_model_node": tally.per_node,
        "rows_per_model_runtime": tally.per_runtime,  # "<device> <dtype>" -> ok rows, as the actors ran them
        "model": {
            **fingerprint,
            # what the actors ran; when no row reached the model, what this machine would run
            "dtype": "/".join(sorted({k.split()[-1] for k in tally.per_runtime})) or fingerprint["dtype"],
        },
        "output_metadata": fingerprint,
        "config": cfg.redacted(),
    }
    out.write_run_json(info)
    print(
        f"[emotion2vec] done in {hms(wall)}: {int(tally['ok'])} ok, {int(tally['error'])} errors, {info['rows']['skipped']} skipped; "
        f"{tally['audio_s'] / 3600:.3f} h audio at {tally['audio_s'] / max(wall, 1e-9):.1f} audio-s/s -> "
        f"{cfg.output.path} ({join(cfg.output.path, RUN_FILE)})",
        file=stream,
        flush=True,
    )
    if frac > cfg.output.max_error_fraction:
        msg = (
            f"error fraction {frac:.1%} ({totals['error']}/{totals['rows']} rows of the output) exceeds "
            f"output.max_error_fraction {cfg.output.max_error_fraction:.1%}; see the error column in {cfg.output.path}"
        )
        return RunResult(info, True, msg)
    return RunResult(info, False, "ok")


# -- the dataset -----------------------------------------------------------------------------------


def build_dataset(
    cfg: JobConfig,
    plan: Plan,
    pieces: list[Piece],
    skip: dict[str, Any],
    storage: Storage,
    schema: pa.Schema,
    placement: Placement,
    model: ModelInfo,
    *,
    poison_scope: str = NAMESPACE,
    suspects: list[str] | None = None,
):
    import ray
    import ray.data

    quiet_ray_logs()  # ray.data sets up its loggers on import
    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_auto_log_stats = False
    # Ray Data merges what a task yields into blocks of up to target_max_block_size: make that the
    # decoded-audio budget of a model call, so the model stage gets one block per call.
    ctx.target_max_block_size = int(cfg.audio.block_mb * 2**20)
    light = light_tasks(ray.cluster_resources())
    ds = _read(cfg, plan, pieces, skip, storage, light)
    with warnings.catch_warnings():
        # Ray 2.60 has no named map_batches parameters for max_retries / max_restarts yet (pyproject
        # pins ray < 2.64, where the **ray_remote_args they go through are removed)
        warnings.filterwarnings("ignore", "`ray_remote_args` is deprecated", category=DeprecationWarning)
        ds = ds.map_batches(
            prepare_block,
            batch_size=None,
            batch_format="pyarrow",
            fn_kwargs={
                "storage": storage,
                "limits": Limits(cfg.audio.max_duration_s, cfg.audio.max_file_mb),
                "segmenter": _segmenter(cfg),
                "block_mb": cfg.audio.block_mb,
                "poison_scope": poison_scope,
                "resampler": cfg.audio.resampler,
            },
            num_cpus=DECODE_CPUS,
            compute=ray.data.TaskPoolStrategy(size=cfg.audio.decode_tasks)
            if cfg.audio.decode_tasks
            else None,
            max_retries=TASK_RETRIES,  # a poison row costs one retry (see poison.py)
            **cpu_task_options(cfg),
        )
        ds = _model_stage(ds, cfg, placement, model, poison_scope, suspects or [])
    return ds.map_batches(
        write_parts,
        batch_size=None,
        batch_format="pyarrow",
        fn_kwargs={
            "output": cfg.output.path,
            "schema": schema,
            "storage": storage,
            "compression": cfg.output.compression,
            "max_file_mb": cfg.output.max_file_mb,
            "rows_per_file": cfg.output.rows_per_file,
        },
        # staging a file is light, mostly waiting on storage. Ray schedules a task only when its CPU
        # request fits, and decoding and the model can hold every CPU for as long as there is input:
        # a write op asking for a CPU share would wait behind them while results pile up in the object
        # store and no unit commits. So it asks for none, and the pool is capped instead.
        num_cpus=WRITE_CPUS,
        compute=ray.data.TaskPoolStrategy(size=light),
        **cpu_task_options(cfg),
    )


def _model_stage(
    ds, cfg: JobConfig, placement: Placement, model: ModelInfo, poison_scope: str, suspects: list[str]
):
    import ray.data

    from .predictor import EmotionPredictor, simulate_gpu

    m = cfg.model
    # One call per decoded block, on CPUs and GPUs: a block holds at most audio.block_mb of audio, so a
    # call's host memory is bounded by bytes whatever the clips' lengths (model.rows_per_call slices
    # it further inside the actor). Ray Data's public map_batches refuses whole blocks (batch_size None)
    # with num_gpus set, and an integer batch_size is a *minimum* of rows per bundle: 256 rows of
    # 10-minute files would be ~10 GB in one call. map_batches_internal is the same operator without
    # that check (Ray's own map_groups uses it to run whole blocks on GPUs).
    return ds.map_batches_internal(
        EmotionPredictor,
        batch_size=None,
        batch_format="pyarrow",
        fn_constructor_kwargs={
            "source": m.source,
            "revision": m.revision,
            "cache_dir": m.cache_dir,
            "offline": m.offline,
            "device": placement.device,
            "dtype": m.dtype,
            "weights_sha256": model.weights_sha256,
            "weights_file_id": model.weights_file_id,
            "frames": cfg.output.frames,
            "max_chunk_s": cfg.audio.max_chunk_s,
            "batch_seconds": m.batch_seconds,
            "max_batch_size": m.max_batch_size,
            "rows_per_call": m.rows_per_call,
            "torch_threads": placement.torch_threads,
            "poison_scope": poison_scope,
            "suspects": suspects,
            "simulate_gpu": simulate_gpu(),
        },
        compute=ray.data.ActorPoolStrategy(
            min_size=placement.min_actors,
            max_size=placement.max_actors,
            **_calls_in_flight(placement),
        ),
        num_cpus=placement.num_cpus,
        num_gpus=placement.num_gpus or None,
        # Ray would restart a dead actor from constructor arguments it keeps in the object store
        # (ray-project/ray#53727: unsafe, and an ERROR line in every run). A dead actor instead fails
        # this attempt, and run() restarts the pipeline on the units not yet committed.
        **_NO_ACTOR_RESTARTS,
        **model_actor_options(placement),  # off nodes whose GPU broke twice in this run
    )


_NO_ACTOR_RESTARTS = {"max_restarts": 0}
GPU_CONCURRENT_CALLS = 2  # calls a GPU actor runs at once: one on the device, one doing its host work
GPU_CALLS_IN_FLIGHT = 4  # calls handed to a GPU actor at once: the next ones are there when one ends


def _calls_in_flight(placement: Placement) -> dict[str, Any]:
    """How Ray Data feeds a model actor. On a GPU: two calls run at once in the actor (its forwards
    take turns on the device under a lock), so that one call's host work (Arrow in, collating into
    page-locked buffers, the output's columns) overlaps the other's forward instead of leaving the
    GPU idle, and four are handed over at once so that the next block is already there.
    On CPUs: calls run one after the other (the forward uses every torch thread). Several actors:
    one each, so that a block goes to an idle actor wherever it is instead of queueing at a busy one
    beside the task that decoded it (Ray Data prefers the actor on the block's node while it has
    room). One actor: two, so that its next block is already there when a call ends; Ray Data
    notices a finished call only at its next scheduling step (up to 0.1 s later), a gap the size of
    a whole call when the model is fast (bench/RESULTS.md)."""
    if placement.device == "cuda":
        return {
            "max_tasks_in_flight_per_actor": GPU_CALLS_IN_FLIGHT,
            "max_concurrent_calls_per_actor": GPU_CONCURRENT_CALLS,
            "enable_true_multi_threading": True,
        }
    return {"max_tasks_in_flight_per_actor": 2 if placement.max_actors == 1 else 1}


def light_tasks(resources: dict[str, float]) -> int:
    """How many read tasks, and how many write tasks, run at once on a cluster with these resources."""
    return max(MIN_LIGHT_TASKS, int(resources.get("CPU", 1.0) * LIGHT_TASKS_PER_CPU))


def _read(
    cfg: JobConfig, plan: Plan, pieces: list[Piece], skip: dict[str, Any], storage: Storage, tasks: int
):
    """The manifest as a Ray Dataset of unit blocks: one read task per piece (runs of whole units),
    at most `tasks` at once, streamed. A folder of audio files was listed by the driver already: its
    blocks are cut there."""
    import ray.data

    rows = plan.block_rows(cfg.audio.decode_batch_size)
    kwargs = {"cfg": cfg.input, "storage": storage, "skip": skip, "block_rows": rows}
    if len(plan.sources) == 1 and plan.sources[0].audio is not None:
        blocks = [b for p in pieces for b in read_units(plan.sources[0], piece=p, **kwargs)]
        return ray.data.from_arrow(blocks or [_empty_block()])
    items = [p.item() for p in pieces]
    ds = ray.data.from_items(items, override_num_blocks=len(items)).map_batches(
        read_task,
        batch_size=1,
        batch_format="pyarrow",
        fn_kwargs={"plan": plan, **kwargs},
        num_cpus=READ_CPUS,
        compute=ray.data.TaskPoolStrategy(size=tasks),
        **cpu_task_options(cfg),
    )
    # Ray merges what one task yields into one block. Pieces of one decode block each need nothing
    # more; a source read whole (compressed, a CutSet, a Kaldi dir) is re-cut so that decoding runs
    # in parallel (a separate operator that holds a CPU while it streams).
    return ds.repartition(target_num_rows_per_block=rows) if plan.needs_recut(pieces, rows) else ds


def _empty_block() -> pa.Table:
    return pa.table({"id": pa.array([], pa.string())})


def _check_dependencies(cfg: JobConfig) -> None:
    """An optional part the configuration needs and this environment lacks: JobError (exit 2) before
    the manifest is read or Ray starts."""
    if getattr(cfg.audio, "segmentation", "none") == "vad":
        from .vad import require

        try:
            require()
        except ImportError as e:
            raise JobError(str(e)) from None


def _segmenter(cfg: JobConfig):
    if getattr(cfg.audio, "segmentation", "none") != "vad":
        return None
    from .vad import Segmenter

    return Segmenter(cfg.audio.vad)
