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
- `normalize_rows`: the per-utterance waveform normalisation of a padded batch; a loop of one
  `F.layer_norm` per row on CPU, one masked batched op elsewhere (no loop, no read-back).
- `layer_norm_gelu` / `layer_norm`: LayerNorm over the last dim in float32 arithmetic, then GELU
  (the CNN's and the positional convs' norm + activation) or not (the transformer's norms). On CUDA,
  one Triton kernel (`triton_kernels.py`): one read and one write of the activations where PyTorch
  makes two passes each way, and PyTorch's layer norm over 512-wide bfloat16 rows ran at ~0.3 TB/s
  on an H200 by a count of its bytes (layer_norm was 40 % of the forward's CUDA time). Elsewhere, or without Triton: `F.layer_norm` (then
  `gelu_`), as before.

On CUDA, `conv_time_major` without padding or groups (the CNN) runs as batched GEMMs on strided
views of the time-major input (cuBLAS picks a kernel for any shape), instead of cuDNN convolutions,
whose default algorithms for these shapes took 22 % of the forward's CUDA time and which only find
fast ones with `cudnn.benchmark`, i.e. a costly search for every new batch length. The positional
convs (zero-padded, grouped) run as one batched GEMM over their groups (`_grouped_conv_gemm`), and
attention with a mask skips cuDNN's attention kernel (`attention`): cuDNN builds an execution plan or
graph for every new (batch, length), and the job's batches rarely repeat a shape. On an H200 a model
actor spent ~4x the GPU's time per forward on its CPU with a new shape in every batch, against ~1x
in a benchmark that repeats 8 shapes (bench/RESULTS.md, GPU); these two paths are chosen on that
reading and were not yet measured on a GPU. The CPU paths are unchanged.
`use_cuda_paths(layer_norm_gelu=False, layer_norm=False, conv_gemm=False, attention_no_cudnn=False)`
or EMOTION2VEC_CUDA_KERNELS=0 turn the CUDA paths off (A/B measurements, escape hatch).

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
# the CUDA fast paths that are on (all unless EMOTION2VEC_CUDA_KERNELS=0); see use_cuda_paths
CUDA_PATHS = ("layer_norm_gelu", "layer_norm", "conv_gemm", "attention_no_cudnn")
_cuda_on: dict[str, bool] = dict.fromkeys(
    CUDA_PATHS, _SWITCH.get(os.environ.get("EMOTION2VEC_CUDA_KERNELS", "1").strip().lower(), True)
)
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


@contextmanager
def use_cuda_paths(**enabled: bool):
    """Turn CUDA fast paths on or off by name (`CUDA_PATHS`) inside the block (restored afterwards)."""
    unknown = set(enabled) - set(CUDA_PATHS)
    if unknown:
        raise ValueError(f"unknown CUDA paths {sorted(unknown)}; known: {CUDA_PATHS}")
    before = dict(_cuda_on)
    _cuda_on.update(enabled)
    try:
        yield
    finally:
        _cuda_on.update(before)


def _on_cuda(name: str, *tensors: Tensor) -> bool:
    """Whether the CUDA fast path `name` applies: on, tensors on a CUDA device, no autograd graph."""
    if not _cuda_on[name] or tensors[0].device.type != "cuda":
        return False
    return not (torch.is_grad_enabled() and any(t.requires_grad for t in tensors))


@functools.cache
def _triton():
    """The Triton kernels module, or None where Triton is not installed (imported on first CUDA use)."""
    try:
        from . import triton_kernels
    except ImportError:
        log.info("triton is not installed: the CUDA layer norm + GELU runs as two PyTorch kernels")
        return None
    return triton_kernels


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


def layer_norm_fp32(
    x: Tensor, shape: tuple[int, ...], weight: Tensor | None, bias: Tensor | None, eps: float
) -> Tensor:
    """`F.layer_norm` in float32 arithmetic, the result in x's dtype. PyTorch's own bfloat16 kernels
    (CPU and CUDA) already accumulate and normalise in float32 and round once at the end, so a
    bfloat16 input goes to them directly: the float32 copy of the input and the cast back cost more
    than the norm itself (the CNN's norms run over [B, 32000 per 2 s, 512] activations)."""
    if x.dtype == torch.bfloat16:
        return F.layer_norm(x, shape, weight, bias, eps)
    w = weight.float() if weight is not None else None
    b = bias.float() if bias is not None else None
    return F.layer_norm(x.float(), shape, w, b, eps).to(x.dtype)


def normalize_rows(wav: Tensor, lengths: Tensor) -> Tensor:
    """Each row of wav [B, N] layer-normalised over its first `lengths[i]` samples (float32, eps 1e-5,
    no affine: `F.layer_norm(x, x.shape)` on the unpadded clip), zero beyond -> [B, N] float32.
    lengths [B] on wav's device.

    On a CPU, one `F.layer_norm` per row (its fused kernel makes two passes over a row; reading the
    lengths is free there). Elsewhere `_normalize_batched`: one masked op for all rows, no loop and
    no read-back of the lengths, which on a GPU would wait for all queued work."""
    if wav.device.type == "cpu":
        out = torch.zeros_like(wav, dtype=torch.float32)
        for i, n in enumerate(lengths.tolist()):
            x = wav[i, :n].float()
            out[i, :n] = F.layer_norm(x, x.shape)
        return out
    return _normalize_batched(wav, lengths)


def _normalize_batched(wav: Tensor, lengths: Tensor) -> Tensor:
    """`normalize_rows` as masked batched ops: the mean, then the biased variance of the centred
    values (two passes: no cancellation), both over the valid samples of each row only."""
    x = wav.float()
    valid = torch.arange(x.shape[1], device=x.device) < lengths.unsqueeze(1)  # [B, N]
    n = lengths.clamp_min(1).unsqueeze(1).to(torch.float32)  # [B, 1]
    mean = torch.where(valid, x, 0.0).sum(dim=1, keepdim=True) / n
    centred = torch.where(valid, x - mean, 0.0)
    var = centred.square().sum(dim=1, keepdim=True) / n
    return centred.mul_(torch.rsqrt(var + 1e-5))


def layer_norm(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """`layer_norm_fp32(x)` over the last dim (the transformer's and the projection's norms):
    x [..., C] -> [..., C] in x's dtype."""
    C = x.shape[-1]
    if _triton_applies("layer_norm", x, weight, bias):
        return _triton().layer_norm_gelu(x, weight, bias, eps, gelu=False)
    return layer_norm_fp32(x, (C,), weight, bias, eps)


def layer_norm_gelu(x: Tensor, weight: Tensor | None, bias: Tensor | None, eps: float) -> Tensor:
    """`gelu(layer_norm_fp32(x))` over the last dim (the CNN's and the positional convs' norm and
    activation): x [..., C] -> [..., C] in x's dtype."""
    C = x.shape[-1]
    if _triton_applies("layer_norm_gelu", x, weight, bias):
        return _triton().layer_norm_gelu(x, weight, bias, eps, gelu=True)
    return gelu_(layer_norm_fp32(x, (C,), weight, bias, eps))


def _triton_applies(name: str, x: Tensor, weight: Tensor | None, bias: Tensor | None) -> bool:
    params = [t for t in (weight, bias) if t is not None]
    if not _on_cuda(name, x, *params) or x.dtype not in (torch.float32, torch.bfloat16, torch.float16):
        return False
    tk = _triton()
    return tk is not None and x.shape[-1] <= tk.MAX_N


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
    if _on_cuda("conv_gemm", x, weight):
        if padding == 0 and groups == 1:
            return _conv_gemm(x, weight, bias, stride)
        if stride == 1:
            return _grouped_conv_gemm(x, weight, bias, padding, groups)
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


def _conv_gemm(x: Tensor, weight: Tensor, bias: Tensor | None, stride: int) -> Tensor:
    """An unpadded, ungrouped Conv1d on time-major x [B, T, C] as GEMMs: output frame t reads input
    frames [stride t, stride t + k), i.e. the row of k * C values starting at element stride * t * C.
    Taps are taken `stride` at a time, so that each chunk is a strided view whose rows do not overlap
    (a valid GEMM operand, no copy), and the chunks' products are summed: k = s (2, 2) is one GEMM,
    (3, 2) two. A narrow input (the waveform, C = 1) is unfolded into a small padded copy instead,
    so that K is a multiple of 8 as the tensor cores want."""
    B, T, C = x.shape
    C_out, _, k = weight.shape
    T_out = (T - k) // stride + 1
    if not x.is_contiguous():
        x = x.contiguous()
    out = None
    for first, taps, w in _gemm_weight(weight, stride, C):
        cols = x.as_strided((B, T_out, taps * C), (T * C, stride * C, 1), x.storage_offset() + first * C)
        if w.shape[0] != taps * C or taps > stride:  # narrow: unfold into a copy, K padded
            cols = F.pad(cols, (0, w.shape[0] - taps * C)).contiguous()
        wb = w.expand(B, *w.shape)
        out = torch.bmm(cols, wb) if out is None else out.baddbmm_(cols, wb)
    if bias is not None:
        out = out.add_(bias)
    return out


def _gemm_weight(weight: Tensor, stride: int, C: int) -> list[tuple[int, int, Tensor]]:
    """The conv weight [C_out, C, k] as GEMM operands, one per chunk of `stride` taps: (first tap,
    taps, [taps * C (padded to a multiple of 8 when narrow), C_out]). Kept on the weight tensor until
    the weight changes, like `_channels_last_weight`."""
    key = (weight._version, weight.data_ptr(), stride)
    cached = getattr(weight, "_e2v_gemm", None)
    if cached is not None and cached[0] == key:
        return cached[1]
    C_out, _, k = weight.shape
    w = weight.detach().permute(2, 1, 0)  # [k, C, C_out]: tap-major rows, as the input's time-major rows
    narrow = stride * C % 8 != 0
    chunks = []
    taps_per_chunk = k if narrow else stride  # narrow: one unfolded copy holds all taps
    for first in range(0, k, taps_per_chunk):
        taps = min(taps_per_chunk, k - first)
        wc = w[first : first + taps].reshape(taps * C, C_out)
        if narrow:
            wc = F.pad(wc, (0, 0, 0, -(-taps * C // 8) * 8 - taps * C))
        chunks.append((first, taps, wc.contiguous()))
    weight._e2v_gemm = (key, chunks)
    return chunks


def _grouped_conv_gemm(x: Tensor, weight: Tensor, bias: Tensor | None, padding: int, groups: int) -> Tensor:
    """A zero-padded, grouped, stride-1 Conv1d on time-major x [B, T, C] (the positional convs) as one
    batched GEMM over the groups: the k taps of every output frame are gathered into rows
    [g, B * T', k * C/g] (one copy), times the weight as [g, k * C/g, C_out/g]. cuBLAS takes any
    shape as it comes, where cuDNN builds an execution plan for every new (batch, length) and the
    job's batches rarely repeat a shape (the model actor's CPU time per forward on an H200 was ~4x
    the GPU's with a new shape in every batch)."""
    B, T, C = x.shape
    C_out, c_in, k = weight.shape
    xp = F.pad(x, (0, 0, padding, padding))  # [B, T + 2p, C], contiguous
    Tp = xp.shape[1]
    T_out = Tp - k + 1
    taps = xp.as_strided((B, T_out, k, groups, c_in), (Tp * C, C, C, c_in, 1))  # [B, T', k, g, c]
    cols = taps.permute(3, 0, 1, 2, 4).reshape(groups, B * T_out, k * c_in)  # the one copy
    out = torch.bmm(cols, _grouped_gemm_weight(weight, groups))  # [g, B * T', C_out/g]
    out = out.view(groups, B, T_out, C_out // groups).permute(1, 2, 0, 3).reshape(B, T_out, C_out)
    return out.add_(bias) if bias is not None else out


def _grouped_gemm_weight(weight: Tensor, groups: int) -> Tensor:
    """A grouped conv weight [C_out, C/g, k] as [g, k * C/g, C_out/g] (tap-major rows, as the gathered
    input's), kept on the weight tensor until the weight changes."""
    key = (weight._version, weight.data_ptr(), groups)
    cached = getattr(weight, "_e2v_grouped_gemm", None)
    if cached is None or cached[0] != key:
        C_out, c_in, k = weight.shape
        w = weight.detach().view(groups, C_out // groups, c_in, k).permute(0, 3, 2, 1)  # [g, k, c, C_out/g]
        cached = (key, w.reshape(groups, k * c_in, C_out // groups).contiguous())
        weight._e2v_grouped_gemm = cached
    return cached[1]


def to_device(t: Tensor, device: torch.device) -> Tensor:
    """A small host tensor (lengths) onto `device` without waiting for it: on CUDA from page-locked
    memory, since a copy from pageable memory may wait for the work already queued on the stream
    (the CNN, when the frame lengths follow it), and the host then spins while the GPU's queue runs
    dry. Elsewhere a plain copy (none on the CPU)."""
    if device.type == "cuda":
        return t.pin_memory().to(device, non_blocking=True)
    return t.to(device)


def attention(q: Tensor, k: Tensor, v: Tensor, mask: Tensor | None) -> Tensor:
    """`F.scaled_dot_product_attention(q, k, v, attn_mask=mask)`. On CUDA without cuDNN's attention
    kernel: PyTorch picks it first on Hopper, and it builds a graph for every new (batch, length), a
    cost paid on the host for nearly every batch of the job (shapes rarely repeat); the
    memory-efficient kernel takes the additive ALiBi + padding mask as it is laid out here
    (`encoder._aligned`) with no per-shape set-up."""
    if mask is not None and _on_cuda("attention_no_cudnn", q, k, v):
        with _sdpa_without_cudnn():
            return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)
    return F.scaled_dot_product_attention(q, k, v, attn_mask=mask)


def _sdpa_without_cudnn():
    from torch.nn.attention import SDPBackend, sdpa_kernel

    return sdpa_kernel([SDPBackend.EFFICIENT_ATTENTION, SDPBackend.FLASH_ATTENTION, SDPBackend.MATH])


@contextmanager
def exact_float32(enabled: bool = True):
    """Float32 arithmetic in float32 inside the block: no TF32 in cuDNN convolutions (which PyTorch
    allows by default) nor in cuBLAS matmuls. On an H200 TF32 moved the base model's frames by 0.01
    (scale ~5) against the CPU's float32. The flags are process-wide, so they are set only around the
    model's own calls and restored afterwards, never flipped for the whole process."""
    if not enabled:
        yield
        return
    conv, matmul = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = conv, matmul
