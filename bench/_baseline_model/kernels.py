"""Inference fast paths for the encoder's hot operations.

Each function returns what its plain-PyTorch spelling returns (up to float summation order) and
falls back to that spelling wherever the fast path does not apply:

- `linear` / `linear_add`: on CPU, a oneDNN inner product with the bias and an exact (erf) GELU or
  a residual add fused into the kernel (`torch.ops.mkldnn._linear_pointwise`, the op PyTorch's own
  compiler emits for CPU linears). Plain `F.linear` on CPU calls MKL's sgemm, and the GELU and the
  add then each make another pass over freshly allocated memory, which makes fc1 + GELU 17-26 %
  slower on an AVX2 EPYC (bench/RESULTS.md). Used for a (device, dtype) only after a probe on
  small tensors agrees with `F.linear`: a CPU without bfloat16 support in oneDNN (AVX2 only), a
  PyTorch build without the op, or autograd all take the fallback.
- `conv_time_major`: a Conv1d over time-major [B, T, C] activations, run as a channels-last Conv2d
  of height 1. The LayerNorms over channels that follow every conv in this model then work on
  contiguous rows, and no [B, C, T] <-> [B, T, C] transposes are needed around them.
- `gelu_`: GELU in place when nothing needs the input for a backward pass.

Whether the fused linears beat `F.linear` depends on the CPU (+17-26 % on an AVX2 EPYC, no faster
on an AVX-512 Xeon), so by default it is measured, once per process and dtype, on the first CPU
linear (`onednn_linear_faster`: fc1 + GELU of a 256-frame batch, a few interleaved tries, well
under a second). `use_onednn(True / False)` or EMOTION2VEC_ONEDNN=1 / 0 in the environment force
the choice, for A/B measurements and as an escape hatch.
"""

from __future__ import annotations

import functools
import logging
import os
import time
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

log = logging.getLogger(__name__)
_SWITCH = {
    "1": True,
    "true": True,
    "yes": True,
    "on": True,
    "0": False,
    "false": False,
    "no": False,
    "off": False,
}
# True / False: forced on / off; None: measured per dtype on this CPU
_enabled: bool | None = _SWITCH.get(os.environ.get("EMOTION2VEC_ONEDNN", "auto").strip().lower())
PROBE_SHAPE = (256, 768, 3072)  # frames x D x FFN: a base-size fc1 on ~5 s of audio
PROBE_TRIES = 5


@contextmanager
def use_onednn(enabled: bool | None):
    """Force the oneDNN linears on or off inside the block, or None: as measured (restored afterwards)."""
    global _enabled
    before, _enabled = _enabled, enabled
    try:
        yield
    finally:
        _enabled = before


@functools.cache
def onednn_linear_available(dtype: torch.dtype) -> bool:
    """Whether the fused oneDNN linears run, and agree with `F.linear`, for `dtype` on this CPU
    (probed once per dtype)."""
    if not torch.backends.mkldnn.is_available():
        return False
    try:
        op = torch.ops.mkldnn._linear_pointwise
        g = torch.Generator().manual_seed(0)
        x, r = torch.randn(5, 24, generator=g), torch.randn(5, 16, generator=g)
        w, b = torch.randn(16, 24, generator=g) / 5, torch.randn(16, generator=g)
        xd, rd, wd, bd = (t.to(dtype) for t in (x, r, w, b))
        got_gelu = op(xd, wd, bd, "gelu", [], "none").float()
        got_add = op.binary(xd, rd, wd, bd, "add").float()
    except (AttributeError, RuntimeError, NotImplementedError):
        return False  # op missing from this build, or no oneDNN kernel for dtype on this CPU
    tol = 1e-4 if dtype == torch.float32 else 5e-2
    ref = F.linear(x, w, b)
    return bool(
        torch.allclose(got_gelu, F.gelu(ref), atol=tol) and torch.allclose(got_add, ref + r, atol=tol)
    )


@functools.cache
def onednn_linear_faster(dtype: torch.dtype) -> bool:
    """Whether the fused oneDNN fc1 + GELU beats `F.linear` + GELU for `dtype` on this CPU, with the
    current torch threads: best of `PROBE_TRIES` interleaved calls each (measured once per dtype)."""
    if not onednn_linear_available(dtype):
        return False
    n, k, m = PROBE_SHAPE
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, k, generator=g).to(dtype)
    w, b = (torch.randn(m, k, generator=g) / k**0.5).to(dtype), torch.zeros(m, dtype=dtype)
    variants = {True: lambda: _fused(x, w, b, True), False: lambda: _plain(x, w, b, True)}
    best = dict.fromkeys(variants, float("inf"))
    with torch.inference_mode():
        for f in variants.values():
            f()  # warm: oneDNN builds its primitive, MKL its buffers
        for _ in range(PROBE_TRIES):
            for fused, f in variants.items():
                t = time.perf_counter()
                f()
                best[fused] = min(best[fused], time.perf_counter() - t)
    faster = best[True] <= best[False]
    log.info(
        "linear kernels for %s: %s (fused oneDNN %.2f ms, F.linear %.2f ms on a %dx%dx%d fc1 + GELU)",
        str(dtype).replace("torch.", ""),
        "fused oneDNN" if faster else "F.linear",
        1e3 * best[True],
        1e3 * best[False],
        n,
        k,
        m,
    )
    return faster


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    if _enabled is False or x.device.type != "cpu" or weight.dtype != x.dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the fused op has no backward
    if not onednn_linear_available(x.dtype):
        return False
    return _enabled or onednn_linear_faster(x.dtype)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: bool = False) -> Tensor:
    """`F.linear(x, weight, bias)`, followed by an exact GELU when `gelu`. x [..., K] -> [..., N]."""
    return (_fused if _use_onednn(x, weight) else _plain)(x, weight, bias, gelu)


def _fused(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: bool) -> Tensor:
    return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none")


def _plain(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: bool) -> Tensor:
    y = F.linear(x, weight, bias)
    return gelu_(y) if gelu else y


def linear_add(x: Tensor, weight: Tensor, bias: Tensor | None, residual: Tensor) -> Tensor:
    """`F.linear(x, weight, bias) + residual`. x [..., K], residual [..., N] -> [..., N]."""
    if _use_onednn(x, weight) and residual.dtype == x.dtype and residual.is_contiguous():
        return torch.ops.mkldnn._linear_pointwise.binary(x, residual, weight, bias, "add")
    return F.linear(x, weight, bias).add_(residual)


def gelu_(x: Tensor) -> Tensor:
    """Exact GELU, in place where autograd does not need the input."""
    if torch.is_grad_enabled() and x.requires_grad:
        return F.gelu(x)
    return torch.ops.aten.gelu_(x)


def conv_time_major(
    x: Tensor,
    weight: Tensor,
    bias: Tensor | None = None,
    stride: int = 1,
    padding: int = 0,
    groups: int = 1,
) -> Tensor:
    """Conv1d over time on time-major activations: x [B, T, C_in], weight [C_out, C_in/groups, k]
    (an `nn.Conv1d` weight) -> [B, T', C_out] contiguous, T' = (T + 2 padding - k) // stride + 1."""
    B, _, C = x.shape
    x4 = x.unsqueeze(1).permute(0, 3, 1, 2)  # [B, C_in, 1, T]: channels-last strides, no copy
    if C == 1:  # both layouts at once; make the format explicit so the output is channels-last too
        x4 = x4.contiguous(memory_format=torch.channels_last)
    w4 = _channels_last_weight(weight)  # [C_out, C_in/groups, 1, k]
    y = F.conv2d(x4, w4, bias, stride=(1, stride), padding=(0, padding), groups=groups)  # [B, C_out, 1, T']
    return y.permute(0, 2, 3, 1).reshape(B, y.shape[-1], y.shape[1])  # [B, T', C_out]


def _channels_last_weight(weight: Tensor) -> Tensor:
    """A Conv1d weight as the channels-last Conv2d weight [C_out, C_in/groups, 1, k] that oneDNN wants
    beside channels-last input. Made once and kept on the weight tensor (until the weight changes):
    otherwise every call copied it into that layout (~0.1 s per 4 s forward of the base model)."""
    if torch.is_grad_enabled() and weight.requires_grad:
        return weight.unsqueeze(2)
    cached = getattr(weight, "_e2v_channels_last", None)
    if cached is None or cached[0] != (weight._version, weight.data_ptr()):
        w4 = weight.detach().unsqueeze(2).contiguous(memory_format=torch.channels_last)
        cached = ((weight._version, weight.data_ptr()), w4)
        weight._e2v_channels_last = cached
    return cached[1]
