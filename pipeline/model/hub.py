"""Resolve `model.source` to a local checkpoint path, downloading through the hubs' own clients.

Accepted forms:
  * a local directory or file;
  * `hf:owner/name[@revision]` (Hugging Face, `huggingface_hub`);
  * `ms:owner/name[@revision]` (ModelScope, `modelscope`, extra `[hub]`);
  * a short name (`emotion2vec_plus_large`, ...) or a FunASR id (`iic/emotion2vec_plus_large`),
    mapped to its hub repo (docs/model.md, "Models").

Offline (`offline=True`, or `HF_HUB_OFFLINE=1`) only the local cache is used. A source that is
neither cached nor reachable raises `ModelSourceError` saying how to pre-download it.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path


class ModelSourceError(RuntimeError):
    pass


# short name -> (hub, repo id). Hugging Face where an official repo exists (docs/model.md, "Models").
SHORT_NAMES: dict[str, tuple[str, str]] = {
    "emotion2vec_base": ("hf", "emotion2vec/emotion2vec_base"),
    "emotion2vec_base_finetuned": ("ms", "iic/emotion2vec_base_finetuned"),
    "emotion2vec_plus_seed": ("hf", "emotion2vec/emotion2vec_plus_seed"),
    "emotion2vec_plus_base": ("hf", "emotion2vec/emotion2vec_plus_base"),
    "emotion2vec_plus_large": ("hf", "emotion2vec/emotion2vec_plus_large"),
}
# FunASR / ModelScope ids, as users paste them from FunASR examples.
for _name in list(SHORT_NAMES):
    SHORT_NAMES[f"iic/{_name}"] = ("ms", f"iic/{_name}")
    SHORT_NAMES[f"damo/{_name}"] = ("ms", f"iic/{_name}")


@dataclass(frozen=True)
class ModelRef:
    hub: str  # "local" | "hf" | "ms"
    repo: str  # path for local
    revision: str | None = None

    def __str__(self) -> str:
        if self.hub == "local":
            return self.repo
        return f"{self.hub}:{self.repo}" + (f"@{self.revision}" if self.revision else "")


def parse_source(source: str, revision: str | None = None) -> ModelRef:
    """Classify a `model.source` string without touching the network."""
    s = source.strip()
    if not s:
        raise ModelSourceError("model.source is empty")
    for prefix in ("hf:", "ms:"):
        if s.startswith(prefix):
            repo, _, rev = s[len(prefix) :].partition("@")
            if repo.count("/") != 1 or not all(repo.split("/")):
                raise ModelSourceError(f"model.source {source!r}: expected {prefix}owner/name[@revision]")
            return ModelRef(prefix[:-1], repo, rev or revision)
    name, _, rev = s.partition("@")
    if name in SHORT_NAMES and not Path(s).exists():
        hub, repo = SHORT_NAMES[name]
        return ModelRef(hub, repo, rev or revision)
    return ModelRef("local", str(Path(s).expanduser()), None)


def resolve(
    source: str, revision: str | None = None, cache_dir: str | None = None, offline: bool | None = None
) -> tuple[Path, ModelRef]:
    """-> (local path of the checkpoint directory or file, parsed reference)."""
    ref = parse_source(source, revision)
    if offline is None:
        # huggingface_hub's own reading of the variable, so that both agree on what "off" or "no" mean
        offline = os.environ.get("HF_HUB_OFFLINE", "").upper() in ("1", "ON", "YES", "TRUE")
    if ref.hub == "local":
        p = Path(ref.repo)
        if not p.exists():
            known = ", ".join(sorted(k for k in SHORT_NAMES if "/" not in k))
            raise ModelSourceError(
                f"model.source {source!r}: no such file or directory, and not a hub reference "
                f"(use hf:owner/name, ms:owner/name or one of: {known})"
            )
        return p, ref
    return _snapshot(ref, cache_dir, offline), ref


def _how_to(ref: ModelRef) -> str:
    if ref.hub == "hf":
        rev = f" --revision {ref.revision}" if ref.revision else ""
        return (
            f"pre-download it on a machine with access: `hf download {ref.repo}{rev} --local-dir DIR` "
            f"(or `huggingface-cli download ...`), copy DIR here and set model.source: DIR; or point "
            f"HF_HOME / model.cache_dir at a cache that holds it"
        )
    rev = f" --revision {ref.revision}" if ref.revision else ""
    return (
        f"pre-download it on a machine with access: `modelscope download --model {ref.repo}{rev} --local_dir DIR`, "
        f"copy DIR here and set model.source: DIR"
    )


def _snapshot(ref: ModelRef, cache_dir: str | None, offline: bool) -> Path:
    """Download (or find in the cache) a whole model repo with the hub's own client."""
    if ref.hub == "hf":
        from huggingface_hub import snapshot_download
    else:
        try:
            from modelscope.hub.snapshot_download import snapshot_download
        except ImportError as e:
            raise ModelSourceError(
                f"model {ref}: ModelScope sources need the `modelscope` package: "
                f"pip install 'emotion2vec-pipeline[hub]'; or {_how_to(ref)}"
            ) from e
    try:
        path = snapshot_download(
            ref.repo, revision=ref.revision, cache_dir=cache_dir, local_files_only=offline
        )
    except Exception as e:  # noqa: BLE001 - any hub failure ends the same way for the user
        mode = (
            "offline mode, not in the local cache"
            if offline
            else "not in the local cache and the hub is unreachable"
        )
        raise ModelSourceError(
            f"model {ref}: {mode} ({type(e).__name__}: {_short(e)}); {_how_to(ref)}"
        ) from e
    return Path(path)


def _short(e: Exception, n: int = 200) -> str:
    s = str(e).strip().splitlines()[0] if str(e).strip() else ""
    return s[:n]
