"""The encoder's fast paths (pipeline/model/kernels.py) against plain PyTorch spellings of the same
operations, with the oneDNN linears on and off, and the ALiBi cache against a fresh model."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import kernels, load_bundle

from .conftest import random_clips

onednn = pytest.mark.skipif(
    not kernels.onednn_linear_available(torch.float32), reason="no oneDNN float32 linear in this build"
)


def _rand(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


@pytest.mark.parametrize("fast", [True, False])
@pytest.mark.parametrize("shape", [(7, 24), (2, 13, 24)])
def test_linear_gelu_and_residual_match_plain_pytorch(fast, shape):
    x, w, b = _rand(*shape, seed=1), _rand(40, 24, seed=2) / 5, _rand(40, seed=3)
    r = _rand(*shape[:-1], 40, seed=4)
    ref = x @ w.t() + b
    with kernels.use_onednn(fast), torch.inference_mode():
        torch.testing.assert_close(kernels.linear(x, w, b), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kernels.linear(x, w, None), x @ w.t(), atol=1e-5, rtol=1e-5)
        gelu_ref = 0.5 * ref * (1 + torch.erf(ref / 2**0.5))  # exact GELU, written out
        torch.testing.assert_close(kernels.linear(x, w, b, gelu=True), gelu_ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kernels.linear_add(x, w, b, r), ref + r, atol=1e-5, rtol=1e-5)


@onednn
def test_the_fused_oneDNN_op_is_the_one_that_runs():
    """Guard for the test above: with oneDNN on, the fast path really takes the fused op."""
    x, w, b = _rand(5, 24), _rand(16, 24), _rand(16)
    with torch.inference_mode(), torch.profiler.profile(acc_events=True) as prof:
        kernels.linear(x, w, b, gelu=True)
    assert any("_linear_pointwise" in e.name for e in prof.events())
    with torch.inference_mode(), kernels.use_onednn(False), torch.profiler.profile(acc_events=True) as prof:
        kernels.linear(x, w, b, gelu=True)
    assert not any("_linear_pointwise" in e.name for e in prof.events())


def test_autograd_takes_the_differentiable_path():
    x = _rand(6, 24).requires_grad_()
    w, b, r = _rand(16, 24), _rand(16), _rand(6, 16)
    kernels.linear_add(kernels.linear(x, w, b, gelu=True), _rand(16, 16), None, r).sum().backward()
    assert x.grad is not None and torch.isfinite(x.grad).all()


@pytest.mark.parametrize(
    "c_in,c_out,k,stride,padding,groups,T",
    [
        (1, 8, 10, 5, 0, 1, 400),
        (8, 8, 3, 2, 0, 1, 79),
        (8, 8, 2, 2, 0, 1, 20),
        (16, 16, 5, 1, 2, 4, 33),
        (16, 16, 4, 1, 2, 4, 9),
    ],
)
def test_time_major_conv_matches_conv1d(c_in, c_out, k, stride, padding, groups, T):
    x = _rand(3, T, c_in, seed=5)  # [B, T, C]
    w, b = _rand(c_out, c_in // groups, k, seed=6), _rand(c_out, seed=7)
    y = kernels.conv_time_major(x, w, b, stride=stride, padding=padding, groups=groups)
    ref = F.conv1d(x.transpose(1, 2), w, b, stride=stride, padding=padding, groups=groups).transpose(1, 2)
    assert y.shape == ref.shape and y.is_contiguous()
    torch.testing.assert_close(y, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("fast", [True, False])
def test_model_outputs_do_not_depend_on_the_linear_kernel(tiny_model_dir, fast):
    clip = torch.from_numpy(random_clips([23_456], seed=8)[0])[None]
    model = load_bundle(tiny_model_dir).model
    with torch.inference_mode():
        with kernels.use_onednn(fast):
            a = model(clip)
        with kernels.use_onednn(not fast):
            b = model(clip)
    torch.testing.assert_close(a.frames, b.frames, atol=1e-5, rtol=0)
    torch.testing.assert_close(a.scores, b.scores, atol=1e-6, rtol=0)


def test_alibi_cache_of_a_longer_clip_gives_a_shorter_clip_its_own_bias(tiny_model_dir):
    """The bias for a short clip is a view of the cached bias of a longer one; a fresh model (no
    cache) must give the same outputs."""
    long, short = (torch.from_numpy(c)[None] for c in random_clips([64_000, 9_999], seed=9))
    warm, fresh = load_bundle(tiny_model_dir).model, load_bundle(tiny_model_dir).model
    with torch.inference_mode():
        warm(long)
        a = warm(short)
        b = fresh(short)
    assert warm._alibi_cache[1].shape[-1] > a.frames.shape[1] + warm.cfg.num_extra_tokens
    torch.testing.assert_close(a.frames, b.frames, atol=1e-6, rtol=0)


def test_attention_masks_have_rows_aligned_for_the_cuda_kernels(tiny_model_dir):
    """CUDA's memory-efficient attention copies (pads) any additive mask whose rows do not start
    on multiples of 16 elements, in every block; the model lays its masks out aligned."""
    model = load_bundle(tiny_model_dir).model
    with torch.inference_mode():
        for T in (37, 49, 250):
            bias = model._alibi(T, torch.float32, torch.device("cpu"))
            E = model.cfg.num_extra_tokens
            assert bias.shape[-2:] == (T + E, T + E)
            assert all(s % 16 == 0 for s in bias.stride()[:-1]) and bias.stride(-1) == 1
