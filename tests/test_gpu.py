"""The model on a CUDA GPU against float32 on the CPU (skipped without a GPU; bench/gpu_check.sh runs
them on GPU machines)."""

import pytest
import torch


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-3), (torch.bfloat16, 0.1), (torch.float16, 0.02)])
def test_gpu_matches_cpu_float32(tiny_model_dir, dtype, tol):
    from pipeline.batching import collate
    from pipeline.model import load_bundle

    from .conftest import random_clips

    clips = random_clips([16_000, 48_000, 7_777], seed=4)
    wav, lengths = collate(clips)
    ref = load_bundle(tiny_model_dir).model
    gpu = load_bundle(tiny_model_dir, device="cuda", dtype=dtype).model
    with torch.inference_mode():
        a = ref(wav, lengths)
        b = gpu(wav.cuda(), lengths.cuda())
    scale = a.frames.abs().max()
    assert (b.frames.float().cpu() - a.frames).abs().max() <= tol * scale
    assert (b.scores.cpu() - a.scores).abs().max() <= tol


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
