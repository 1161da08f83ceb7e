"""GPU faults without a GPU: the model stage's answer to each class of device error (gpu_errors.py),
shown by fault injection into a real predictor on the tiny model. The injected forward raises what
PyTorch raises on a GPU (torch.OutOfMemoryError above a batch size, a cuBLAS status, a CUDA runtime
error) and otherwise runs the real model; every row comes out exactly once."""

from __future__ import annotations

import logging
import os
import weakref
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import torch

from pipeline import predictor as mod
from pipeline.gpu_errors import Kind, classify
from pipeline.predictor import EXIT_DEVICE_BROKEN, EmotionPredictor

from .conftest import random_clips

CUBLAS_ALLOC = (
    "CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`\n"
    "CUDA kernel errors might be asynchronously reported at some other API call"
)
ILLEGAL_ADDRESS = (
    "CUDA error: an illegal memory access was encountered\n"
    "CUDA kernel errors might be asynchronously reported at some other API call, so the stacktrace below "
    "might be incorrect."
)


def accelerator_error(message: str, code: int) -> BaseException:
    e = torch.AcceleratorError(message)
    e.error_code = code  # as torch sets it from the CUDA runtime's return code
    return e


@pytest.mark.parametrize(
    "error, kind",
    [
        (torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB"), Kind.MEMORY),
        (RuntimeError(CUBLAS_ALLOC), Kind.MEMORY),
        (RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"), Kind.MEMORY),
        (RuntimeError("cuDNN error: CUDNN_STATUS_NOT_ENOUGH_WORKSPACE"), Kind.MEMORY),
        (accelerator_error("CUDA error: out of memory", 2), Kind.MEMORY),
        (RuntimeError("CUDA error: out of memory\nCUDA kernel errors might be ..."), Kind.MEMORY),
        (
            RuntimeError("[enforce fail at alloc_cpu.cpp:118] DefaultCPUAllocator: can't allocate memory"),
            Kind.MEMORY,
        ),
        # what isolate.py hands back: the type's name and the message, under a RuntimeError
        (type("OutOfMemoryError", (RuntimeError,), {})("CUDA out of memory. Tried to allocate"), Kind.MEMORY),
        (RuntimeError(ILLEGAL_ADDRESS), Kind.STICKY),
        (accelerator_error(ILLEGAL_ADDRESS, 700), Kind.STICKY),
        (accelerator_error("CUDA error: device-side assert triggered", 710), Kind.STICKY),
        (accelerator_error("CUDA error: unspecified launch failure", 719), Kind.STICKY),
        (accelerator_error("CUDA error: uncorrectable ECC error encountered", 214), Kind.STICKY),
        (accelerator_error("CUDA error: something new", 12345), Kind.STICKY),  # unknown: not trusted
        (
            RuntimeError("CUDA error: CUBLAS_STATUS_EXECUTION_FAILED when calling `cublasGemmEx(...)`"),
            Kind.STICKY,
        ),
        # the CUDA driver API's errors, as Triton's launcher (the CUDA norm kernels) and PyTorch's driver
        # calls word them: the same texts (cuGetErrorString), another prefix
        (RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered"), Kind.STICKY),
        (RuntimeError("Triton Error [CUDA]: unspecified launch failure"), Kind.STICKY),
        (RuntimeError("Triton Error [CUDA]: out of memory"), Kind.MEMORY),
        (RuntimeError("CUDA driver error: an illegal memory access was encountered"), Kind.STICKY),
        (RuntimeError("CUDA driver error: out of memory"), Kind.MEMORY),
        (ValueError("input too short"), Kind.ROW),
        (RuntimeError("shape '[2, -1]' is invalid for input of size 3"), Kind.ROW),
    ],
)
def test_each_class_of_device_error(error, kind):
    assert classify(error) is kind


def predictor(model_dir, **kw) -> EmotionPredictor:
    return EmotionPredictor(source=str(model_dir), device="cpu", dtype="float32", **kw)


class Exited(BaseException):
    """os._exit, caught: the actor's process would end here."""


@pytest.fixture
def no_exit(monkeypatch):
    def exit_(code):
        raise Exited(code)

    monkeypatch.setattr(mod.os, "_exit", exit_)
    monkeypatch.setattr(mod.logging, "shutdown", lambda: None)  # the test's own log capture stays


def inject(p: EmotionPredictor, monkeypatch, make_error, above: int, calls: list | None = None):
    """p's forward raises make_error() when the padded batch (clips x longest) is over `above`
    samples, after allocating "activations" the size of the batch, as a real forward would."""
    real = p._forward

    def forward(clips):
        padded = len(clips) * max(len(c) for c in clips)
        if calls is not None:
            calls.append(len(clips))
        if padded > above:
            activations = torch.zeros(padded)  # noqa: F841 - held by this frame, as a forward's are
            raise make_error()
        return real(clips)

    monkeypatch.setattr(p, "_forward", forward)


def assert_same_rows(got, want):
    assert len(got) == len(want)
    for g, w in zip(got, want, strict=True):
        assert g.num_frames == w.num_frames
        np.testing.assert_allclose(g.embedding, w.embedding, atol=1e-5)
        np.testing.assert_allclose(g.scores, w.scores, atol=1e-6)


LENGTHS = [16_000, 15_000, 14_000, 13_000, 12_000, 11_000, 10_000, 9_000]


def test_out_of_memory_splits_the_batch_and_lowers_the_budget_once(tiny_model_dir, monkeypatch, caplog):
    """A batch of 8 clips runs out of memory above 2 clips' worth: every row gets the result it gets
    without the fault (halves, then quarters), the budget falls so that later batches fit at once,
    and the actor says so once."""
    clips = random_clips(LENGTHS, seed=31)
    want = predictor(tiny_model_dir).predict(clips)
    p = predictor(tiny_model_dir, batch_seconds=60.0)
    calls: list[int] = []
    inject(
        p,
        monkeypatch,
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB"),
        above=2 * 16_000,
        calls=calls,
    )
    with caplog.at_level(logging.WARNING, logger="pipeline.predictor"):
        got = p.predict(clips)
    assert all(isinstance(r, mod.RowResult) for r in got), got
    assert_same_rows(got, want)
    assert p.budget <= 2 * 16_000  # 8 x 16000 failed, then 4 x 16000: now at most 32000 samples
    said = [r for r in caplog.records if "batch budget" in r.getMessage()]
    assert len(said) == 1, [r.getMessage() for r in caplog.records]
    calls.clear()
    again = p.predict(clips)  # the next call packs under the lowered budget: nothing fails
    assert_same_rows(again, want)
    assert max(calls) <= 2 and len(calls) == 4, calls


def test_a_clip_that_fails_alone_is_the_only_error_row(tiny_model_dir, monkeypatch):
    """The longest clip runs out of memory even alone (after its one retry): it alone is an error
    row, under the name users see (`OutOfMemoryError`); the others get their results."""
    clips = random_clips([40_000, *LENGTHS[:5]], seed=32)
    want = predictor(tiny_model_dir).predict(clips)
    p = predictor(tiny_model_dir, batch_seconds=60.0)
    inject(
        p,
        monkeypatch,
        lambda: torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 3 GiB"),
        above=32_000,
    )
    got = p.predict(clips)
    assert isinstance(got[0], torch.OutOfMemoryError) and got[0].__traceback__ is None
    assert_same_rows(got[1:], want[1:])
    # through the stage: one row per input, the error under the name users see
    ids = [f"r{i}" for i in range(len(clips))]
    batch = pa.table(
        {
            "id": ids,
            "path": [f"{i}.wav" for i in ids],
            "error": [None] * len(ids),
            "waveform": pa.array(clips, pa.large_list(pa.float32())),
        }
    )
    out = p(batch)
    errors = out["error"].to_pylist()
    assert out["id"].to_pylist() == ids
    assert errors[0].startswith("model: OutOfMemoryError: CUDA out of memory") and errors[1:] == [None] * 5


def test_the_failed_batch_is_released_before_the_retries(tiny_model_dir, monkeypatch):
    """The retries run after the failed call's frames are gone: its activations are freed, not held
    by a traceback while the same clips run again."""
    clips = random_clips(LENGTHS[:4], seed=33)
    p = predictor(tiny_model_dir, batch_seconds=60.0)
    real = p._forward
    held: list[weakref.ref] = []
    alive_at_retry: list[bool] = []

    def forward(batch):
        if len(batch) > 1:
            activations = torch.zeros(len(batch) * 16_000)
            held.append(weakref.ref(activations))
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 1 GiB")
        alive_at_retry.append(any(r() is not None for r in held))
        return real(batch)

    monkeypatch.setattr(p, "_forward", forward)
    got = p.predict(clips)
    assert all(isinstance(r, mod.RowResult) for r in got)
    assert alive_at_retry and not any(alive_at_retry), alive_at_retry


def test_a_cublas_allocation_failure_is_memory_pressure_not_a_broken_device(
    tiny_model_dir, monkeypatch, no_exit
):
    """cuBLAS formats its allocation failure as `CUDA error: CUBLAS_STATUS_ALLOC_FAILED`: the actor
    lives and the batch is split like any out-of-memory."""
    clips = random_clips(LENGTHS[:4], seed=34)
    want = predictor(tiny_model_dir).predict(clips)
    p = predictor(tiny_model_dir, batch_seconds=60.0)
    inject(p, monkeypatch, lambda: RuntimeError(CUBLAS_ALLOC), above=16_000)
    got = p.predict(clips)
    assert_same_rows(got, want)


@pytest.mark.parametrize(
    "make_error",
    [
        lambda: RuntimeError(ILLEGAL_ADDRESS),
        lambda: accelerator_error("CUDA error: device-side assert triggered", 710),
    ],
)
def test_a_sticky_device_error_ends_the_actor(tiny_model_dir, monkeypatch, no_exit, make_error):
    p = predictor(tiny_model_dir)
    inject(p, monkeypatch, make_error, above=0)
    with pytest.raises(Exited) as ended:
        p.predict(random_clips([16_000], seed=35))
    assert ended.value.args == (EXIT_DEVICE_BROKEN,)


def test_a_sticky_error_surfacing_in_a_triton_kernel_launch_ends_the_actor(
    tiny_model_dir, monkeypatch, no_exit
):
    """On a GPU the CNN's norms are Triton kernels: an earlier kernel's asynchronous fault surfaces at
    their next launch, worded by Triton's launcher. That process's device is broken: the actor must
    end, not turn this row (and every later one) into an error row."""
    from pipeline.model import kernels

    def launch(*args, **kwargs):
        raise RuntimeError("Triton Error [CUDA]: an illegal memory access was encountered")

    p = predictor(tiny_model_dir)
    monkeypatch.setattr(kernels, "layer_norm_gelu", launch)
    with pytest.raises(Exited) as ended:
        p.predict(random_clips([16_000], seed=38))
    assert ended.value.args == (EXIT_DEVICE_BROKEN,)


def fail_in_the_head(p: EmotionPredictor, monkeypatch, fail) -> None:
    """p's head call (`_classify`, once per model call on every embedding) runs `fail(x)` first; the
    model's forward, which runs the head too, is left alone."""
    head, forward = p.bundle.model.classify, p._forward
    in_forward = []

    def forward_(clips):
        in_forward.append(True)
        try:
            return forward(clips)
        finally:
            in_forward.pop()

    def classify_(x):
        if not in_forward:
            fail(x)
        return head(x)

    monkeypatch.setattr(p, "_forward", forward_)
    monkeypatch.setattr(p.bundle.model, "classify", classify_)


def test_out_of_memory_in_the_head_runs_it_in_halves(tiny_model_dir, monkeypatch, no_exit):
    """The head runs once per call on every embedding; out of memory there (or an asynchronous
    error surfacing there) used to escape the call and end the run."""
    clips = random_clips(LENGTHS[:5], seed=36)
    want = predictor(tiny_model_dir).predict(clips)
    p = predictor(tiny_model_dir)
    sizes: list[int] = []

    def fail(x):
        sizes.append(len(x))
        if len(x) > 2:
            raise RuntimeError(CUBLAS_ALLOC)

    fail_in_the_head(p, monkeypatch, fail)
    assert_same_rows(p.predict(clips), want)
    assert sizes == [5, 2, 3, 1, 2], sizes  # 5 fails; halves 2 and 3; 3 fails; halves 1 and 2


def test_a_sticky_error_surfacing_in_the_head_ends_the_actor(tiny_model_dir, monkeypatch, no_exit):
    p = predictor(tiny_model_dir)

    def fail(x):
        raise accelerator_error(ILLEGAL_ADDRESS, 700)

    fail_in_the_head(p, monkeypatch, fail)
    with pytest.raises(Exited) as ended:
        p.predict(random_clips([16_000], seed=37))
    assert ended.value.args == (EXIT_DEVICE_BROKEN,)


def test_outside_ray_no_gpu_share_is_set(tiny_model_dir):
    assert predictor(tiny_model_dir).memory_fraction is None


TWO_ON_ONE_GPU = """
import json, os, sys
import ray
from pipeline.predictor import EmotionPredictor


class Probe(EmotionPredictor):
    def facts(self):
        return {"fraction": self.memory_fraction, "gpu": ray.get_gpu_ids(), "pid": os.getpid(),
                "runtime": self.runtime}


ray.init(num_cpus=1, num_gpus=1, include_dashboard=False, log_to_driver=False)
Actor = ray.remote(num_cpus=0, num_gpus=0.5)(Probe)
actors = [Actor.remote(source=sys.argv[1], device="cuda", simulate_gpu=True) for _ in range(2)]
print(json.dumps(ray.get([a.facts.remote() for a in actors])))
"""


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a GPU on a machine without one")
def test_two_actors_on_one_gpu_each_keep_half_its_memory(tiny_model_dir, tmp_path):
    """model.gpus_per_actor 0.5: two model actors share one (simulated) GPU, and each caps its
    allocator at the half Ray assigned it (on a real GPU through set_per_process_memory_fraction;
    tests/test_gpu.py-style checks of the cap itself need the device)."""
    import json
    import subprocess
    import sys

    script = tmp_path / "two.py"
    script.write_text(TWO_ON_ONE_GPU)
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run(
        [sys.executable, str(script), str(tiny_model_dir)],
        capture_output=True,
        text=True,
        timeout=300,
        env=env,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    facts = json.loads(r.stdout.strip().splitlines()[-1])
    assert len({f["pid"] for f in facts}) == 2 and all(f["gpu"] == facts[0]["gpu"] for f in facts), facts
    assert [f["fraction"] for f in facts] == [0.5, 0.5], facts
    assert all("simulated gpu" in f["runtime"] for f in facts), facts


# -- on a CUDA device (skipped without one) ---------------------------------------------------------

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")


@pytest.mark.gpu
@needs_gpu
def test_gpu_out_of_memory_on_a_batch_is_split_to_what_fits(tiny_model_dir, caplog):
    """A real out-of-memory: the allocator is capped so that one clip fits and the whole batch does
    not; every row gets the result it gets alone, and the budget falls."""
    clips = random_clips([20 * 16_000 - 999 * k for k in range(12)], seed=41)
    alone = EmotionPredictor(source=str(tiny_model_dir), device="cuda", dtype="float32", batch_seconds=20.0)
    want = alone.predict(clips)
    p = EmotionPredictor(
        source=str(tiny_model_dir), device="cuda", dtype="float32", batch_seconds=600.0, max_batch_size=64
    )
    torch.cuda.synchronize()
    torch.cuda.empty_cache()
    base = torch.cuda.memory_allocated()
    torch.cuda.reset_peak_memory_stats()
    p.predict(clips[:1])
    one = torch.cuda.max_memory_allocated() - base
    total = torch.cuda.get_device_properties(0).total_memory
    torch.cuda.empty_cache()
    torch.cuda.set_per_process_memory_fraction((base + 3 * one) / total)  # ~3 clips' activations
    try:
        with caplog.at_level(logging.WARNING, logger="pipeline.predictor"):
            got = p.predict(clips)
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
    print(f"\none clip's peak {one / 2**20:.1f} MiB; budget now {p.budget / 16_000:.1f} s (was 600 s)")
    assert all(isinstance(r, mod.RowResult) for r in got), got
    for g, w in zip(got, want, strict=True):  # batched vs alone on a GPU: TF32 convolutions, other kernels
        np.testing.assert_allclose(g.embedding, w.embedding, atol=2e-3)
    assert p.budget < 600 * 16_000
    assert sum("batch budget" in r.getMessage() for r in caplog.records) == 1


@pytest.mark.gpu
@needs_gpu
def test_gpu_errors_as_torch_raises_them():
    """The classes of errors the device really raises: out of memory, and (in a child process, whose
    context it breaks) a device-side assert."""
    import subprocess
    import sys

    try:
        torch.empty(2**62, dtype=torch.uint8, device="cuda")
    except Exception as e:  # noqa: BLE001
        oom = e
    assert classify(oom) is Kind.MEMORY, repr(oom)
    child = (
        "import torch\nfrom pipeline.gpu_errors import classify\n"
        "x = torch.zeros(4, device='cuda')\n"
        "try:\n    x[torch.tensor([40], device='cuda')].sum().item()\n"
        "except Exception as e:\n    print(type(e).__name__, getattr(e, 'error_code', None), classify(e).name)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parent.parent)}
    r = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True, timeout=120, env=env)
    print("\ndevice-side assert:", r.stdout.strip())
    assert r.stdout.strip().endswith("STICKY"), r.stdout + r.stderr[-2000:]


@pytest.mark.gpu
@needs_gpu
def test_gpu_an_actor_on_half_a_gpu_caps_its_allocator_at_half(tiny_model_dir, monkeypatch):
    """What a model actor holding GPU 0.5 sets: its allocator then refuses more than half the
    device, whatever is free."""
    monkeypatch.setattr(mod, "gpu_share", lambda: 0.5)
    p = EmotionPredictor(source=str(tiny_model_dir), device="cuda", dtype="float32")
    total = torch.cuda.get_device_properties(0).total_memory
    try:
        assert p.memory_fraction == 0.5
        with pytest.raises(torch.OutOfMemoryError):
            torch.empty(int(0.6 * total), dtype=torch.uint8, device="cuda")
        x = torch.empty(int(0.4 * total), dtype=torch.uint8, device="cuda")
        del x
    finally:
        torch.cuda.set_per_process_memory_fraction(1.0)
        torch.cuda.empty_cache()


@pytest.mark.parametrize(
    "value,on", [("1", True), ("true", True), ("yes", True), ("0", False), ("false", False), ("off", False)]
)
def test_simulate_gpu_reads_the_usual_words_for_off(monkeypatch, value, on):
    """EMOTION2VEC_SIMULATE_GPU=off (like 0, false, no) leaves the GPU path as it is; "off" turned the
    simulation on, so an actor whose PyTorch cannot use its GPU ran on the CPU instead of ending the
    job with its one line."""
    from pipeline.predictor import SIMULATE_GPU_ENV, simulate_gpu

    monkeypatch.setenv(SIMULATE_GPU_ENV, value)
    assert simulate_gpu() is on
