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

`use_onednn(False)` (or EMOTION2VEC_ONEDNN=0 in the environment) turns the oneDNN linears off, for
A/B measurements and as an escape hatch.
"""

from __future__ import annotations

import functools
import os
from contextlib import contextmanager

import torch
import torch.nn.functional as F
from torch import Tensor

_enabled = os.environ.get("EMOTION2VEC_ONEDNN", "1").strip().lower() not in ("0", "false", "no", "off")


@contextmanager
def use_onednn(enabled: bool):
    """Turn the oneDNN linears on or off inside the block (restored afterwards)."""
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


def _use_onednn(x: Tensor, weight: Tensor) -> bool:
    if not _enabled or x.device.type != "cpu" or weight.dtype != x.dtype:
        return False
    if torch.is_grad_enabled() and (x.requires_grad or weight.requires_grad):
        return False  # the fused op has no backward
    return onednn_linear_available(x.dtype)


def linear(x: Tensor, weight: Tensor, bias: Tensor | None, gelu: bool = False) -> Tensor:
    """`F.linear(x, weight, bias)`, followed by an exact GELU when `gelu`. x [..., K] -> [..., N]."""
    if _use_onednn(x, weight):
        return torch.ops.mkldnn._linear_pointwise(x, weight, bias, "gelu" if gelu else "none", [], "none")
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
    w4 = weight.unsqueeze(2)  # [C_out, C_in/groups, 1, k]
    y = F.conv2d(x4, w4, bias, stride=(1, stride), padding=(0, padding), groups=groups)  # [B, C_out, 1, T']
    return y.permute(0, 2, 3, 1).reshape(B, y.shape[-1], y.shape[1])  # [B, T', C_out]
