"""emotion2vec in plain PyTorch: config, encoder, checkpoint loading and hub resolution.

Imports nothing else from `pipeline`.
"""

from .checkpoint import CheckpointError, ModelBundle, load_bundle
from .config import ConfigError, Emotion2vecConfig
from .encoder import Emotion2vec, Emotion2vecOutput, InputTooShortError
from .hub import ModelSourceError, parse_source, resolve


def load_model(
    source: str,
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype=None,
    cache_dir: str | None = None,
    offline: bool | None = None,
) -> ModelBundle:
    """Resolve `source` (local path, hf:/ms: reference or short name) and load it."""
    import torch

    path, ref = resolve(source, revision=revision, cache_dir=cache_dir, offline=offline)
    return load_bundle(
        path, device=device, dtype=dtype or torch.float32, source=str(ref), revision=ref.revision
    )


__all__ = [
    "CheckpointError",
    "ConfigError",
    "Emotion2vec",
    "Emotion2vecConfig",
    "Emotion2vecOutput",
    "InputTooShortError",
    "ModelBundle",
    "ModelSourceError",
    "load_bundle",
    "load_model",
    "parse_source",
    "resolve",
]
