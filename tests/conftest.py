"""Shared fixtures: tiny random-init checkpoints in the official layouts, generated audio, Ray."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
torch.set_num_threads(min(2, os.cpu_count() or 1))


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory):
    """A 6-head (non power of two), D=48 model with a 9-way head, in the published hub layout."""
    from pipeline.model.random_init import random_model, tiny, write_checkpoint

    model = random_model(tiny(num_heads=6, embed_dim=48), seed=3)
    return write_checkpoint(model, tmp_path_factory.mktemp("tiny_hub"), "hub")


def random_clips(lengths, seed=0):
    rng = np.random.default_rng(seed)
    out = []
    for n in lengths:
        t = np.arange(n) / 16000.0
        # a few harmonics plus noise: not white, not silent
        x = 0.3 * np.sin(2 * np.pi * rng.uniform(90, 300) * t) + 0.05 * rng.standard_normal(n)
        out.append(x.astype(np.float32))
    return out
