"""The encoder's fast paths (pipeline/model/kernels.py) against plain PyTorch spellings of the same
operations, with the oneDNN linears on and off, and the ALiBi cache against a fresh model."""

import pytest
import torch
import torch.nn.functional as F

from pipeline.model import kernels, load_bundle

from .conftest import random_clips


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


def _fused_ran(fn) -> tuple[object, bool]:
    with torch.inference_mode(), torch.profiler.profile(acc_events=True) as prof:
        out = fn()
    return out, any("_linear_pointwise" in e.name for e in prof.events())


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_fused_linears_forced_on_and_off_against_plain_linear(monkeypatch, dtype):
    """The probe (`onednn_linear_available`) decides whether the fused op runs, so a test gated on
    it proves nothing about it. Here the probe is bypassed. Forced off, the plain path runs; forced
    on, the fused op runs and must match `F.linear`, or it fails outright, which is the one case in
    which the probe may say no."""
    x, w, b, r = _rand(5, 24, seed=11), _rand(16, 24, seed=12) / 5, _rand(16, seed=13), _rand(5, 16, seed=14)
    xd, wd, bd, rd = (t.to(dtype) for t in (x, w, b, r))
    ref = F.linear(xd.float(), wd.float(), bd.float())  # the rounded inputs, in float32
    tol = {"atol": 1e-5, "rtol": 1e-5} if dtype == torch.float32 else {"atol": 5e-2, "rtol": 2e-2}

    def both():
        return kernels.linear(xd, wd, bd, gelu=True), kernels.linear_add(xd, wd, bd, rd)

    with kernels.use_onednn(False):
        (gelu, add), fused = _fused_ran(both)
    assert not fused
    torch.testing.assert_close(gelu.float(), F.gelu(ref), **tol)
    torch.testing.assert_close(add.float(), ref + rd.float(), **tol)

    with monkeypatch.context() as m, kernels.use_onednn(True):
        m.setattr(kernels, "onednn_linear_available", lambda d: True)
        try:
            (gelu, add), fused = _fused_ran(both)
        except RuntimeError:  # no oneDNN kernel for dtype on this CPU / in this build
            fused = None
    if fused is not None:
        assert fused and gelu.dtype == add.dtype == dtype
        torch.testing.assert_close(gelu.float(), F.gelu(ref), **tol)
        torch.testing.assert_close(add.float(), ref + rd.float(), **tol)
    assert kernels.onednn_linear_available(dtype) == (fused is not None)


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


@pytest.mark.parametrize("slow", ["fused", "plain"])
def test_linear_kernel_is_chosen_by_measuring(monkeypatch, slow):
    """The probe times both spellings of fc1 + GELU and keeps the faster: make one of them slow (a real
    sleep inside it) and the other must be chosen; the answer is kept per dtype."""
    import time

    if not kernels.onednn_linear_available(torch.float32):
        pytest.skip("no oneDNN fused linear in this build: nothing to choose")
    real = getattr(kernels, f"_{slow}")

    def slowed(*args):
        time.sleep(0.05)
        return real(*args)

    kernels.onednn_linear_faster.cache_clear()
    try:
        # a small probe: the real work takes microseconds, so the sleep decides even on a loaded box
        monkeypatch.setattr(kernels, "PROBE_SHAPE", (16, 32, 64))
        monkeypatch.setattr(kernels, f"_{slow}", slowed)
        assert kernels.onednn_linear_faster(torch.float32) == (slow == "plain")
        monkeypatch.setattr(kernels, f"_{slow}", real)
        assert kernels.onednn_linear_faster(torch.float32) == (slow == "plain")  # measured once
        x, w, b = _rand(3, 24), _rand(8, 24), _rand(8)
        with kernels.use_onednn(None), torch.inference_mode():
            _, fused = _fused_ran(lambda: kernels.linear(x, w, b, gelu=True))
        assert fused == (slow == "plain")
    finally:
        kernels.onednn_linear_faster.cache_clear()


def test_conv_weight_layout_is_kept_until_the_weight_changes():
    """The channels-last copy of a conv weight is made once; an in-place change of the weight (a
    loaded state dict, a fine-tuning step) must not leave the old copy in use."""
    x, w = _rand(2, 50, 8, seed=21), _rand(6, 8, 3, seed=22)
    ref = F.conv1d(x.transpose(1, 2), w, stride=2).transpose(1, 2)
    with torch.inference_mode():
        torch.testing.assert_close(kernels.conv_time_major(x, w, stride=2), ref, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(kernels.conv_time_major(x, w, stride=2), ref, atol=1e-5, rtol=1e-5)
    with torch.no_grad():
        w.mul_(-3)
    with torch.inference_mode():
        torch.testing.assert_close(kernels.conv_time_major(x, w, stride=2), -3 * ref, atol=1e-4, rtol=1e-5)


@pytest.mark.parametrize("shape", [(3, 700, 512), (2, 60, 768)])
def test_bfloat16_layer_norm_is_float32_arithmetic_rounded_once(shape):
    """A bfloat16 input goes to PyTorch's bfloat16 kernel (no float32 copy): its result must be the
    float32 layer norm of the same values rounded to bfloat16, to within one rounding step."""
    from pipeline.model.components import layer_norm_fp32

    x = (3 * _rand(*shape, seed=31) + 1).bfloat16()
    w, b = (1 + 0.1 * _rand(shape[-1], seed=32)).bfloat16(), (0.1 * _rand(shape[-1], seed=33)).bfloat16()
    got = layer_norm_fp32(x, (shape[-1],), w, b, 1e-5)
    want = F.layer_norm(x.float(), (shape[-1],), w.float(), b.float(), 1e-5)
    assert got.dtype == torch.bfloat16
    step = want.abs().clamp_min(1e-2) * 2**-7  # one bfloat16 rounding step (8 significant bits)
    assert bool(((got.float() - want).abs() <= step).all())
    plain = F.layer_norm(x.float(), (shape[-1],), eps=1e-5)  # no affine, as the positional convs use it
    got = layer_norm_fp32(x, (shape[-1],), None, None, 1e-5).float()
    assert bool(((got - plain).abs() <= plain.abs().clamp_min(1e-2) * 2**-7).all())


# -- the CUDA paths, exercised on the CPU -------------------------------------------------------


TRITON_CASES = [  # (shape, dtype, affine, gelu)
    ((37, 512), torch.float32, True, True),  # the CNN: rows not a multiple of the block
    ((2, 13, 768), torch.float32, False, True),  # the positional convs: D not a power of two
    ((3, 50, 512), torch.bfloat16, True, True),
    ((4, 9, 48), torch.float16, True, False),  # the transformer's norms
]


def _ln_inputs(shape, dtype, affine, seed):
    C = shape[-1]
    x = (3 * _rand(2 * shape[0], *shape[1:], seed=seed) + 1).to(dtype)
    w = (1 + 0.1 * _rand(C, seed=seed + 1)).to(dtype) if affine else None
    b = (0.1 * _rand(C, seed=seed + 2)).to(dtype) if affine else None
    return x, w, b


@pytest.fixture(scope="module")
def triton_interpreted(tmp_path_factory):
    """The Triton kernels run by Triton's interpreter on CPU tensors, in a child process:
    TRITON_INTERPRET must be set before triton is first imported. -> {case: (contiguous, strided)}."""
    import os
    import subprocess
    import sys
    from pathlib import Path

    pytest.importorskip("triton")
    out = tmp_path_factory.mktemp("triton") / "out.pt"
    code = f"""
import torch
from pipeline.model import triton_kernels as tk
from tests.test_kernels import TRITON_CASES, _ln_inputs
res = {{}}
for i, (shape, dtype, affine, gelu) in enumerate(TRITON_CASES):
    x, w, b = _ln_inputs(shape, dtype, affine, seed=40 + 10 * i)
    res[i] = (tk.layer_norm_gelu(x[: shape[0]], w, b, 1e-5, gelu), tk.layer_norm_gelu(x[::2], w, b, 1e-5, gelu))
torch.save(res, {str(out)!r})
"""
    root = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TRITON_INTERPRET": "1", "PYTHONPATH": str(root)}
    subprocess.run([sys.executable, "-c", code], check=True, env=env, cwd=root, timeout=300)
    return torch.load(out)


@pytest.mark.parametrize("case", range(len(TRITON_CASES)))
def test_triton_layer_norm_gelu_matches_a_float64_reference(triton_interpreted, case):
    """Against the float64 layer norm (+ exact GELU) of the same values: float32 to ~1e-5 relative,
    half precision to one step of the format; on a contiguous and on a strided (every other row) input."""
    shape, dtype, affine, gelu = TRITON_CASES[case]
    x, w, b = _ln_inputs(shape, dtype, affine, seed=40 + 10 * case)
    # half precision: one step of the format (the interpreter truncates where a GPU rounds to nearest)
    step = 1e-5 if dtype == torch.float32 else 2 ** -(7 if dtype == torch.bfloat16 else 10)
    for inp, got in zip((x[: shape[0]], x[::2]), triton_interpreted[case], strict=True):
        C = shape[-1]
        want = F.layer_norm(
            inp.double(), (C,), None if w is None else w.double(), None if b is None else b.double()
        )
        if gelu:
            want = 0.5 * want * (1 + torch.erf(want / 2**0.5))
        assert got.shape == shape and got.dtype == dtype and bool(torch.isfinite(got).all())
        assert bool(((got.double() - want).abs() <= want.abs().clamp_min(1e-2) * step + 1e-6).all())


@pytest.mark.parametrize(
    "c_in,c_out,k,stride,T",
    [
        (1, 16, 10, 5, 400),  # the first CNN layer: the waveform, K padded to 16
        (16, 16, 3, 2, 79),  # two GEMMs: taps 0-1 and tap 2
        (16, 16, 2, 2, 21),  # one GEMM on a view, an odd frame left over
        (8, 8, 3, 2, 80),
        (3, 8, 4, 3, 50),  # narrow and k > stride: unfolded
    ],
)
def test_gemm_conv_matches_conv1d(c_in, c_out, k, stride, T):
    """The CUDA path of `conv_time_major` (unpadded, ungrouped) on the CPU, against Conv1d in float64,
    on a contiguous and on a sliced input, with and without a bias."""
    x = _rand(3, T + 1, c_in, seed=51)
    w, b = _rand(c_out, c_in, k, seed=52), _rand(c_out, seed=53)
    for inp in (x[:, :T], x[:, 1:]):
        for bias in (b, None):
            want = F.conv1d(
                inp.double().transpose(1, 2), w.double(), None if bias is None else bias.double(), stride
            )
            got = kernels._conv_gemm(inp, w, bias, stride)
            assert got.shape == want.transpose(1, 2).shape and got.is_contiguous()
            torch.testing.assert_close(got.double(), want.transpose(1, 2), atol=1e-4, rtol=1e-5)


def test_gemm_conv_weights_are_rebuilt_when_the_weight_changes():
    x, w = _rand(2, 50, 8, seed=61), _rand(8, 8, 3, seed=62)
    ref = F.conv1d(x.transpose(1, 2), w, stride=2).transpose(1, 2)
    with torch.inference_mode():
        torch.testing.assert_close(kernels._conv_gemm(x, w, None, 2), ref, atol=1e-4, rtol=1e-5)
    with torch.no_grad():
        w.mul_(-3)
    with torch.inference_mode():
        torch.testing.assert_close(kernels._conv_gemm(x, w, None, 2), -3 * ref, atol=1e-4, rtol=1e-5)


def test_cuda_paths_can_be_turned_off_by_name_and_unknown_names_are_refused():
    with kernels.use_cuda_paths(conv_gemm=False):
        assert kernels._cuda_on["conv_gemm"] is False
    assert kernels._cuda_on["conv_gemm"] is True
    with pytest.raises(ValueError, match="unknown CUDA paths"):
        with kernels.use_cuda_paths(conv=False):
            pass
