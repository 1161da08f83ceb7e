"""Pure helpers for duration-based batching: pack clips under a padded-samples budget, collate."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch


def pack(lengths: Sequence[int], budget_samples: int, max_batch_size: int) -> list[list[int]]:
    """Group item indices into batches whose padded size (count x longest) stays within
    `budget_samples` and whose count stays within `max_batch_size`. Items are sorted longest first
    so that each batch holds similar lengths (little padding); an item longer than the budget gets
    a batch of its own. Every index appears exactly once."""
    order = sorted(range(len(lengths)), key=lambda i: (-lengths[i], i))
    batches: list[list[int]] = []
    current: list[int] = []
    longest = 0
    for i in order:
        n = lengths[i]
        if current and (
            len(current) + 1 > max_batch_size or (len(current) + 1) * max(longest, n) > budget_samples
        ):
            batches.append(current)
            current, longest = [], 0
        current.append(i)
        longest = max(longest, n)
    if current:
        batches.append(current)
    return batches


def collate(
    clips: Sequence[np.ndarray], pin_memory: bool = False, out: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """-> (wav [B, N] float32 zero-padded, lengths [B] int64). `out`: a flat float32 buffer of at
    least B x N elements to collate into (reused across batches: only the padding is zeroed, not the
    whole buffer)."""
    lengths = torch.tensor([len(c) for c in clips], dtype=torch.long)
    B, N = len(clips), int(lengths.max())
    if out is None:
        wav = torch.empty(B, N, dtype=torch.float32, pin_memory=pin_memory)
    else:
        wav = out[: B * N].view(B, N)
    buf = wav.numpy()  # shares memory with wav; numpy assignment copies from read-only views too
    for i, c in enumerate(clips):
        buf[i, : len(c)] = c
        buf[i, len(c) :] = 0.0
    return wav, lengths
