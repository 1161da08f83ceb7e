"""Building blocks of the emotion2vec encoder (docs/model.md, "Architecture").

Shapes: B batch, N samples, C CNN channels, T frames, T' = T + extra tokens, D model dim,
H heads, Dh = D / H. Module attribute names and `nn.Sequential` positions reproduce the official
state-dict keys exactly; `nn.Identity` placeholders hold the positions of parameter-free layers
(dropout, transposes) so the keys line up.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .config import ConvSpec
from .kernels import layer_norm_fp32


class Fp32LayerNorm(nn.LayerNorm):
    """LayerNorm computed in float32 whatever the input dtype, cast back (the reference's
    `Fp32LayerNorm`; in float32 it is exactly `nn.LayerNorm`)."""

    def forward(self, x: Tensor) -> Tensor:
        if len(self.normalized_shape) == 1:
            return kernels.layer_norm(x, self.weight, self.bias, self.eps)
        return layer_norm_fp32(x, self.normalized_shape, self.weight, self.bias, self.eps)


def conv_output_lengths(lengths: Tensor, spec: ConvSpec) -> Tensor:
    """Frames produced from `lengths` samples by the unpadded CNN: L <- floor((L - k) / s) + 1 per layer."""
    out = lengths.clone()
    for _, k, s in spec:
        out = torch.div(out - k, s, rounding_mode="floor") + 1
    return out.clamp_min(0)


class FeatureExtractor(nn.Module):
    """`local_encoder`: 7 unpadded convs, each Conv1d(bias=False) -> LayerNorm over channels -> GELU.

    Valid frames only ever see valid samples (no conv padding), so nothing here needs a mask.
    """

    def __init__(self, spec: ConvSpec):
        super().__init__()
        layers = []
        in_ch = 1
        for ch, k, s in spec:
            layers.append(
                nn.Sequential(
                    nn.Conv1d(in_ch, ch, kernel_size=k, stride=s, bias=False),  # .0
                    nn.Identity(),  # .1 dropout (p=0)
                    nn.Sequential(nn.Identity(), Fp32LayerNorm(ch)),  # .2.1 (transposes around it)
                )
            )
            in_ch = ch
        self.conv_layers = nn.ModuleList(layers)

    def forward(self, wav: Tensor) -> Tensor:
        """wav [B, N] -> features [B, T, C] (time-major, ready for the projection).

        The convs run time-major (`kernels.conv_time_major`), so the LayerNorm over channels works
        on contiguous rows with none of the transposes a [B, C, T] layout needs around it."""
        x = wav.unsqueeze(-1)  # [B, N, 1]
        for layer in self.conv_layers:
            conv: nn.Conv1d = layer[0]
            x = kernels.conv_time_major(x, conv.weight, stride=conv.stride[0])  # [B, T_i, C]
            ln: nn.LayerNorm = layer[2][1]
            x = kernels.layer_norm_gelu(x, ln.weight, ln.bias, ln.eps)  # LN over C, then GELU
        return x  # [B, T, C]


class PositionalConv(nn.Sequential):
    """`relative_positional_encoder`: a chain of grouped convs, each -> LayerNorm (no affine) -> GELU.

    A `Sequential` so the keys are `relative_positional_encoder.{1..depth}.0.*` as in the
    checkpoints (index 0 is the reference's outer transpose). Single-utterance inference sees zeros
    beyond the end of the clip at every conv; to make a padded batch give the same numbers, padded
    frames are zeroed before every conv (docs/model.md, "Padding").
    """

    def __init__(self, dim: int, kernel: int, groups: int, depth: int):
        super().__init__(
            nn.Identity(),
            *[
                nn.Sequential(nn.Conv1d(dim, dim, kernel, padding=kernel // 2, groups=groups))
                for _ in range(depth)
            ],
        )
        self.kernel = kernel

    def forward(self, x: Tensor, keep: Tensor | None) -> Tensor:  # type: ignore[override]
        # x [B, T, D] (time-major throughout); keep [B, T] (True = valid frame) or None when nothing is padded
        keep3 = None if keep is None else keep.unsqueeze(-1).to(x.dtype)  # [B, T, 1]
        for layer in list(self)[1:]:
            conv: nn.Conv1d = layer[0]
            if keep3 is not None:
                x = x * keep3
            x = kernels.conv_time_major(
                x, conv.weight, conv.bias, padding=self.kernel // 2, groups=conv.groups
            )
            if self.kernel % 2 == 0:  # SamePad: an even kernel makes one frame too many
                x = x[:, :-1]
            x = kernels.layer_norm_gelu(x, None, None, 1e-5)  # LN over D, no affine, then GELU
        return x  # [B, T, D]


def alibi_slopes(num_heads: int) -> list[float]:
    """ALiBi head slopes: 2^(-8k/n) for a power-of-two n; otherwise the slopes of the nearest
    lower power of two followed by every second slope of the doubled count (docs/model.md, "Architecture")."""

    def pow2(n: int) -> list[float]:
        start = 2 ** (-(2 ** -(math.log2(n) - 3)))
        return [start * start**i for i in range(n)]

    if math.log2(num_heads).is_integer():
        return pow2(num_heads)
    p = 2 ** math.floor(math.log2(num_heads))
    return pow2(p) + alibi_slopes(2 * p)[0::2][: num_heads - p]


def alibi_bias(
    num_frames: int, scale: Tensor, num_extra: int, device: torch.device, num_heads: int
) -> Tensor:
    """ALiBi bias [1, H, T', T'] in float32: (slope_h * -|i - j|) * clamp(scale_h, 0) between audio
    frames, 0 in the rows and columns of the extra tokens. `scale` is the `alibi_scale` parameter
    [1, 1, H or 1, 1, 1]: one scale shared by all heads leaves them one slope each (as the reference
    builds the bias for `num_alibi_heads` heads whatever the scale's shape)."""
    slopes = torch.tensor(alibi_slopes(num_heads), dtype=torch.float32, device=device)  # [H]
    pos = torch.arange(num_frames, device=device)
    dist = -(pos.unsqueeze(0) - pos.unsqueeze(1)).abs()  # [T, T]
    bias = slopes.view(-1, 1, 1) * dist.unsqueeze(0)  # [H, T, T]
    bias = bias.unsqueeze(0) * scale.clamp_min(0).squeeze(0).float()  # [1, H, T, T]
    return F.pad(bias, (num_extra, 0, num_extra, 0))  # [1, H, T', T']


class Attention(nn.Module):
    """Multi-head self-attention with a fused qkv projection; ALiBi and the key mask arrive as one
    additive float mask and go through `scaled_dot_product_attention`."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.num_heads = num_heads
        self.qkv = nn.Linear(dim, 3 * dim, bias=True)
        self.proj = nn.Linear(dim, dim)

    def forward(self, x: Tensor, mask: Tensor | None, residual: Tensor) -> Tensor:
        """x [B, T', D] -> attention output + `residual` [B, T', D] (the add fused into `proj`)."""
        B, T, D = x.shape
        qkv = kernels.linear(x, self.qkv.weight, self.qkv.bias)
        qkv = qkv.view(B, T, 3, self.num_heads, D // self.num_heads)  # [B, T', 3, H, Dh]
        q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [B, H, T', Dh]
        out = kernels.attention(q, k, v, mask)  # [B, H, T', Dh]
        out = out.transpose(1, 2).reshape(B, T, D)
        return kernels.linear_add(out, self.proj.weight, self.proj.bias, residual)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: Tensor, residual: Tensor) -> Tensor:
        """x [B, T', D] -> fc2(gelu(fc1(x))) + `residual` [B, T', D] (GELU and add fused)."""
        h = kernels.linear(x, self.fc1.weight, self.fc1.bias, gelu=True)  # [B, T', F]
        return kernels.linear_add(h, self.fc2.weight, self.fc2.bias, residual)


class AltBlock(nn.Module):
    """Post-LN transformer block: x = norm1(x + attn(x)); x = norm2(x + mlp(x))."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, eps: float):
        super().__init__()
        self.norm1 = Fp32LayerNorm(dim, eps=eps)
        self.attn = Attention(dim, num_heads)
        self.norm2 = Fp32LayerNorm(dim, eps=eps)
        self.mlp = Mlp(dim, ffn_dim)

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        r = self.norm1(self.attn(x, mask, residual=x))
        return self.norm2(self.mlp(r, residual=r))


class BlockEncoder(nn.Module):
    """`context_encoder` (the "prenet"): LayerNorm at the input, then its blocks."""

    def __init__(self, dim: int, num_heads: int, ffn_dim: int, depth: int, eps: float):
        super().__init__()
        self.norm = Fp32LayerNorm(dim, eps=eps)
        self.blocks = nn.ModuleList(AltBlock(dim, num_heads, ffn_dim, eps) for _ in range(depth))

    def forward(self, x: Tensor, mask: Tensor | None) -> Tensor:
        x = self.norm(x)
        for blk in self.blocks:
            x = blk(x, mask)
        return x
