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


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_forward_with_host_lengths_never_waits_for_the_gpu(tiny_model_dir):
    """With the lengths on the host, a forward queues all its GPU work without one synchronisation
    (torch's sync debug mode turns any into an error), so the host can prepare the next batch."""
    from pipeline.batching import collate
    from pipeline.model import load_bundle

    from .conftest import random_clips

    wav, lengths = collate(random_clips([16_000, 48_000, 7_777], seed=6))
    gpu = load_bundle(tiny_model_dir, device="cuda", dtype=torch.bfloat16).model
    wav = wav.cuda()
    with torch.inference_mode():
        gpu(wav, lengths)  # first call: ALiBi bias, Triton compilation
        torch.cuda.synchronize()
        torch.cuda.set_sync_debug_mode("error")
        try:
            out = gpu(wav, lengths)
        finally:
            torch.cuda.set_sync_debug_mode("default")
    assert out.frames.is_cuda and out.frame_lengths.tolist() == [49, 149, 24]


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gpu_fast_paths_match_plain_pytorch_at_base_size_shapes(dtype):
    """The Triton LayerNorm + GELU and the GEMM convs against PyTorch's own ops on the CNN's real
    shapes ([B, frames, 512]), float32 arithmetic (TF32 off) as the reference."""
    import torch.nn.functional as F

    from pipeline.model import kernels

    g = torch.Generator(device="cuda").manual_seed(0)
    x = (3 * torch.randn(3, 4001, 512, device="cuda", generator=g) + 1).to(dtype)
    w, b = (
        1 + 0.1 * torch.randn(512, device="cuda", generator=g),
        0.1 * torch.randn(512, device="cuda", generator=g),
    )
    w, b = w.to(dtype), b.to(dtype)  # the reference gets the same rounded parameters
    want = F.gelu(F.layer_norm(x.float(), (512,), w.float(), b.float(), 1e-5))
    with torch.inference_mode():
        got = kernels.layer_norm_gelu(x, w, b, 1e-5).float()
    # bfloat16: within one unit in the last place of the float32 reference (2^-7 relative). On an H200,
    # with the affine weights given in bfloat16, the worst element was 0.8 of that (1.664 against 1.6706)
    tol = 1e-5 if dtype == torch.float32 else 2**-7
    assert bool(((got - want).abs() <= want.abs().clamp_min(1e-2) * tol + 1e-6).all())
    cw = 0.05 * torch.randn(512, 512, 3, device="cuda", generator=g)
    wav = torch.randn(2, 16_003, 1, device="cuda", generator=g)
    w0 = 0.3 * torch.randn(512, 1, 10, device="cuda", generator=g)
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        pos = (0.02 * torch.randn(768, 48, 19, device="cuda", generator=g), 16, 9)  # a positional conv
        xd = torch.randn(3, 1201, 768, device="cuda", generator=g).to(dtype)
        for inp, weight, stride, groups, pad in (
            (x, cw, 2, 1, 0),
            (wav.to(dtype), w0, 5, 1, 0),
            (xd, *pos[:2], 1, pos[2]),
        ):
            want = F.conv1d(inp.float().transpose(1, 2), weight, stride=stride, padding=pad, groups=groups)
            want = want.transpose(1, 2)
            with torch.inference_mode():
                got = kernels.conv_time_major(
                    inp, weight.to(dtype), stride=stride, padding=pad, groups=groups
                ).float()
            scale = want.abs().max()
            assert got.shape == want.shape
            assert (got - want).abs().max() <= (1e-5 if dtype == torch.float32 else 2e-2) * scale
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_outputs_do_not_depend_on_the_cuda_paths(tiny_model_dir):
    from pipeline.batching import collate
    from pipeline.model import kernels, load_bundle

    from .conftest import random_clips

    wav, lengths = collate(random_clips([16_000, 48_000, 7_777], seed=7))
    gpu = load_bundle(tiny_model_dir, device="cuda").model
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    try:
        with torch.inference_mode():
            fast = gpu(wav.cuda(), lengths)
            with kernels.use_cuda_paths(**dict.fromkeys(kernels.CUDA_PATHS, False)):
                plain = gpu(wav.cuda(), lengths)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32
    torch.testing.assert_close(fast.frames, plain.frames, atol=1e-4, rtol=0)
    torch.testing.assert_close(fast.scores, plain.scores, atol=1e-5, rtol=0)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gpu_results_come_back_through_page_locked_copies_and_a_blocking_event():
    """The model actor's copy back (predictor.CopyBack): queued behind the work that made the
    tensors, waited for on an event; the values, dtypes and shapes of `.cpu()`."""
    import numpy as np

    from pipeline.predictor import CopyBack

    frames = torch.randn(3, 500, 64, device="cuda").to(torch.float16)
    emb = torch.randn(3, 64, device="cuda") * 2  # still being computed when the copy is queued
    back = CopyBack(frames, None, emb)
    got_frames, nothing, got_emb = back.wait()
    assert nothing is None and got_frames.dtype == np.float16 and got_emb.shape == (3, 64)
    np.testing.assert_array_equal(got_frames, frames.cpu().numpy())
    np.testing.assert_array_equal(got_emb, emb.cpu().numpy())
