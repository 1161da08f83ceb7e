"""The model on a CUDA GPU against float32 on the CPU (skipped without a GPU; bench/gpu_check.sh runs
them on GPU machines)."""

import pytest
import torch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tol", [("float32", 1e-3), ("bfloat16", 0.05), ("float16", 0.02)])
def test_gpu_matches_cpu_float32(spread_model_dir, dtype, tol):
    """The model stage as the job runs it on a GPU (padded batches, page-locked buffers, float32 without
    TF32) against float32 on the CPU, on a head whose scores spread: frames, embeddings and scores
    within `tol`, the same labels wherever the CPU's top two classes are clearly apart."""
    import numpy as np

    from pipeline.predictor import EmotionPredictor

    from .conftest import random_clips

    clips = random_clips([16_000, 48_000, 7_777, 30_000, 12_345, 64_000], seed=4)
    kw = {"source": str(spread_model_dir), "frames": True}
    ref = EmotionPredictor(device="cpu", dtype="float32", **kw).predict(clips)
    got = EmotionPredictor(device="cuda", dtype=dtype, **kw).predict(clips)
    spread = np.stack([r.scores for r in ref])
    assert spread.max() - spread.min() > 0.5, "the head's scores do not spread"
    for a, b in zip(ref, got, strict=True):
        scale = np.abs(a.frames.astype(np.float32)).max()
        assert np.abs(b.frames.astype(np.float32) - a.frames.astype(np.float32)).max() <= tol * scale
        assert np.abs(b.embedding - a.embedding).max() <= tol * np.abs(a.embedding).max()
        assert np.abs(b.scores - a.scores).max() <= tol
        top2 = np.sort(a.scores)[-2:]
        if top2[1] - top2[0] > 2 * tol:
            assert np.argmax(b.scores) == np.argmax(a.scores)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_gpu_padded_batches_run_on_the_memory_efficient_attention_kernel(tiny_model_dir, dtype):
    """With only the memory-efficient SDPA backend allowed, a padded half-precision batch (ALiBi +
    key-padding mask) must run, and still match one-at-a-time float32 on the CPU."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    from pipeline.batching import collate
    from pipeline.model import load_bundle

    from .conftest import random_clips

    clips = random_clips([16_000, 48_000, 7_777], seed=5)
    wav, lengths = collate(clips)
    ref = load_bundle(tiny_model_dir).model
    gpu = load_bundle(tiny_model_dir, device="cuda", dtype=dtype).model
    with torch.inference_mode(), sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION]):
        b = gpu(wav.cuda(), lengths.cuda())
    for i, clip in enumerate(clips):
        with torch.inference_mode():
            a = ref(torch.from_numpy(clip)[None])
        T = a.frames.shape[1]
        scale = a.frames.abs().max()
        assert (b.frames[i, :T].float().cpu() - a.frames[0]).abs().max() <= 0.1 * scale
