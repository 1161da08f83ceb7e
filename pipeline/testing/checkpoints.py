"""Randomly initialised emotion2vec checkpoints written in the official on-disk layouts.

No weights can be downloaded on machines without hub access (CI, air-gapped clusters, this repo's
tests), so tests and the demo write random-init checkpoints in exactly the published formats and
load them through the real loader. The `config.yaml` is the published emotion2vec+ large config
(`data/`) with the architecture fields replaced, so FunASR's reference code can build the same
model from it.
"""

from __future__ import annotations

import copy
import json
import shutil
from pathlib import Path
from typing import Any

import torch
import yaml

from .. import model as model_package
from ..model.checkpoint import DEFAULT_TOKENS
from ..model.config import Emotion2vecConfig
from ..model.encoder import Emotion2vec

DATA = Path(model_package.__file__).parent / "data"  # the published config files shipped with the model
TEMPLATE_CONFIG = DATA / "emotion2vec_plus_large.config.yaml"
LAYOUTS = ("hub", "fairseq", "bare", "safetensors")


def tiny(num_heads: int = 4, embed_dim: int = 32, num_classes: int = 9) -> Emotion2vecConfig:
    """A few-hundred-kB model with the real structure (4+8 blocks shrunk to 1+2, 32 CNN channels)."""
    ch = 32
    return Emotion2vecConfig(
        embed_dim=embed_dim,
        num_heads=num_heads,
        depth=2,
        prenet_depth=1,
        feature_encoder_spec=((ch, 10, 5),) + ((ch, 3, 2),) * 4 + ((ch, 2, 2),) * 2,
        num_classes=num_classes,
    )


def model_conf(cfg: Emotion2vecConfig) -> dict[str, Any]:
    """The published `config.yaml` with our architecture fields written in."""
    conf = yaml.safe_load(TEMPLATE_CONFIG.read_text(encoding="utf-8"))
    mc = conf["model_conf"]
    mc.update(
        embed_dim=cfg.embed_dim,
        num_heads=cfg.num_heads,
        depth=cfg.depth,
        mlp_ratio=cfg.mlp_ratio,
        norm_eps=cfg.norm_eps,
        normalize=cfg.normalize,
    )
    spec = " + ".join(f"[({c}, {k}, {s})]" for c, k, s in cfg.feature_encoder_spec)
    audio = mc["modalities"]["audio"]
    audio.update(
        prenet_depth=cfg.prenet_depth,
        model_depth=cfg.depth,
        num_alibi_heads=cfg.num_heads,
        feature_encoder_spec=spec,
        conv_pos_width=cfg.conv_pos_width,
        conv_pos_depth=cfg.conv_pos_depth,
        conv_pos_groups=cfg.conv_pos_groups,
        num_extra_tokens=cfg.num_extra_tokens,
        learned_alibi_scale_per_head=cfg.alibi_scale_per_head,
    )
    audio["decoder"]["decoder_dim"] = _decoder_dim(cfg)
    return conf


def random_model(cfg: Emotion2vecConfig, seed: int = 0) -> Emotion2vec:
    """PyTorch's default init, then every tensor perturbed so no parameter sits at a trivial value
    (LayerNorm weights near 1, biases and extra tokens non-zero, one ALiBi scale negative so the
    clamp is exercised)."""
    g = torch.Generator().manual_seed(seed)
    torch.manual_seed(seed)
    model = Emotion2vec(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            noise = torch.randn(p.shape, generator=g)
            if name.endswith("alibi_scale"):
                p.copy_(0.5 + 0.5 * noise.abs())
                if p.numel() > 1:
                    p.view(-1)[1] = -0.3
            elif "norm" in name or name.endswith((".2.1.weight", ".2.1.bias", "project_features.1.weight")):
                p.add_(0.1 * noise)
            elif name.endswith("extra_tokens"):
                p.copy_(0.5 * noise)
            else:
                p.add_(0.02 * noise)
    return model


def _decoder_state(cfg: Emotion2vecConfig, g: torch.Generator) -> dict[str, torch.Tensor]:
    """Pre-training decoder tensors as fairseq checkpoints carry them (dropped by the loader)."""
    dd = _decoder_dim(cfg)
    pre = "modality_encoders.AUDIO.decoder."
    return {
        pre + "blocks.0.0.weight": torch.randn(dd, cfg.embed_dim // 16, 7, generator=g),
        pre + "blocks.0.0.bias": torch.randn(dd, generator=g),
        pre + "proj.weight": torch.randn(cfg.embed_dim, dd, generator=g),
        pre + "proj.bias": torch.randn(cfg.embed_dim, generator=g),
    }


def write_checkpoint(
    model: Emotion2vec,
    out_dir: str | Path,
    layout: str = "hub",
    tokens: list[str] | None = None,
    prefix: str = "d2v_model.",
) -> Path:
    """Write `model` in one of the published layouts; returns what to pass as `model.source`.

    hub:         configuration.json + config.yaml + model.pt (backbone under `prefix`, head bare,
                 wrapped in {"model": ...} next to optimizer-like state) + tokens.txt
    fairseq:     emotion2vec_base.pt = {"model": un-prefixed weights + decoder, "cfg": {"model": ...}}
    bare:        model.pt (flat state dict) + config.yaml (+ tokens.txt)
    safetensors: model.safetensors + config.yaml (+ tokens.txt)
    """
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be one of {LAYOUTS}, got {layout!r}")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    cfg = model.cfg
    conf = model_conf(cfg)
    state = {k: v.detach().clone().float().contiguous() for k, v in model.state_dict().items()}
    has_head = cfg.num_classes > 0
    tokens = tokens if tokens is not None else (list(DEFAULT_TOKENS)[: cfg.num_classes] if has_head else [])

    def write_tokens() -> None:
        if has_head:
            (out / "tokens.txt").write_text("\n".join(tokens), encoding="utf-8")  # no trailing newline

    if layout == "hub":
        scoped = {(k if k.startswith("proj.") else prefix + k): v for k, v in state.items()}
        torch.save(
            {"model": scoped, "optimizer": {"state": {}, "param_groups": []}, "epoch": 3}, out / "model.pt"
        )
        conf["scope_map"] = [prefix, "none"] if prefix else conf.get("scope_map")
        (out / "config.yaml").write_text(
            yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding="utf-8"
        )
        meta = json.loads((DATA / "configuration.json").read_text(encoding="utf-8"))
        if not has_head:
            meta["file_path_metas"].pop("tokenizer_conf", None)
        (out / "configuration.json").write_text(json.dumps(meta, indent=2), encoding="utf-8")
        write_tokens()
        return out
    if layout == "fairseq":
        g = torch.Generator().manual_seed(1)
        weights = {**state, **_decoder_state(cfg, g)}
        weights.pop("proj.weight", None)
        weights.pop("proj.bias", None)
        fs_cfg = {
            "model": copy.deepcopy(conf["model_conf"]),
            "task": {
                "_name": "audio_pretraining",
                "normalize": cfg.normalize,
                "sample_rate": cfg.input.sample_rate,
            },
        }
        torch.save(
            {
                "model": weights,
                "cfg": fs_cfg,
                "optimizer_history": [{"num_updates": 1}],
                "extra_state": {"epoch": 1},
            },
            out / "emotion2vec_base.pt",
        )
        return out / "emotion2vec_base.pt"
    (out / "config.yaml").write_text(
        yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )
    write_tokens()
    if layout == "bare":
        torch.save(state, out / "model.pt")
        return out / "model.pt"
    from safetensors.torch import save_file

    save_file(state, str(out / "model.safetensors"))
    return out / "model.safetensors"


def copy_reference_files(out_dir: str | Path) -> None:
    """Copy the published emotion2vec+ large config files (without weights) into `out_dir`."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("configuration.json", "tokens.txt"):
        shutil.copy(DATA / name, out / name)
    shutil.copy(TEMPLATE_CONFIG, out / "config.yaml")


def _decoder_dim(cfg: Emotion2vecConfig) -> int:
    return 16 * max(1, cfg.embed_dim // 32)  # a multiple of decoder_groups (16); 384 for D=768
