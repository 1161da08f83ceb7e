"""The emotion2vec encoder: waveform -> frame features, utterance embedding, emotion scores.

`Emotion2vec.forward(wav, lengths)` takes a zero-padded batch and the true length of each row and
gives, for every row, exactly what one-at-a-time inference of that row gives (docs/model.md, "Padding"):
the waveform is normalised per utterance over its valid samples, padded frames are zeroed around
the positional convolutions, attention never looks at padded keys, and pooling is a masked mean.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import kernels
from .components import (
    AltBlock,
    BlockEncoder,
    FeatureExtractor,
    Fp32LayerNorm,
    PositionalConv,
    alibi_bias,
    conv_output_lengths,
)
from .config import Emotion2vecConfig


class InputTooShortError(ValueError):
    """An utterance shorter than the CNN's receptive field (`InputSpec.receptive_field`)."""


@dataclass
class Emotion2vecOutput:
    frames: Tensor  # [B, T, D] last-block features, zero beyond frame_lengths
    frame_lengths: Tensor  # [B] int64 valid frames per row
    embedding: Tensor  # [B, D] float32, mean of the valid frames
    logits: Tensor | None  # [B, C] float32, masked labels at -inf; None for head-less models
    scores: Tensor | None  # [B, C] float32 softmax of logits


def _aligned(shape: tuple[int, ...], dtype: torch.dtype, device: torch.device, multiple: int = 16) -> Tensor:
    """An uninitialised tensor of `shape` whose rows start every `multiple` elements (a view of a
    wider one). CUDA's memory-efficient attention needs its additive mask laid out so and pads a
    copy of any other mask on every call, i.e. in every block."""
    *lead, n = shape
    return torch.empty(*lead, -(-n // multiple) * multiple, dtype=dtype, device=device)[..., :n]


class AudioEncoder(nn.Module):
    """`modality_encoders.AUDIO`: CNN, projection, positional convs, extra tokens, ALiBi scale and
    the prenet blocks."""

    def __init__(self, cfg: Emotion2vecConfig):
        super().__init__()
        D, C = cfg.embed_dim, cfg.feature_encoder_spec[-1][0]
        self.num_extra_tokens = cfg.num_extra_tokens
        self.extra_tokens = nn.Parameter(torch.zeros(1, cfg.num_extra_tokens, D))
        self.alibi_scale = nn.Parameter(
            torch.ones(1, 1, cfg.num_heads if cfg.alibi_scale_per_head else 1, 1, 1)
        )
        self.local_encoder = FeatureExtractor(cfg.feature_encoder_spec)
        # .0 is a transpose in the reference; .1 LayerNorm(C), .2 Linear(C, D)
        self.project_features = nn.Sequential(nn.Identity(), Fp32LayerNorm(C), nn.Linear(C, D))
        self.relative_positional_encoder = PositionalConv(
            D, cfg.conv_pos_kernel, cfg.conv_pos_groups, cfg.conv_pos_depth
        )
        self.context_encoder = BlockEncoder(D, cfg.num_heads, cfg.ffn_dim, cfg.prenet_depth, cfg.norm_eps)


class Emotion2vec(nn.Module):
    def __init__(self, cfg: Emotion2vecConfig):
        super().__init__()
        self.cfg = cfg
        self.input = cfg.input
        self.modality_encoders = nn.ModuleDict({"AUDIO": AudioEncoder(cfg)})
        self.blocks = nn.ModuleList(
            AltBlock(cfg.embed_dim, cfg.num_heads, cfg.ffn_dim, cfg.norm_eps) for _ in range(cfg.depth)
        )
        self.proj = nn.Linear(cfg.embed_dim, cfg.num_classes) if cfg.num_classes > 0 else None
        # Labels whose logits are forced to -inf (old tokens.txt `unuse_*` entries); set by the loader.
        self.register_buffer(
            "label_mask", torch.zeros(max(cfg.num_classes, 0), dtype=torch.bool), persistent=False
        )
        self._alibi_cache: tuple[tuple, Tensor] | None = None  # see _alibi

    @property
    def dtype(self) -> torch.dtype:
        return self.blocks[0].attn.qkv.weight.dtype if len(self.blocks) else torch.float32

    @property
    def device(self) -> torch.device:
        return self.modality_encoders["AUDIO"].extra_tokens.device

    def frame_lengths(self, lengths: Tensor) -> Tensor:
        return conv_output_lengths(lengths, self.cfg.feature_encoder_spec)

    def normalize(self, wav: Tensor, lengths: Tensor) -> Tensor:
        """Per-utterance layer norm over the valid samples of each row (float32, eps 1e-5, as the
        reference's `F.layer_norm(x, x.shape)` on the unpadded clip); padding comes out zero."""
        return kernels.normalize_rows(wav, lengths)

    def forward(self, wav: Tensor, lengths: Tensor | None = None) -> Emotion2vecOutput:
        """wav [B, N] float (mono at `self.input.sample_rate`, zero-padded), lengths [B] valid
        samples per row (None: every row is N long).

        Pass `lengths` on the CPU even when `wav` is on a GPU: the length check and the choice of
        the padded path then happen on the host, and the forward queues its GPU work without once
        waiting for the GPU. Lengths on the GPU work too, at the cost of one read-back (which waits
        for whatever the GPU still has queued) before any work is queued."""
        B, N = wav.shape
        if lengths is None:
            host_lengths = torch.full((B,), N, dtype=torch.long)
        else:
            host_lengths = lengths.to(device="cpu", dtype=torch.long)
        spec = self.input
        short = (host_lengths < spec.receptive_field).nonzero().flatten().tolist()
        if short:
            i = short[0]
            raise InputTooShortError(
                f"utterance {i} has {int(host_lengths[i])} samples; emotion2vec needs at least "
                f"{spec.receptive_field} ({1000 * spec.min_duration_s:.0f} ms at {spec.sample_rate} Hz)"
            )
        long = (host_lengths > N).nonzero().flatten().tolist()
        if long:  # no samples behind it: frames, mask and mean would count audio that is not there
            i = long[0]
            raise ValueError(
                f"utterance {i} has length {int(host_lengths[i])}, but the batch holds {N} samples per row"
            )
        lengths = kernels.to_device(host_lengths, wav.device)
        if self.cfg.normalize:
            wav = self.normalize(wav, lengths)
        enc = self.modality_encoders["AUDIO"]
        E = enc.num_extra_tokens

        x = enc.local_encoder(wav.to(self.dtype))  # [B, T, C]
        T = x.shape[1]
        host_frame_lengths = self.frame_lengths(host_lengths)  # [B], on the host: no sync
        padded = bool((host_frame_lengths < T).any())
        frame_lengths = kernels.to_device(host_frame_lengths, x.device)
        valid = torch.arange(T, device=x.device).unsqueeze(0) < frame_lengths.unsqueeze(1)  # [B, T]

        y = enc.project_features(x)  # [B, T, D]
        if padded:
            y = y * valid.unsqueeze(-1).to(y.dtype)
        x = y + enc.relative_positional_encoder(y, valid if padded else None)  # [B, T, D]
        x = torch.cat([enc.extra_tokens.expand(B, -1, -1), x], dim=1)  # [B, T', D]

        mask = self._alibi(T, x.dtype, x.device)  # [1, H, T', T']
        if padded:
            key_pad = F.pad(~valid, (E, 0))  # [B, T'], True = padded key
            full = _aligned((B, *mask.shape[1:]), mask.dtype, mask.device)  # [B, H, T', T']
            mask = full.copy_(mask.expand_as(full)).masked_fill_(key_pad[:, None, None, :], float("-inf"))

        x = enc.context_encoder(x, mask)
        for blk in self.blocks:
            x = blk(x, mask)
        frames = x[:, E:]  # [B, T, D]
        if padded:
            frames = frames * valid.unsqueeze(-1).to(frames.dtype)

        denom = frame_lengths.clamp_min(1).unsqueeze(1).to(torch.float32)
        embedding = frames.sum(dim=1, dtype=torch.float32) / denom  # [B, D], summed in float32
        logits, scores = self.classify(embedding)
        return Emotion2vecOutput(frames, frame_lengths, embedding, logits, scores)

    def _alibi(self, T: int, dtype: torch.dtype, device: torch.device) -> Tensor:
        """The ALiBi bias [1, H, T', T'] for T frames, in `dtype`. The bias between two frames
        depends only on their distance, so the bias for T frames is the top-left corner of the
        bias for any longer clip: one bias, for the longest clip seen so far, is kept and viewed
        (building it costs about as much as a transformer block's attention)."""
        scale = self.modality_encoders["AUDIO"].alibi_scale
        E = self.cfg.num_extra_tokens
        H = self.cfg.num_heads
        if torch.is_grad_enabled() and scale.requires_grad:
            return alibi_bias(T, scale, E, device, H).to(dtype)  # keep the graph to the learned scale
        key = (scale.data_ptr(), scale._version, dtype, device)
        cached = self._alibi_cache
        if cached is None or cached[0] != key or cached[1].shape[-1] < T + E:
            bias = alibi_bias(T, scale.detach(), E, device, H)
            self._alibi_cache = cached = (key, _aligned(bias.shape, dtype, device).copy_(bias))
        return cached[1][:, :, : T + E, : T + E]

    def classify(self, embedding: Tensor) -> tuple[Tensor | None, Tensor | None]:
        """Utterance embedding [B, D] -> (logits, softmax scores) [B, C] in float32, masked labels
        at -inf / 0; (None, None) for head-less models."""
        if self.proj is None:
            return None, None
        logits = F.linear(embedding.float(), self.proj.weight.float(), self.proj.bias.float())  # [B, C]
        logits = logits.masked_fill(self.label_mask, float("-inf"))
        return logits, logits.softmax(dim=-1)
