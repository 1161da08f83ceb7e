"""The model stage outside Ray: windows of long clips, frames only when written, dtype choice."""

import warnings

import numpy as np
import pytest
import torch

from pipeline.audio import chunk_bounds
from pipeline.model import load_bundle
from pipeline.predictor import EmotionPredictor, cpu_has_native, resolve_dtype

from .conftest import random_clips


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
    bounds = chunk_bounds(len(clip), 16_000)
    with torch.inference_mode():
        frames = torch.cat([model(torch.from_numpy(clip[s:e])[None]).frames[0] for s, e in bounds])
        _, scores = model.classify(frames.mean(0, keepdim=True))
    assert (
        len(bounds) == 4
        and a[0].num_frames == b[0].num_frames == frames.shape[0] == (len(clip) - 400) // 320 + 1
    )
    np.testing.assert_allclose(a[0].frames, frames.numpy(), atol=1e-5)
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
    if cpu_has_native(want):
        assert got == want and not caught
    else:
        assert got == torch.float32
        assert any(f"model.dtype {dtype}" in str(w.message) and "float32" in str(w.message) for w in caught)
    assert resolve_dtype("auto", "cpu") == torch.float32 and resolve_dtype("auto", "cuda") == torch.bfloat16
    assert resolve_dtype(dtype, "cuda") == want  # GPUs run what they are asked
