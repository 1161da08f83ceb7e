"""The job: the only module that wires Ray Data operators.

    manifest (driver) -> resume filter -> decode (CPU tasks) -> EmotionPredictor (actor pool)
      -> write_shard (CPU tasks, Parquet) -> per-file summaries streamed back to the driver

The driver reads the manifest, validates the model once (so a bad model fails before any work),
then consumes only the small per-file summaries: progress, counts and `_run.json` come from them.
"""

from __future__ import annotations

import json
import logging
import math
import os
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any, TextIO

import pyarrow as pa
import pyarrow.compute as pc

from . import __version__
from .audio import RESAMPLER
from .config import JobConfig
from .decode import decode_batch
from .manifest import Manifest, read_manifest
from .schema import FRAME_RATE, output_schema, passthrough_schema
from .storage import Storage, join
from .writer import RUN_FILE, dedupe, existing_metadata, output_files, scan_ids, write_run_json, write_shard

log = logging.getLogger(__name__)


class JobError(RuntimeError):
    """A failure that ends the job with a one-line reason (bad input, model, output)."""


# -- Ray ----------------------------------------------------------------------------------------


def init_ray(cfg: JobConfig) -> tuple[bool, bool]:
    """Join the configured cluster (`ray.address`, else RAY_ADDRESS as set by `ray job submit`), or
    start an embedded local Ray. -> (this call initialised Ray, it started a local Ray)."""
    import ray

    if ray.is_initialized():
        return False, False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return True, False
    # "local": always a fresh embedded Ray, never some other cluster found on this machine
    ray.init(address="local", num_cpus=cfg.ray.num_cpus, include_dashboard=False, log_to_driver=True)
    return True, True


@dataclass
class Placement:
    device: str  # "cuda" | "cpu"
    num_actors: int
    num_cpus: float
    num_gpus: float
    torch_threads: int


def plan_placement(cfg: JobConfig, resources: dict[str, float]) -> Placement:
    """Decide devices and pool size from the cluster's resources. Asking Ray for a GPU the cluster
    does not have would wait forever, so that case is an error up front."""
    m = cfg.model
    gpus = resources.get("GPU", 0.0)
    cpus = resources.get("CPU", 1.0)
    if m.device == "cuda" and gpus <= 0:
        raise JobError("model.device is cuda but the Ray cluster has no GPUs (set model.device: auto or cpu)")
    if gpus > 0 and m.device in ("auto", "cuda"):
        n = m.num_actors or max(1, int(gpus / m.gpus_per_actor))
        threads = m.torch_threads or max(1, math.ceil(m.cpus_per_actor))
        return Placement(
            "cuda", n, min(m.cpus_per_actor, max(cpus / n - 0.5, 0.5)), m.gpus_per_actor, threads
        )
    # CPU: leave room for the decode and write tasks, or the pipeline starves (ENVIRONMENT.md). The
    # model is the only heavy work, so its threads may use the cores the light stages leave idle.
    n = m.num_actors or max(1, int((cpus - 1) / m.cpus_per_actor))
    threads = m.torch_threads or max(1, int(cpus // n))
    return Placement("cpu", n, m.cpus_per_actor, 0.0, threads)


# -- progress -----------------------------------------------------------------------------------


@dataclass
class Progress:
    total: int
    interval_s: float
    stream: TextIO = field(default_factory=lambda: sys.stderr)
    rows: int = 0
    ok: int = 0
    error: int = 0
    audio_s: float = 0.0
    files: int = 0
    start: float = field(default_factory=time.monotonic)
    _last: float = 0.0
    _finished: bool = False

    def update(self, summary: pa.Table) -> None:
        self.rows += int(pc.sum(summary["rows"]).as_py() or 0)
        self.ok += int(pc.sum(summary["ok"]).as_py() or 0)
        self.error += int(pc.sum(summary["error"]).as_py() or 0)
        self.audio_s += float(pc.sum(summary["audio_s"]).as_py() or 0.0)
        self.files += summary.num_rows
        now = time.monotonic()
        finished = self.rows >= self.total
        if now - self._last >= self.interval_s or (finished and not self._finished):
            self._last, self._finished = now, finished
            print(self.line(), file=self.stream, flush=True)

    def line(self) -> str:
        el = max(time.monotonic() - self.start, 1e-9)
        rate = self.rows / el
        eta = (self.total - self.rows) / rate if rate > 0 else float("inf")
        pct = 100.0 * self.rows / self.total if self.total else 100.0
        return (
            f"[emotion2vec] {self.rows}/{self.total} rows ({pct:.0f}%) | ok {self.ok} err {self.error} | "
            f"{self.audio_s / 3600:.3f} h audio | {rate:.1f} rows/s, {self.audio_s / el:.1f} audio-s/s | "
            f"ETA {_hms(eta)}"
        )


def _hms(s: float) -> str:
    if not math.isfinite(s):
        return "--:--:--"
    s = int(round(s))
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


# -- the job --------------------------------------------------------------------------------------


@dataclass
class RunResult:
    info: dict[str, Any]
    exit_code: int
    message: str


@dataclass
class ModelInfo:
    """What the driver needs of the model: its identity, output width and labels (not the weights)."""

    fingerprint: dict[str, Any]
    sample_rate: int
    embed_dim: int
    labels: list[str]
    weights_sha256: str


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
    """Load the model once on the driver (strict key and shape checks, weights hash), so that a bad
    checkpoint fails the job before any work; keep only what the driver needs."""
    from .model import CheckpointError, ConfigError, load_bundle

    try:
        bundle = load_bundle(path, device="cpu", source=str(ref), revision=ref.revision)
    except (CheckpointError, ConfigError) as e:
        raise JobError(f"model.source: {e}") from None
    return ModelInfo(
        bundle.fingerprint(), bundle.sample_rate, bundle.embed_dim, bundle.labels, bundle.weights_sha256
    )


def _prepare_output(
    cfg: JobConfig, storage: Storage, fingerprint: dict[str, Any], manifest: Manifest
) -> tuple[pa.Table, set[str]]:
    """Apply output.mode. -> (rows still to process, ids skipped as already done)."""
    out = cfg.output.path
    files = output_files(storage, out)
    mode = cfg.output.mode
    if files and mode == "error_if_exists":
        raise JobError(
            f"output.path {out} already holds {len(files)} Parquet files and output.mode is error_if_exists"
        )
    if files and mode == "overwrite":
        for f in files:
            storage.delete(f)
        if storage.exists(join(out, RUN_FILE)):
            storage.delete(join(out, RUN_FILE))
        files = []
    if not files:
        return manifest.table, set()
    previous = existing_metadata(storage, out)
    if previous is not None:
        mismatched = [
            k
            for k in ("weights_sha256", "embed_dim", "labels", "frames", "schema")
            if previous.get(k) != fingerprint.get(k)
        ]
        if mismatched:
            raise JobError(
                f"output.path {out} was written with a different {', '.join(mismatched)} "
                f"(model {previous.get('source')}, sha256 {str(previous.get('weights_sha256'))[:12]}); "
                f"set output.mode: overwrite or choose another output.path"
            )
    removed = storage.remove_stale_temp_files(out)
    if removed:
        log.warning("removed %d unfinished temp files left by an earlier run in %s", removed, out)
    dedupe(storage, out)  # repair anything a crashed run left behind before trusting the ids
    done = scan_ids(storage, out)
    ok_ids = done.filter(pc.is_null(done["error"]))["id"]
    todo = manifest.table.filter(pc.invert(pc.is_in(manifest.table["id"], value_set=ok_ids)))
    skipped = set(ok_ids.to_pylist()) & set(manifest.table["id"].to_pylist())
    return todo, skipped


def run(cfg: JobConfig, *, stream: TextIO | None = None) -> RunResult:
    """Run the job end to end. Raises JobError for failures that stop it before or instead of
    processing; returns the exit code (non-zero when the error fraction is too high)."""
    import ray

    stream = stream or sys.stderr
    t0 = time.time()
    storage = Storage.from_config(cfg.storage)
    try:
        manifest = read_manifest(cfg.input, storage)
    except ValueError as e:
        raise JobError(str(e)) from None

    path, ref = _resolve_model_source(cfg)
    # Checking the model (import torch, load, hash: seconds) and starting Ray (seconds) need nothing
    # from each other: the check runs in a thread while Ray starts.
    with ThreadPoolExecutor(1, thread_name_prefix="e2v-model-check") as pool:
        checking = pool.submit(_check_model, path, ref)
        started_ray, started_local = init_ray(cfg)
        try:
            model = checking.result()
        except BaseException:
            if started_ray:
                ray.shutdown()
            raise
    ray_info = {"gcs_address": ray.get_runtime_context().gcs_address, "started_local": started_local}
    try:
        schema_version = 1
        fingerprint = {
            **model.fingerprint,
            "frame_rate": FRAME_RATE,
            "frames": cfg.output.frames,
            "resampler": RESAMPLER,
            "sample_rate": model.sample_rate,
            "pipeline_version": __version__,
            "schema": schema_version,
        }
        todo, skipped = _prepare_output(cfg, storage, fingerprint, manifest)
        schema = output_schema(
            model.embed_dim,
            len(model.labels),
            cfg.output.frames,
            passthrough_schema(manifest.table.schema),
            fingerprint,
        )
        storage.makedirs(cfg.output.path)
        print(
            f"[emotion2vec] manifest {manifest.source}: {len(manifest)} rows, {len(skipped)} already done, "
            f"{todo.num_rows} to process -> {cfg.output.path}",
            file=stream,
            flush=True,
        )
        placement = plan_placement(cfg, ray.cluster_resources())
        from .predictor import resolve_dtype  # torch: imported by now (the model check)

        # as resolved on this machine (warns early when a half precision would fall back to float32);
        # each model actor resolves it again on its own hardware and reports what it ran
        planned_dtype = str(resolve_dtype(cfg.model.dtype, placement.device)).replace("torch.", "")
        progress = Progress(todo.num_rows, cfg.ray.progress_interval_s, stream)
        per_node: dict[str, int] = {}
        per_runtime: dict[str, int] = {}
        written: set[str] = set()
        stage_s = {"decode_s": 0.0, "model_s": 0.0, "write_s": 0.0}  # summed over workers
        if todo.num_rows:
            ds = build_dataset(cfg, todo, storage, schema, placement, model.weights_sha256)
            for summary in ds.iter_batches(batch_size=None, batch_format="pyarrow"):
                progress.update(summary)
                written.update(summary["file"].to_pylist())
                for key in stage_s:
                    stage_s[key] += float(pc.sum(summary[key]).as_py() or 0.0)
                for column, acc in (("model_nodes", per_node), ("model_runtimes", per_runtime)):
                    for counts in summary[column].to_pylist():
                        for key, rows in json.loads(counts).items():
                            acc[key] = acc.get(key, 0) + rows
        report = dedupe(storage, cfg.output.path, newer=written)
        totals = scan_ids(storage, cfg.output.path)
    finally:
        if started_ray:
            ray.shutdown()

    wall = time.time() - t0
    processed = progress.rows
    err_frac = progress.error / processed if processed else 0.0
    info = {
        "pipeline_version": __version__,
        "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t0)),
        "wall_time_s": round(wall, 3),
        "rows": {"input": len(manifest), "ok": progress.ok, "error": progress.error, "skipped": len(skipped)},
        "output_totals": {
            "rows": totals.num_rows,
            "ok": int(pc.sum(pc.is_null(totals["error"])).as_py() or 0) if totals.num_rows else 0,
            "error": int(pc.sum(pc.is_valid(totals["error"])).as_py() or 0) if totals.num_rows else 0,
            "files": len(output_files(storage, cfg.output.path)),
            "duplicates_removed": report.removed,
        },
        "audio_hours": round(progress.audio_s / 3600, 6),
        "throughput": {
            "rows_per_s": round(processed / wall, 3) if wall else None,
            "audio_s_per_s": round(progress.audio_s / wall, 3) if wall else None,
        },
        "error_fraction": round(err_frac, 6),
        "stage_seconds": {k: round(v, 3) for k, v in stage_s.items()},
        "placement": placement.__dict__,
        "ray": ray_info,
        "rows_per_model_node": per_node,
        "rows_per_model_runtime": per_runtime,  # "<device> <dtype>" -> ok rows, as the actors ran them
        "model": {
            **fingerprint,
            # what the actors ran; when no row reached the model, what this machine would run
            "dtype": "/".join(sorted({k.split()[-1] for k in per_runtime})) or planned_dtype,
        },
        "output_metadata": fingerprint,
        "config": cfg.redacted(),
    }
    write_run_json(storage, cfg.output.path, info)
    print(
        f"[emotion2vec] done in {_hms(wall)}: {progress.ok} ok, {progress.error} errors, {len(skipped)} skipped; "
        f"{progress.audio_s / 3600:.3f} h audio at {progress.audio_s / max(wall, 1e-9):.1f} audio-s/s -> "
        f"{cfg.output.path} ({join(cfg.output.path, RUN_FILE)})",
        file=stream,
        flush=True,
    )
    if err_frac > cfg.output.max_error_fraction:
        msg = (
            f"error fraction {err_frac:.1%} ({progress.error}/{processed}) exceeds output.max_error_fraction "
            f"{cfg.output.max_error_fraction:.1%}; see the error column in {cfg.output.path}"
        )
        return RunResult(info, 3, msg)
    return RunResult(info, 0, "ok")


def build_dataset(
    cfg: JobConfig,
    todo: pa.Table,
    storage: Storage,
    schema: pa.Schema,
    placement: Placement,
    weights_sha: str,
):
    import ray
    import ray.data

    from .predictor import EmotionPredictor

    ctx = ray.data.DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_auto_log_stats = False

    rows_per_block = max(cfg.audio.decode_batch_size, 1)
    blocks = [todo.slice(i, rows_per_block) for i in range(0, todo.num_rows, rows_per_block)]
    ds = ray.data.from_arrow(blocks)
    ds = ds.map_batches(
        decode_batch,
        batch_size=cfg.audio.decode_batch_size,
        batch_format="pyarrow",
        fn_kwargs={"storage": storage},
        num_cpus=0.5,
        compute=ray.data.TaskPoolStrategy(size=cfg.audio.decode_tasks) if cfg.audio.decode_tasks else None,
    )
    m = cfg.model
    ds = ds.map_batches(
        EmotionPredictor,
        batch_size=m.rows_per_call,
        batch_format="pyarrow",
        fn_constructor_kwargs={
            "source": m.source,
            "revision": m.revision,
            "cache_dir": m.cache_dir,
            "offline": m.offline,
            "device": placement.device,
            "dtype": m.dtype,
            "weights_sha256": weights_sha,
            "frames": cfg.output.frames,
            "max_chunk_s": cfg.audio.max_chunk_s,
            "batch_seconds": m.batch_seconds,
            "max_batch_size": m.max_batch_size,
            "torch_threads": placement.torch_threads,
        },
        # On GPUs start the whole pool at once (every GPU busy from the start); on CPU start with one
        # actor and let Ray Data grow the pool within the CPUs the other stages leave.
        compute=ray.data.ActorPoolStrategy(
            min_size=placement.num_actors if placement.device == "cuda" else 1, max_size=placement.num_actors
        ),
        num_cpus=placement.num_cpus,
        num_gpus=placement.num_gpus or None,
    )
    write_rows = cfg.output.rows_per_file if not cfg.output.frames else min(cfg.output.rows_per_file, 256)
    ds = ds.map_batches(
        write_shard,
        batch_size=write_rows,
        batch_format="pyarrow",
        fn_kwargs={
            "output": cfg.output.path,
            "schema": schema,
            "storage": storage,
            "compression": cfg.output.compression,
            "max_file_mb": cfg.output.max_file_mb,
        },
        num_cpus=0.25,
    )
    return ds
