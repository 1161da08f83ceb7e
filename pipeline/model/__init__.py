"""emotion2vec in plain PyTorch: config, input contract, encoder, checkpoint loading and hub resolution.

`INPUT` is the input contract (`InputSpec`) of the released models, for code that needs it before a
checkpoint is loaded; a loaded `ModelBundle` carries its own as `bundle.input`.

Imports nothing else from `pipeline`. The names that need torch (the encoder, checkpoint loading) are
imported on first use, so `from pipeline.model import INPUT` stays cheap in a decode worker.
"""

from importlib import import_module
from typing import TYPE_CHECKING

from .config import INPUT, ConfigError, Emotion2vecConfig
from .hub import ModelSourceError, parse_source, resolve
from .inputs import SAMPLE_RATE, InputSpec

_LAZY = {
    "CheckpointError": ".checkpoint",
    "ModelBundle": ".checkpoint",
    "load_bundle": ".checkpoint",
    "Emotion2vec": ".encoder",
    "Emotion2vecOutput": ".encoder",
    "InputTooShortError": ".encoder",
}

if TYPE_CHECKING:
    from .checkpoint import CheckpointError, ModelBundle, load_bundle
    from .encoder import Emotion2vec, Emotion2vecOutput, InputTooShortError


def __getattr__(name: str):
    if name in _LAZY:
        value = getattr(import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_model(
    source: str,
    *,
    revision: str | None = None,
    device: str = "cpu",
    dtype=None,
    cache_dir: str | None = None,
    offline: bool | None = None,
    known_sha256: dict[str, str] | None = None,
) -> "ModelBundle":
    """Resolve `source` (local path, hf:/ms: reference or short name) and load it (`known_sha256`:
    see load_bundle)."""
    import torch

    from .checkpoint import load_bundle

    path, ref = resolve(source, revision=revision, cache_dir=cache_dir, offline=offline)
    return load_bundle(
        path,
        device=device,
        dtype=dtype or torch.float32,
        source=str(ref),
        revision=ref.revision,
        known_sha256=known_sha256,
    )


__all__ = [
    "INPUT",
    "SAMPLE_RATE",
    "CheckpointError",
    "ConfigError",
    "Emotion2vec",
    "Emotion2vecConfig",
    "Emotion2vecOutput",
    "InputSpec",
    "InputTooShortError",
    "ModelBundle",
    "ModelSourceError",
    "load_bundle",
    "load_model",
    "parse_source",
    "resolve",
]
