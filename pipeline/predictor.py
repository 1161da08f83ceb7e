"""The model stage: a Ray Data callable class that loads the model once and turns decoded rows
into emotion rows.

Per call it receives a block of rows (Arrow) with a `waveform` column (16 kHz mono float32, null
for rows that already failed). Long clips are cut into `audio.max_chunk_s` windows; all windows of
the block are packed by length under the padded-samples budget, run as padded batches (whose
results equal one-at-a-time inference), and reassembled per row. It returns exactly one row per
input row, in input order, with the waveform dropped and the model columns added. A batch that
fails is split in halves until the clip that fails is alone, so one bad clip becomes one error row;
out of memory also frees the cache and lowers the actor's budget, and a device error that breaks the
process ends the actor (gpu_errors.py).

On a GPU (or a simulated one) the actor takes the GPU's decisions: 600 s batches of up to 256 clips,
reused page-locked host buffers, float32 without TF32; Ray Data runs two of its calls at once
(run.py), so the class is thread-safe: each call keeps its own state, and forwards take turns on the
device under one lock while the other call collates, waits for its results (a blocking event: no
core spins) or builds its output columns.
"""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
import warnings
from collections import deque
from dataclasses import dataclass

import numpy as np
import pyarrow as pa
import torch

from . import gpu_errors
from .audio import chunk_bounds
from .batching import collate, pack
from .errors import DeviceUnusable
from .model import ModelBundle, kernels, load_model
from .poison import InFlight, crashed_alone, maybe_crash
from .schema import MODEL_NODE, MODEL_RUNTIME, MODEL_TIME, WAVEFORM, segments_type

log = logging.getLogger(__name__)

# padded audio per forward pass when model.batch_seconds is not set, and clips per forward pass when
# model.max_batch_size is not set (bench/RESULTS.md): on a GPU 3-5 s clips fill only 100-160 s of the
# 600 s budget in batches of 32
DEFAULT_BATCH_SECONDS = {"cpu": 16.0, "cuda": 600.0}
DEFAULT_MAX_BATCH_SIZE = {"cpu": 32, "cuda": 256}
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


# `EMOTION2VEC_SIMULATE_GPU=1` in the job's environment: a model actor that holds a Ray GPU (a fake
# autoscaler's node, a dry run) but sees no CUDA device runs the model on its CPU instead of failing
SIMULATE_GPU_ENV = "EMOTION2VEC_SIMULATE_GPU"
SIMULATED = "(simulated gpu)"


def simulate_gpu() -> bool:
    return os.environ.get(SIMULATE_GPU_ENV, "").strip().lower() not in ("", "0", "false", "no", "off")


def resolve_device(device: str) -> str:
    if device == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    return device


def resolve_dtype(dtype: str, device: str) -> torch.dtype:
    """`model.dtype` -> the dtype the model runs in on `device` of this machine. `auto`: bfloat16
    on GPUs that have it in hardware (Ampere and later), float16 on older ones (a T4, a V100),
    float32 on CPUs. A half-precision dtype on a CPU without native support for it
    (bfloat16 needs AVX512-BF16 or AMX) would run its matmuls in a scalar fallback, ~100x slower
    than float32: float32 is used instead, with a warning."""
    if dtype == "auto":
        return gpu_auto_dtype() if device.startswith("cuda") else torch.float32
    want = DTYPES[dtype]
    if device == "cpu" and want != torch.float32 and not cpu_has_native(want):
        warnings.warn(
            f"model.dtype {dtype}: this CPU has no native {dtype} matmul (needs "
            f"{'AVX512-BF16 or AMX' if want == torch.bfloat16 else 'AMX-FP16'}); its {dtype} kernels would run "
            f"~100x slower than float32, so the model runs in float32",
            RuntimeWarning,
            stacklevel=2,
        )
        return torch.float32
    return want


def gpu_auto_dtype() -> torch.dtype:
    """`model.dtype: auto` on a GPU: bfloat16 where the GPU computes it natively, else float16 (which
    every CUDA GPU's tensor cores take). Without a visible device (a simulated GPU): bfloat16."""
    if torch.cuda.is_available() and not torch.cuda.is_bf16_supported(including_emulation=False):
        return torch.float16
    return torch.bfloat16


def cpu_has_native(dtype: torch.dtype) -> bool:
    """Whether this CPU runs `dtype` matmuls in hardware and oneDNN's fused linears accept it."""
    cpu = torch.cpu  # its private _is_*_supported() read the CPU's ISA flags
    if dtype == torch.bfloat16:
        isa = (
            getattr(cpu, "_is_avx512_bf16_supported", lambda: False)()
            or getattr(cpu, "_is_amx_tile_supported", lambda: False)()
        )
    elif dtype == torch.float16:
        isa = getattr(cpu, "_is_amx_fp16_supported", lambda: False)()
    else:
        return True
    return bool(isa) and kernels.onednn_linear_available(dtype)


def simulated_dtype(dtype: str) -> torch.dtype:
    """What a simulated GPU runs: the dtype a GPU would run, where this CPU runs it natively; float32
    otherwise (the output's metadata says which: run._fingerprint)."""
    want = resolve_dtype(dtype, "cuda")
    return want if cpu_has_native(want) else torch.float32


def _exit_device_broken(e: BaseException) -> None:
    """End this actor's process on a device error it cannot get past (gpu_errors.py): the job
    restarts the pipeline on a fresh actor (and device context) instead of turning every later row
    into an error row."""
    log.error("device error, ending this model worker so that a fresh process replaces it: %s", e)
    logging.shutdown()
    os._exit(EXIT_DEVICE_BROKEN)


EXIT_DEVICE_BROKEN = 70


def cuda_unusable_reason() -> str | None:
    """Why PyTorch sees no CUDA device in this process (None when it sees one), in PyTorch's words
    where it has some: its CUDA initialisation warns, e.g. that the driver is too old."""
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        if torch.cuda.is_available():
            return None
    said = [str(w.message).split("\n")[0] for w in seen if "CUDA" in str(w.message)]
    if said:
        return said[0]
    if torch.version.cuda is None:
        return f"this PyTorch ({torch.__version__}) is built without CUDA"
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    return f"PyTorch {torch.__version__} (CUDA {torch.version.cuda}) finds no CUDA device" + (
        f" (CUDA_VISIBLE_DEVICES={visible})" if visible is not None else ""
    )


def _detached(e: BaseException) -> BaseException:
    """`e` without its traceback and chained exceptions: their frames hold the failed call's tensors
    (the activations of a batch that ran out of memory) for as long as the exception lives."""
    e.__traceback__ = None
    e.__cause__ = e.__context__ = None
    e.__suppress_context__ = True
    return e


class WorkerCrashed(RuntimeError):
    """The row killed the process that ran the model on it."""


@dataclass
class RowResult:
    num_frames: int  # T
    frames: np.ndarray | None  # [T, D] float32, only when frames are written
    embedding: np.ndarray  # [D] float32
    scores: np.ndarray | None  # [C] float32
    windows: list[tuple[float, float]]  # [start_s, end_s) of each window (one for short clips)
    window_scores: np.ndarray | None  # [S, C] float32, one row per window


@dataclass
class ItemResult:  # one window (or whole short clip) through the model
    num_frames: int
    frames: np.ndarray | None  # [T, D] float16 (the output's type), only when frames are written
    embedding: np.ndarray  # [D] float32


class HostBuffers:
    """Reusable host buffers that padded batches are collated into before they are copied to the
    device: page-locked on a GPU, so that the copy is a DMA the host need not wait for (a fresh
    pinned allocation per batch costs more than the copy), plain memory elsewhere. A buffer goes
    back to the pool once the batch that used it has come back from the device."""

    KEEP = 3  # one per call in flight, one spare

    def __init__(self, pin: bool, size: int):
        self.pin = pin and torch.cuda.is_available()  # a simulated GPU takes the decision, not the pages
        self.size = size  # float32 samples: the padded-samples budget of one batch
        self._free: list[torch.Tensor] = []
        self._lock = threading.Lock()

    def take(self, numel: int) -> torch.Tensor:
        with self._lock:
            for i, buf in enumerate(self._free):
                if buf.numel() >= numel:
                    return self._free.pop(i)
        return torch.empty(max(numel, self.size), dtype=torch.float32, pin_memory=self.pin)

    def give(self, buf: torch.Tensor) -> None:
        with self._lock:
            if len(self._free) < self.KEEP:
                self._free.append(buf)


def waveforms(column: pa.ChunkedArray | pa.Array) -> list[np.ndarray | None]:
    """A (large_)list<float32> column -> one zero-copy numpy view per row (None for nulls)."""
    arr = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if len(arr) == 0:
        return []
    values = arr.values.to_numpy(zero_copy_only=False)
    offsets = arr.offsets.to_numpy()
    valid = arr.is_valid().to_numpy(zero_copy_only=False)
    return [values[offsets[i] : offsets[i + 1]] if valid[i] else None for i in range(len(arr))]


class EmotionPredictor:
    def __init__(
        self,
        *,
        source: str,
        revision: str | None = None,
        cache_dir: str | None = None,
        offline: bool | None = None,
        device: str = "auto",
        dtype: str = "auto",
        weights_sha256: str | None = None,
        weights_file_id: str | None = None,
        frames: bool = False,
        max_chunk_s: float = 30.0,
        batch_seconds: float | None = None,
        max_batch_size: int | None = None,
        rows_per_call: int | None = None,
        torch_threads: int | None = None,
        poison_scope: str | None = None,
        suspects: list[str] | None = None,
        simulate_gpu: bool = False,
    ):
        # what a separate process needs to load the same model (suspect rows run there, see poison.py)
        self._model_kwargs = {
            k: v
            for k, v in locals().items()
            if k not in ("self", "poison_scope", "suspects", "rows_per_call", "__class__")
        }
        self._in_flight = InFlight(poison_scope)
        self._suspects = set(suspects or ())
        if torch_threads:
            torch.set_num_threads(torch_threads)
        self.node = _node_id()
        # `target` is the device every decision is taken for (batch budget, batch size, pinned buffers,
        # float32 precision); `device` is where the tensors live. They differ only on a simulated GPU,
        # which takes every GPU decision and runs the tensors on its CPU.
        self.target = resolve_device(device)
        self.device = self.target
        simulated = False
        if self.target.startswith("cuda"):
            reason = cuda_unusable_reason()
            if reason is not None and not simulate_gpu:
                raise DeviceUnusable(
                    f"model.device cuda: a model actor on node {self.node[:12]} holds a Ray GPU, but PyTorch "
                    f"cannot use it: {reason}"
                )
            if reason is not None:
                simulated, self.device = True, "cpu"
        on_gpu = self.target.startswith("cuda")
        self.dtype = simulated_dtype(dtype) if simulated else resolve_dtype(dtype, self.device)
        self.bundle: ModelBundle = load_model(
            source,
            revision=revision,
            device=self.device,
            dtype=self.dtype,
            cache_dir=cache_dir,
            offline=offline,
            # the driver's hash stands for the same file on the same machine (the embedded Ray's case)
            known_sha256={weights_file_id: weights_sha256} if weights_file_id and weights_sha256 else None,
        )
        if weights_sha256 and self.bundle.weights_sha256 != weights_sha256:
            raise RuntimeError(
                f"model {source}: weights on this worker (sha256 {self.bundle.weights_sha256[:12]}) differ from the "
                f"driver's ({weights_sha256[:12]}); pin model.revision"
            )
        self.frames = frames
        # windows and budgets follow the loaded model's own input contract (its CNN), not a default
        self.input = self.bundle.input
        # rounded, not truncated: 4.02 * 16000 is 64319.99999999999 in floats, which cut windows a frame short
        self.max_chunk = max(self.input.receptive_field, round(max_chunk_s * self.input.sample_rate))
        kind = "cuda" if on_gpu else "cpu"
        if batch_seconds is None:
            batch_seconds = DEFAULT_BATCH_SECONDS[kind]
        self.budget = max(self.input.receptive_field, round(batch_seconds * self.input.sample_rate))
        self.max_batch_size = max_batch_size or DEFAULT_MAX_BATCH_SIZE[kind]
        self.rows_per_call = rows_per_call
        # on a GPU: batches collated into reused page-locked buffers; float32 means float32 (no TF32 in
        # cuDNN convolutions, which PyTorch allows by default, nor in cuBLAS matmuls); one forward at a
        # time, while the actor's other call in flight does its host work (run.py hands a GPU actor
        # two concurrent calls)
        self.buffers = HostBuffers(pin=on_gpu, size=self.budget)
        # the GPU's dtype, also where a simulated GPU's CPU runs another (float32 without native bf16)
        self.exact_fp32 = on_gpu and resolve_dtype(dtype, "cuda") == torch.float32
        self._device_lock = threading.Lock()
        self.labels = self.bundle.labels
        # what really ran, for _run.json: "<device> <dtype>", "cpu (simulated gpu) <dtype>"
        device_name = f"{self.device} {SIMULATED}" if simulated else self.device
        self.runtime = f"{device_name} {str(self.dtype).replace('torch.', '')}"
        self._share_device()
        if simulated:
            d = self.decisions()
            # one line per actor on the driver's console (a logger's record would pass several handlers)
            print(
                f"{SIMULATE_GPU_ENV}=1: this model actor holds a Ray GPU but sees no CUDA device; the model "
                f"runs on its CPU with the GPU's decisions: batch_seconds {d['batch_seconds']:g}, "
                f"max_batch_size {d['max_batch_size']}, page-locked buffers {d['pinned_buffers']}, "
                f"dtype {d['dtype']}",
                file=sys.stderr,
                flush=True,
            )

    def decisions(self) -> dict:
        """What this actor decided for its device (tests, benchmarks): budget, batch size, pinning."""
        return {
            "target": self.target,
            "device": self.device,
            "dtype": str(self.dtype).replace("torch.", ""),
            "batch_seconds": self.budget / self.input.sample_rate,
            "max_batch_size": self.max_batch_size,
            "pinned_buffers": self.target.startswith("cuda"),
            "exact_float32": self.exact_fp32,
            "rows_per_call": self.rows_per_call,
        }

    def _share_device(self) -> None:
        """Faults (gpu_errors.py): an actor that holds a share of a GPU (`model.gpus_per_actor` < 1,
        as Ray assigned it) caps its caching allocator at that share of the device's memory, so that
        one actor's long batch runs it out of memory, not its neighbour; `memory_fraction` says the
        cap (None: the whole device), also on a simulated GPU, where nothing is capped."""
        self._budget_lowered = False
        self.memory_fraction = gpu_share()
        if self.memory_fraction is not None and self.device.startswith("cuda"):
            index = torch.device(self.device).index  # the call wants an index: "cuda" has none
            torch.cuda.set_per_process_memory_fraction(
                self.memory_fraction, torch.cuda.current_device() if index is None else index
            )

    # -- model work ---------------------------------------------------------------------------

    @torch.inference_mode()
    def _forward(self, clips: list[np.ndarray]) -> list[ItemResult]:
        buf = self.buffers.take(len(clips) * max(len(c) for c in clips))
        try:
            wav, lengths = collate(clips, out=buf)  # host work: outside the device lock
            frame_lengths = self.bundle.model.frame_lengths(lengths).tolist()  # on the host: no sync
            with self._device_lock, kernels.exact_float32(self.exact_fp32):
                # lengths stay on the host: the model checks them and picks its padded path there,
                # and queues its device work without waiting for the device (docs/model.md)
                out = self.bundle.model(wav.to(self.device, non_blocking=True), lengths)
                # frames leave the device only when they are written (on a GPU they are most of the copy
                # back), already in the output's float16: half the bytes, no conversion per row
                back = CopyBack(out.frames.to(torch.float16) if self.frames else None, out.embedding)
            # waited for outside the lock: the other call queues its forward while this one runs
            frames, emb = back.wait()
        except BaseException:
            if self.device.startswith("cuda"):  # a failed forward may leave the copy from buf queued
                _synchronize_quietly()
            raise
        finally:
            self.buffers.give(buf)  # the copies above have completed: the buffer is free again
        return [
            ItemResult(frame_lengths[i], None if frames is None else frames[i, : frame_lengths[i]], emb[i])
            for i in range(len(clips))
        ]

    def _run_items(self, items: list[np.ndarray]) -> list[ItemResult | Exception]:
        """Items -> one result or exception each. A batch that fails is split in halves until the
        clip that fails is alone; out of memory also frees the cache and lowers this actor's budget
        for the rest of the run, and a clip alone gets one more try after that. Windows smaller than
        `audio.max_chunk_s` are never tried: they would change the row's numbers (the transformer
        sees the whole window), so an item that fails alone is an error row."""
        results: list[ItemResult | Exception] = [None] * len(items)  # type: ignore[list-item]
        lengths = [len(x) for x in items]
        todo = deque(pack(lengths, self.budget, self.max_batch_size))
        tried_alone: set[int] = set()  # items that already had their one retry after a release
        while todo:
            group = todo.popleft()
            if len(group) > 1 and len(group) * max(lengths[i] for i in group) > self.budget:
                # packed before the budget fell: pack again under the new one
                sub = pack([lengths[i] for i in group], self.budget, self.max_batch_size)
                todo.extendleft(reversed([[group[j] for j in batch] for batch in sub]))
                continue
            outs, error = self._attempt(self._forward, [items[i] for i in group])
            if error is None:
                for i, o in zip(group, outs, strict=True):
                    results[i] = o
                continue
            # out of the except block: the failed call's frames (and tensors) are gone
            kind = gpu_errors.classify(error)
            if kind is gpu_errors.Kind.STICKY:
                self._device_broken(error)
            if kind is gpu_errors.Kind.MEMORY:
                self._release()
                if len(group) > 1:
                    self._lower_budget(len(group) * max(lengths[i] for i in group))
            if len(group) > 1:
                log.info("batch of %d failed (%s: %s); splitting it", len(group), type(error).__name__, error)
                half = len(group) // 2
                todo.extendleft([group[half:], group[:half]])
            elif kind is gpu_errors.Kind.MEMORY and group[0] not in tried_alone:
                tried_alone.add(group[0])
                todo.appendleft(group)
            else:
                results[group[0]] = error
        return results

    def _attempt(self, fn, *args) -> tuple[object, BaseException | None]:
        """-> (fn(*args), None), or (None, the exception without its traceback)."""
        try:
            gpu_errors.maybe_inject(self.node)
            return fn(*args), None
        except Exception as e:  # noqa: BLE001 - classified by the caller, outside this block
            return None, _detached(e)

    def _device_broken(self, error: BaseException) -> None:
        """End this process (a fresh one gets a fresh device context), noting its node for the driver."""
        self._in_flight.device_broken(self.node)
        _exit_device_broken(error)

    def _release(self) -> None:
        """Give the cached blocks of a failed call back to the device (other processes share it)."""
        if self.device.startswith("cuda"):
            torch.cuda.empty_cache()

    def _lower_budget(self, failed_samples: int) -> None:
        """A batch of `failed_samples` padded samples ran out of memory: later batches of this actor
        stay under half of it."""
        lower = max(self.input.receptive_field, failed_samples // 2)
        if lower >= self.budget:
            return
        sr = self.input.sample_rate
        level = logging.DEBUG if self._budget_lowered else logging.WARNING
        log.log(
            level,
            "a model batch of %.1f s padded audio ran out of memory; this model actor's batch budget is "
            "now %.1f s (was %.1f s) for the rest of the run",
            failed_samples / sr,
            lower / sr,
            self.budget / sr,
        )
        self._budget_lowered = True
        self.budget = lower

    @torch.inference_mode()
    def predict(self, clips: list[np.ndarray | None]) -> list[RowResult | Exception | None]:
        """Clips (None = skip) -> one result per clip: RowResult, the exception, or None."""
        items: list[np.ndarray] = []
        owner: list[int] = []
        bounds: list[tuple[int, int]] = []
        for r, clip in enumerate(clips):
            if clip is None:
                continue
            bounds_of = chunk_bounds(len(clip), self.max_chunk, self.input.receptive_field, self.input.hop)
            for start, end in bounds_of:
                items.append(clip[start:end])
                owner.append(r)
                bounds.append((start, end))
        outs = self._run_items(items)

        per_row: dict[int, list[int]] = {}
        for k, r in enumerate(owner):
            per_row.setdefault(r, []).append(k)
        results: list[RowResult | Exception | None] = [None] * len(clips)
        done: list[tuple[int, list[int], int, np.ndarray | None, np.ndarray]] = []
        heads: list[np.ndarray] = []  # per row: the whole clip's embedding, then each window's
        for r, ks in per_row.items():
            err = next((outs[k] for k in ks if isinstance(outs[k], Exception)), None)
            if err is not None:
                results[r] = err
                continue
            parts: list[ItemResult] = [outs[k] for k in ks]  # type: ignore[misc]
            num_frames = sum(p.num_frames for p in parts)
            if len(parts) == 1:
                frames, emb = parts[0].frames, parts[0].embedding
            else:
                # windows lie on the clip's frame grid, so their frames concatenate to the clip's, and the
                # whole-clip embedding (the mean of all frames) is the frame-weighted mean of the windows'
                frames = np.concatenate([p.frames for p in parts]) if self.frames else None
                weights = np.array([p.num_frames for p in parts], np.float64)
                emb = (
                    np.stack([p.embedding for p in parts]).astype(np.float64).T @ weights / num_frames
                ).astype(np.float32)
            heads += [emb] + ([p.embedding for p in parts] if len(parts) > 1 else [])
            done.append((r, ks, num_frames, frames, emb))
        # the head runs once per call on every embedding: once per row it would cost more than a small
        # clip's forward pass
        all_scores = self._classify(heads)
        at = 0
        for r, ks, num_frames, frames, emb in done:
            n = 1 if len(ks) == 1 else 1 + len(ks)
            scores = None if all_scores is None else all_scores[at : at + n]
            at += n
            # a window's segment ends where the next begins (windows overlap by 80 samples, see chunk_bounds)
            edges = [bounds[k][0] for k in ks] + [bounds[ks[-1]][1]]
            sr = self.input.sample_rate
            windows = [(edges[j] / sr, edges[j + 1] / sr) for j in range(len(ks))]
            window_scores = None if scores is None else (scores[:1] if len(ks) == 1 else scores[1:])
            results[r] = RowResult(
                num_frames, frames, emb, None if scores is None else scores[0], windows, window_scores
            )
        return results

    def _guarded(self, ids: list[str], paths: list[str | None], clips: list[np.ndarray | None]) -> list:
        """`predict`, with the call's rows recorded as in flight while it runs, so that a row that
        kills this process is known to the next attempt; rows that were in flight when an earlier
        attempt's actor died (suspects) run one at a time in a separate process instead."""
        suspect = [i for i, row_id in enumerate(ids) if row_id in self._suspects and clips[i] is not None]
        results: list = [None] * len(ids)
        alone = set(suspect)
        rest = [i for i in range(len(ids)) if i not in alone]
        if rest:
            call = self._in_flight.record([ids[i] for i in rest])
            for i in rest:
                maybe_crash("model", paths[i] or ids[i])
            for i, r in zip(rest, self.predict([clips[i] for i in rest]), strict=True):
                results[i] = r
            self._in_flight.clear(call)
        if suspect:
            for i, r in zip(
                suspect, self._isolated([(ids[i], paths[i], clips[i]) for i in suspect]), strict=True
            ):
                results[i] = r
        return results

    def _isolated(self, rows: list[tuple[str, str | None, np.ndarray]]) -> list:
        """Each row alone in a separate process holding its own model; a row that kills that process
        becomes a WorkerCrashed error, and a fresh process takes the next row. Where no separate
        process starts (a second model that does not fit beside this one, say), even after this
        actor's cache is freed, the rows run here one at a time, each alone in flight: the run goes
        on (before, it ended with exit 1), and a row that kills this actor costs a restart, after
        which a fresh actor tries a separate process again."""
        from .isolate import ChildDied, Isolated

        log.warning("running %d suspect rows one at a time in a separate process", len(rows))
        results: list = []
        child: Isolated | None = None
        here = False  # no separate process could start: the rest runs in this actor
        try:
            for row_id, path, clip in rows:
                if child is None and not here:
                    child, here = self._start_child(Isolated)
                if here:
                    results.append(self._alone_here(row_id, path, clip))
                    continue
                try:
                    results.append(child.run(row_id, path, clip))
                except ChildDied:
                    results.append(WorkerCrashed(crashed_alone(path or row_id)))
                    child = None
        finally:
            if child is not None:
                child.close()
        return results

    def _start_child(self, isolated: type) -> tuple[object | None, bool]:
        """-> (a separate model process, False), or (None, True) when none starts after a retry
        with this actor's cached device memory freed."""
        for _ in range(2):
            try:
                return isolated(self._model_kwargs), False
            except RuntimeError as e:
                error = e
            self._release()
        log.warning("%s; running the suspect rows in this model actor, one at a time", error)
        return None, True

    def _alone_here(self, row_id: str, path: str | None, clip: np.ndarray) -> RowResult | Exception:
        call = self._in_flight.record([row_id])
        try:
            (result,) = self.predict([clip])
        finally:
            self._in_flight.clear(call)
        return result

    def _classify(self, embeddings: list[np.ndarray]) -> np.ndarray | None:
        """[D] embeddings -> [n, C] softmax scores in one head call (None for head-less models). A
        device error here is told apart as in `_run_items` (the head is often where an earlier
        kernel's asynchronous CUDA error surfaces): sticky ends the actor; out of memory frees the
        cache and runs the head in halves, and ends the actor if one embedding alone cannot run."""
        if not embeddings:
            return None
        return self._head(np.stack(embeddings))

    def _head(self, x: np.ndarray) -> np.ndarray | None:
        def run(x: np.ndarray) -> np.ndarray | None:
            with self._device_lock, kernels.exact_float32(self.exact_fp32):
                _, scores = self.bundle.model.classify(torch.from_numpy(x).to(self.device))
                return None if scores is None else scores.cpu().numpy()

        scores, error = self._attempt(run, x)
        if error is None:
            return scores
        kind = gpu_errors.classify(error)
        if kind is gpu_errors.Kind.ROW:
            raise error  # not the device: a bug that would fail again
        if kind is gpu_errors.Kind.STICKY or len(x) == 1:
            self._device_broken(error)
        self._release()
        half = len(x) // 2
        parts = [self._head(x[:half]), self._head(x[half:])]
        return None if parts[0] is None else np.concatenate(parts)

    # -- Ray Data entry point -----------------------------------------------------------------

    def __call__(self, batch: pa.Table) -> pa.Table:
        k = self.rows_per_call
        if k and batch.num_rows > k:  # model.rows_per_call: the block in slices, each a call of its own
            return pa.concat_tables([self._call(batch.slice(i, k)) for i in range(0, batch.num_rows, k)])
        return self._call(batch)

    def _call(self, batch: pa.Table) -> pa.Table:
        n = batch.num_rows
        t0 = time.perf_counter()
        clips = waveforms(batch[WAVEFORM])
        results = self._guarded(batch["id"].to_pylist(), batch["path"].to_pylist(), clips)
        D = self.bundle.embed_dim
        C = len(self.labels) or 9

        errors = batch["error"].to_pylist()
        num_frames = np.zeros(n, np.int32)
        emb = np.zeros((n, D), np.float32)
        scores = np.zeros((n, C), np.float32)
        labels: list[str | None] = [None] * n
        ok = np.zeros(n, bool)
        segments: list[list[dict] | None] = [None] * n
        frame_parts: list[np.ndarray] = []
        frame_counts = np.zeros(n, np.int64)
        for i, res in enumerate(results):
            if isinstance(res, Exception):
                errors[i] = f"model: {type(res).__name__}: {res}"
            elif isinstance(res, RowResult) and not _finite(res):
                # NaN has no argmax (np.argmax takes it for the first class): an error row, not a wrong label;
                # worded `stage: ExceptionType: message` like every other error row (the output's contract)
                errors[i] = (
                    "model: FloatingPointError: the model's output for this row is not finite (NaN or inf)"
                )
            elif isinstance(res, RowResult):
                ok[i] = True
                num_frames[i] = res.num_frames
                emb[i] = res.embedding
                if res.scores is not None:
                    scores[i] = res.scores
                    labels[i] = self.labels[int(np.argmax(res.scores))]
                segments[i] = [
                    {
                        "start_s": a,
                        "end_s": b,
                        "label": None
                        if res.window_scores is None
                        else self.labels[int(np.argmax(res.window_scores[j]))],
                        "scores": None if res.window_scores is None else res.window_scores[j].tolist(),
                    }
                    for j, (a, b) in enumerate(res.windows)
                ]
                if self.frames and res.frames is not None:
                    frame_parts.append(np.asarray(res.frames, np.float16))
                    frame_counts[i] = len(res.frames)
        has_scores = ok & bool(self.labels)
        mask = pa.array(~ok)
        cols = {
            "num_frames": pa.array(num_frames, pa.int32(), mask=~ok),
            "label": pa.array(labels, pa.string()),
            "scores": _fixed(scores, C, ~has_scores),
            "embedding": _fixed(emb, D, ~ok),
            "segments": pa.array(segments, segments_type(C)),
        }
        if self.frames:
            flat = np.concatenate(frame_parts) if frame_parts else np.zeros((0, D), np.float16)
            inner = pa.FixedSizeListArray.from_arrays(pa.array(flat.reshape(-1), pa.float16()), D)
            offsets = pa.array(np.concatenate([[0], np.cumsum(frame_counts)]).astype(np.int32))
            cols["frames"] = pa.ListArray.from_arrays(offsets, inner, mask=mask)
        # per ok row, as the runtime: rows that failed before or in the model are no node's result
        cols[MODEL_NODE] = pa.array([self.node if ok[i] else None for i in range(n)], pa.string())
        cols[MODEL_RUNTIME] = pa.array([self.runtime if ok[i] else None for i in range(n)], pa.string())
        cols[MODEL_TIME] = pa.array(np.full(n, (time.perf_counter() - t0) / max(n, 1)), pa.float64())
        out = batch.drop_columns([WAVEFORM])
        out = out.set_column(out.schema.get_field_index("error"), "error", pa.array(errors, pa.string()))
        for name, arr in cols.items():
            out = out.append_column(name, arr)
        return out


def _finite(res: RowResult) -> bool:
    """Whether a row's embedding and scores (the clip's and each window's) are all finite numbers."""
    parts = (res.embedding, res.scores, res.window_scores)
    return all(p is None or bool(np.isfinite(p).all()) for p in parts)


def _fixed(values: np.ndarray, width: int, null_mask: np.ndarray) -> pa.Array:
    """[n, width] float32 -> fixed_size_list<float32, width>, null where null_mask."""
    flat = pa.array(np.ascontiguousarray(values, np.float32).reshape(-1), pa.float32())
    return pa.FixedSizeListArray.from_arrays(flat, width, mask=pa.array(null_mask, pa.bool_()))


class CopyBack:
    """Results of a forward -> numpy arrays. On CUDA the copies are queued behind the forward into
    page-locked memory, with a blocking event after them: `wait` sleeps until the GPU is done. A
    plain `.cpu()` waits by spinning a core for the whole forward (CUDA's default where a process has
    fewer contexts than the node has cores), CPU the node's decoding needs, and when done under the
    actor's device lock it kept the other call from queuing its forward until this one's results were
    back, so the GPU ran dry between forwards. One stream: the next forward runs after this one, on
    memory this one has freed. Elsewhere the tensors are read as they are."""

    def __init__(self, *tensors: torch.Tensor | None):
        self._event = None
        if any(t is not None and t.is_cuda for t in tensors):
            self._host = [None if t is None else _pinned_copy(t) for t in tensors]
            self._event = torch.cuda.Event(blocking=True)
            self._event.record()
        else:
            self._host = [None if t is None else t.cpu() for t in tensors]

    def wait(self) -> list[np.ndarray | None]:
        if self._event is not None:
            self._event.synchronize()
        return [None if t is None else t.numpy() for t in self._host]


def _pinned_copy(t: torch.Tensor) -> torch.Tensor:
    """A device tensor's copy into page-locked host memory (PyTorch's caching host allocator),
    queued on the current stream."""
    host = torch.empty(t.shape, dtype=t.dtype, pin_memory=True)
    return host.copy_(t, non_blocking=True)


def _synchronize_quietly() -> None:
    try:
        torch.cuda.synchronize()
    except Exception:  # noqa: BLE001 - a broken device is reported by the error being raised
        pass


def gpu_share() -> float | None:
    """The share of one GPU Ray assigned this actor when it is less than a whole GPU, else None."""
    try:
        import ray

        if not ray.is_initialized():
            return None
        share = ray.get_runtime_context().get_assigned_resources().get("GPU", 0.0)
    except Exception:  # noqa: BLE001 - outside an actor
        return None
    return share if 0 < share < 1 else None


def _node_id() -> str:
    try:
        import ray

        if not ray.is_initialized():  # get_runtime_context() would start a whole local Ray
            return "local"
        return ray.get_runtime_context().get_node_id()
    except Exception:  # noqa: BLE001 - outside Ray
        return "local"
