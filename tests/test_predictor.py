"""The model stage outside Ray: windows of long clips, frames only when written, dtype choice."""

import warnings

import numpy as np
import pytest
import torch

from pipeline.model import load_bundle
from pipeline.predictor import EmotionPredictor, cpu_has_native, resolve_dtype

from .conftest import cpu_runs_natively, random_clips


def predictor(model_dir, **kw):
    return EmotionPredictor(source=str(model_dir), device="cpu", dtype="float32", **kw)


def test_windowed_clip_reassembles_to_the_mean_of_all_window_frames(tiny_model_dir):
    import ray

    was_up = ray.is_initialized()
    clip, short = random_clips([3 * 16_000 + 777, 9_000], seed=12)
    with_frames = predictor(tiny_model_dir, frames=True, max_chunk_s=1.0, batch_seconds=2.0)
    without = predictor(tiny_model_dir, frames=False, max_chunk_s=1.0, batch_seconds=2.0)
    assert ray.is_initialized() == was_up, "the predictor must not start Ray outside a Ray worker"
    a, b = with_frames.predict([clip, None, short]), without.predict([clip, None, short])
    assert a[1] is None and b[1] is None

    # independently: each window through the model, frames concatenated, their mean pooled
    model = load_bundle(tiny_model_dir).model
    # 1 s windows (50 frames of 320 samples) reach 80 samples past the next start, so their frames sit on
    # the whole clip's 20 ms grid; the last one runs to the end of the 48777 samples
    bounds = [(0, 16_080), (16_000, 32_080), (32_000, 48_080), (48_000, 48_777)]
    with torch.inference_mode():
        frames = torch.cat([model(torch.from_numpy(clip[s:e])[None]).frames[0] for s, e in bounds])
        _, scores = model.classify(frames.mean(0, keepdim=True))
    assert (
        len(bounds) == 4
        and a[0].num_frames == b[0].num_frames == frames.shape[0] == (len(clip) - 400) // 320 + 1
    )
    # frames come back in the output's float16 (converted on the device): within its rounding
    assert a[0].frames.dtype == np.float16
    np.testing.assert_allclose(a[0].frames.astype(np.float32), frames.numpy(), atol=1e-5, rtol=2**-11)
    assert b[0].frames is None  # not copied out when they are not written
    for r in (a[0], b[0]):
        np.testing.assert_allclose(r.embedding, frames.mean(0).numpy(), atol=1e-5)
        np.testing.assert_allclose(r.scores, scores[0].numpy(), atol=1e-6)
        assert len(r.windows) == len(bounds) and r.window_scores.shape == (len(bounds), 9)
    assert a[2].num_frames == b[2].num_frames == (9_000 - 400) // 320 + 1 and len(b[2].windows) == 1


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_on_a_cpu_without_hardware_for_it_runs_float32(dtype):
    want = getattr(torch, dtype)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        got = resolve_dtype(dtype, "cpu")
    if cpu_runs_natively(want):
        assert got == want and not caught
    else:
        assert got == torch.float32
        assert any(f"model.dtype {dtype}" in str(w.message) and "float32" in str(w.message) for w in caught)
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype(dtype, "cuda") == want  # GPUs run what they are asked


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_cpu_has_native_follows_the_cpu_flags(dtype):
    assert cpu_has_native(dtype) == cpu_runs_natively(dtype)


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
def test_half_precision_stage_output_matches_the_schema_and_float32(tiny_model_dir, monkeypatch, dtype):
    """The GPU's default path (a half-precision model) through the whole stage, on the CPU: the
    hardware check is forced so the model really runs in `dtype` here (slowly, the model is tiny)."""
    import pyarrow as pa

    from pipeline import predictor as mod
    from pipeline.schema import output_schema
    from pipeline.writer import conform

    monkeypatch.setattr(mod, "cpu_has_native", lambda d: True)
    clips = random_clips([16_000, 30_000, 7_777], seed=13)
    batch = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "path": ["a.wav", "b.wav", "c.wav", "d.wav"],
            "error": [None, None, "decode: AudioError: d.wav: too short", None],
            "duration_s": pa.array([1.0, 1.875, None, 0.486], pa.float32()),
            "sample_rate": pa.array([16_000, 16_000, None, 16_000], pa.int32()),
            "channels": pa.array([1, 1, None, 1], pa.int32()),
            "waveform": pa.array([clips[0], clips[1], None, clips[2]], pa.large_list(pa.float32())),
        }
    )
    half = EmotionPredictor(source=str(tiny_model_dir), device="cpu", dtype=dtype, frames=True)
    ref = predictor(tiny_model_dir, frames=True)
    out, want = half(batch), ref(batch)

    assert half.bundle.model.dtype == getattr(torch, dtype)
    schema = output_schema(48, 9, True, pa.schema([]))
    table = conform(out, schema)  # what the writer does: must not fail
    assert table["error"].to_pylist()[2].startswith("decode:") and table["embedding"][2].as_py() is None
    assert set(out["_model_runtime"].to_pylist()) == {f"cpu {dtype}", None}
    for i in (0, 1, 3):
        emb, emb32 = (np.array(t["embedding"][i].as_py()) for t in (out, want))
        frames, frames32 = (np.array(t["frames"][i].as_py(), np.float32) for t in (out, want))
        assert frames.shape == frames32.shape == (out["num_frames"][i].as_py(), 48)
        scale = np.abs(frames32).max()
        assert np.abs(frames - frames32).max() <= 0.15 * scale and np.abs(emb - emb32).max() <= 0.15 * scale
        assert np.abs(np.array(out["scores"][i].as_py()) - np.array(want["scores"][i].as_py())).max() <= 0.15


def test_suspect_rows_run_alone_in_a_separate_process(tiny_model_dir, monkeypatch):
    """Rows that were in flight when a model worker died: each runs alone in a child process. The
    one that kills its process becomes a WorkerCrashed error row; the others get the results the
    actor would have given; the actor lives on."""
    import pyarrow as pa

    clips = random_clips([16_000, 20_000, 12_000, 9_000], seed=21)
    batch = pa.table(
        {
            "id": ["a", "b", "c", "d"],
            "path": ["a.wav", "b.wav", "poison.wav", "d.wav"],
            "error": [None, None, None, None],
            "waveform": pa.array(clips, pa.large_list(pa.float32())),
        }
    )
    monkeypatch.setenv("E2V_INJECT_CRASH", "model:poison.wav")  # the children inherit it
    guarded = predictor(tiny_model_dir, suspects=["b", "c", "d"])
    out = guarded(batch)
    monkeypatch.delenv("E2V_INJECT_CRASH")
    want = predictor(tiny_model_dir)(batch.filter(pa.array([True, True, False, True])))

    errors = out["error"].to_pylist()
    assert errors[:2] == [None, None] and errors[3] is None
    assert errors[2].startswith("model: WorkerCrashed: ") and "poison.wav" in errors[2]
    assert out["embedding"][2].as_py() is None
    for i, j in ((0, 0), (1, 1), (3, 2)):  # a in the actor; b and d each alone in a child
        np.testing.assert_allclose(out["embedding"][i].as_py(), want["embedding"][j].as_py(), atol=1e-5)
        assert out["label"][i].as_py() == want["label"][j].as_py()


def test_suspect_rows_run_in_the_actor_when_no_separate_process_starts(tiny_model_dir, monkeypatch):
    """A separate process that cannot start (no room for a second model beside the actor's, say)
    used to end the run with exit 1: the suspect rows now run in the actor, one at a time, and get
    the results they get anywhere."""
    import pyarrow as pa

    clips = random_clips([16_000, 20_000, 12_000], seed=22)
    batch = pa.table(
        {
            "id": ["a", "b", "c"],
            "path": ["a.wav", "b.wav", "c.wav"],
            "error": [None, None, None],
            "waveform": pa.array(clips, pa.large_list(pa.float32())),
        }
    )
    monkeypatch.setenv("E2V_INJECT_CRASH", "isolate:start")  # every child dies as it starts
    out = predictor(tiny_model_dir, suspects=["b", "c"])(batch)
    monkeypatch.delenv("E2V_INJECT_CRASH")
    want = predictor(tiny_model_dir)(batch)
    assert out["id"].to_pylist() == ["a", "b", "c"] and out["error"].to_pylist() == [None, None, None]
    for i in range(3):
        np.testing.assert_allclose(out["embedding"][i].as_py(), want["embedding"][i].as_py(), atol=1e-5)


@pytest.mark.skipif(torch.cuda.is_available(), reason="simulates a GPU on a machine without one")
def test_a_simulated_gpu_runs_the_model_on_the_cpu_and_says_so(tiny_model_dir, capsys):
    """EMOTION2VEC_SIMULATE_GPU: an actor placed as on a GPU, with no CUDA device, runs on its CPU in
    the GPU's dtype where this CPU has it (else float32) and labels what it ran; without the flag the
    GPU placement fails as before."""
    sim = EmotionPredictor(source=str(tiny_model_dir), device="cuda", simulate_gpu=True)
    dtype = "bfloat16" if cpu_has_native(torch.bfloat16) else "float32"
    assert (sim.device, sim.runtime) == ("cpu", f"cpu (simulated gpu) {dtype}")
    err = capsys.readouterr().err
    assert err.count("EMOTION2VEC_SIMULATE_GPU=1: this model actor holds a Ray GPU") == 1, err
    clip = random_clips([16_000], seed=21)[0]
    got = sim.predict([clip])[0]
    ref = EmotionPredictor(source=str(tiny_model_dir), device="cpu", dtype=dtype).predict([clip])[0]
    np.testing.assert_array_equal(got.embedding, ref.embedding)  # the same CPU computation
    with pytest.raises((RuntimeError, AssertionError, AttributeError)):
        EmotionPredictor(source=str(tiny_model_dir), device="cuda")  # no CUDA, no flag: not hidden


def _flags() -> tuple[bool, bool]:
    return torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_float32_on_a_gpu_runs_without_tf32_and_leaves_the_process_setting_alone(tiny_model_dir, dtype):
    """On a GPU, float32 means float32: cuDNN's convolutions (TF32 by PyTorch's default) and cuBLAS's
    matmuls run without TF32 inside the model's calls, and the process's own setting is back after
    them. Checked on a simulated GPU, which takes the GPU's decisions."""
    p = EmotionPredictor(source=str(tiny_model_dir), device="cuda", dtype=dtype, simulate_gpu=True)
    seen: list[tuple[bool, bool]] = []
    p.bundle.model.register_forward_pre_hook(lambda *_: seen.append(_flags()))
    p.bundle.model.proj.register_forward_pre_hook(lambda *_: seen.append(_flags()))
    before = _flags()
    torch.backends.cuda.matmul.allow_tf32 = True  # as a user's process may have it
    try:
        p.predict(random_clips([16_000, 8_000], seed=4))
        after = _flags()
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before
    assert after == (before[0], True)
    assert seen, "the model did not run"
    if dtype == "float32":
        assert p.decisions()["exact_float32"] and set(seen) == {(False, False)}, seen
    else:  # half precision: the flags do not apply and are left as they are
        assert set(seen) == {(before[0], True)}, seen


def test_a_simulated_gpu_takes_the_gpu_decisions(tiny_model_dir):
    """Only the tensors' device differs from a real GPU: the 600 s budget, 256 clips, page-locked
    buffers (the decision; without a CUDA device there are no pages to lock)."""
    gpu = EmotionPredictor(source=str(tiny_model_dir), device="cuda", simulate_gpu=True).decisions()
    cpu = EmotionPredictor(source=str(tiny_model_dir), device="cpu").decisions()
    assert gpu["target"] == "cuda" and gpu["device"] == "cpu"
    assert (gpu["batch_seconds"], gpu["max_batch_size"], gpu["pinned_buffers"]) == (600.0, 256, True)
    assert (cpu["batch_seconds"], cpu["max_batch_size"], cpu["pinned_buffers"]) == (16.0, 32, False)


def test_rows_per_call_slices_a_block_and_concurrent_calls_agree_with_one_at_a_time(tiny_model_dir):
    """A block cut in slices of model.rows_per_call rows, and two calls at once in one actor (as a
    GPU actor runs them), give what one call at a time gives, row for row."""
    import threading

    import pyarrow as pa

    clips = random_clips([4_000 + 1_700 * i for i in range(9)], seed=8)
    block = pa.table(
        {
            "id": [f"r{i}" for i in range(9)],
            "path": [f"r{i}.wav" for i in range(9)],
            "error": pa.array([None] * 9, pa.string()),
            "waveform": pa.array([c.tolist() for c in clips], pa.large_list(pa.float32())),
        }
    )
    whole = predictor(tiny_model_dir)(block)
    sliced = predictor(tiny_model_dir, rows_per_call=4)(block)
    assert sliced.num_rows == 9 and sliced.column("id").to_pylist() == whole.column("id").to_pylist()
    np.testing.assert_allclose(
        np.stack(sliced["embedding"].to_pylist()), np.stack(whole["embedding"].to_pylist()), atol=1e-5
    )
    shared = predictor(tiny_model_dir, frames=True)
    one = shared(block)
    got: dict[int, pa.Table] = {}
    threads = [threading.Thread(target=lambda k=k: got.__setitem__(k, shared(block))) for k in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for k in range(2):
        assert got[k]["frames"].to_pylist() == one["frames"].to_pylist()
        assert got[k]["embedding"].to_pylist() == one["embedding"].to_pylist()


def test_a_row_whose_scores_are_not_finite_is_an_error_row_not_class_0(tiny_model_dir):
    """NaN scores (a model that overflowed on a row) have no argmax: the row must be an error row
    saying so, never labelled with the first class; the other rows of the call keep their results."""
    import pyarrow as pa

    clips = random_clips([9_000, 12_000], seed=5)
    batch = pa.table(
        {
            "id": ["a", "b"],
            "path": ["a.wav", "b.wav"],
            "error": pa.array([None, None], pa.string()),
            "waveform": pa.array([c.tolist() for c in clips], pa.large_list(pa.float32())),
        }
    )
    model = predictor(tiny_model_dir)
    want = model(batch)
    head = model._classify

    def nan_for_b(embeddings):  # one row per clip (each fits one window): b's scores are NaN
        scores = head(embeddings).copy()
        scores[1] = np.nan
        return scores

    model._classify = nan_for_b
    out = model(batch)
    assert out["error"][0].as_py() is None and out["label"][0].as_py() == want["label"][0].as_py()
    error = out["error"][1].as_py()
    assert error is not None and "not finite" in error, error
    assert out["label"][1].as_py() is None and out["scores"][1].as_py() is None
    assert out["embedding"][1].as_py() is None and out["segments"][1].as_py() is None


def test_windows_are_max_chunk_s_long_when_the_seconds_times_the_rate_is_not_exact_in_floats(tiny_model_dir):
    """4.02 s is 64320 samples (201 frames), but 4.02 * 16000 is 64319.99999999999 in floats:
    truncated, the windows came out one frame short (4.00 s) and the row's segments and numbers with
    them. A clip of two such windows and 1000 samples runs in windows starting at 0, 4.02, 8.04 s."""
    (clip,) = random_clips([2 * 64_320 + 1_000], seed=31)
    (row,) = predictor(tiny_model_dir, max_chunk_s=4.02).predict([clip])
    assert [(round(a * 16_000), round(b * 16_000)) for a, b in row.windows] == [
        (0, 64_320),
        (64_320, 128_640),
        (128_640, 129_640),
    ]


def test_a_non_finite_row_error_keeps_the_stage_type_message_format(tiny_model_dir):
    """The `error` column's contract (README, Output) is `stage: ExceptionType: message`; the row whose
    output is not finite said `model: the model's output ...`, with no type to group errors by."""
    import re

    import pyarrow as pa

    (clip,) = random_clips([9_000], seed=6)
    batch = pa.table(
        {
            "id": ["a"],
            "path": ["a.wav"],
            "error": pa.array([None], pa.string()),
            "waveform": pa.array([clip.tolist()], pa.large_list(pa.float32())),
        }
    )
    model = predictor(tiny_model_dir)
    model._classify = lambda embeddings: np.full((len(embeddings), 9), np.nan, np.float32)
    error = model(batch)["error"][0].as_py()
    assert re.fullmatch(r"model: [A-Za-z_]\w*: .*not finite.*", error), error
