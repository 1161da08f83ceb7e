"""Checkpoints our writer did not make: FunASR's own `Emotion2vec` module is built from a config,
its `state_dict()` is saved in each published layout with torch.save / safetensors, and our loader
(strict) must give what FunASR's forward gives on the same audio.

Layouts (docs/model.md, "Checkpoint formats"): a FunASR/ModelScope model directory with `d2v_model.`
backbone keys under `{"model": ...}` and `scope_map` in config.yaml; a fairseq pre-training file
(`{"model": ..., "cfg": {"model": ...}}`, no head, decoder tensors included); a bare `model.pt`; a
`model.safetensors` written by `safetensors.torch.save_file`.
"""

import json
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F
import yaml

from pipeline.model import load_bundle
from pipeline.testing.checkpoints import DATA, model_conf, tiny

from .conftest import random_clips

pytestmark = pytest.mark.reference

LENGTHS = [400, 16_000, 27_777]
TOKENS = (DATA / "tokens.txt").read_text(encoding="utf-8").split("\n")


def funasr_model(conf: dict, num_classes: int, seed: int) -> torch.nn.Module:
    """FunASR's module, every parameter moved off its init (LayerNorms at 1/0, zero extra tokens,
    ALiBi scales at 1) so that a tensor loaded into the wrong place shows; one ALiBi scale negative
    so the clamp is exercised."""
    from funasr.models.emotion2vec.model import Emotion2vec

    torch.manual_seed(seed)
    kw = {"vocab_size": num_classes} if num_classes else {}
    model = Emotion2vec(model_conf=conf["model_conf"], **kw).eval()
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.add_(
                (0.1 if p.dim() == 1 or "extra_tokens" in name else 0.02) * torch.randn(p.shape, generator=g)
            )
        model.modality_encoders["AUDIO"].alibi_scale.view(-1)[2] = -0.4
    return model


def funasr_forward(model, clip: np.ndarray):
    """FunASR's `Emotion2vec.inference` for one clip: layer norm over the clip, extract_features
    without a padding mask, mean of the frames into the head."""
    x = torch.from_numpy(clip)
    with torch.no_grad():
        frames = model.extract_features(F.layer_norm(x, x.shape).view(1, -1), padding_mask=None)["x"]
        scores = model.proj(frames.mean(dim=1)).softmax(-1)[0] if model.proj is not None else None
    return frames[0], scores


def write_config(d, conf: dict, scope_map=None) -> None:
    conf = dict(conf, scope_map=scope_map) if scope_map else conf
    (d / "config.yaml").write_text(
        yaml.safe_dump(conf, allow_unicode=True, sort_keys=False), encoding="utf-8"
    )


def modelscope_dir(d, model, conf):
    """configuration.json + config.yaml (scope_map) + model.pt {"model": d2v_model.<backbone>, proj} + tokens.txt."""
    d.mkdir()
    state = {(k if k.startswith("proj.") else "d2v_model." + k): v for k, v in model.state_dict().items()}
    torch.save({"model": state, "optimizer": {}, "epoch": 1}, d / "model.pt")
    write_config(d, conf, scope_map=["d2v_model.", "none"])
    shutil.copy(DATA / "configuration.json", d / "configuration.json")
    shutil.copy(DATA / "tokens.txt", d / "tokens.txt")
    return d


def bare_file(d, model, conf):
    d.mkdir()
    torch.save(model.state_dict(), d / "model.pt")
    write_config(d, conf)
    shutil.copy(DATA / "tokens.txt", d / "tokens.txt")
    return d / "model.pt"


def safetensors_file(d, model, conf):
    from safetensors.torch import save_file

    d.mkdir()
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(d / "model.safetensors"))
    write_config(d, conf)
    shutil.copy(DATA / "tokens.txt", d / "tokens.txt")
    return d / "model.safetensors"


@pytest.mark.parametrize("write", [modelscope_dir, bare_file, safetensors_file])
def test_funasr_written_checkpoint_loads_and_matches_funasr(tmp_path, write):
    conf = model_conf(tiny(num_heads=6, embed_dim=48))
    ref = funasr_model(conf, num_classes=len(TOKENS), seed=5)
    assert any(k.startswith("modality_encoders.AUDIO.decoder.") for k in ref.state_dict())  # dropped by name
    bundle = load_bundle(write(tmp_path / "ckpt", ref, conf))
    assert bundle.tokens == TOKENS
    for clip in random_clips(LENGTHS, seed=5):
        frames, scores = funasr_forward(ref, clip)
        with torch.no_grad():
            out = bundle.model(torch.from_numpy(clip)[None])
        assert out.frames.shape[1:] == frames.shape
        np.testing.assert_allclose(out.frames[0].numpy(), frames.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(out.scores[0].numpy(), scores.numpy(), atol=1e-4, rtol=0)


def test_fairseq_pretraining_file_from_funasr_state_loads_and_matches(tmp_path):
    """emotion2vec_base.pt: un-prefixed weights and the pre-training decoder under `model`, the
    architecture under `cfg.model`, no head and no config file beside it."""
    conf = model_conf(tiny(num_heads=4, embed_dim=32))
    ref = funasr_model(conf, num_classes=0, seed=6)
    path = tmp_path / "emotion2vec_base.pt"
    cfg = {"model": conf["model_conf"], "task": {"_name": "audio_pretraining", "normalize": True}}
    torch.save({"model": ref.state_dict(), "cfg": json.loads(json.dumps(cfg)), "extra_state": {}}, path)
    bundle = load_bundle(path)
    assert bundle.tokens == [] and bundle.model.proj is None
    for clip in random_clips(LENGTHS, seed=6):
        frames, _ = funasr_forward(ref, clip)
        with torch.no_grad():
            out = bundle.model(torch.from_numpy(clip)[None])
        np.testing.assert_allclose(out.frames[0].numpy(), frames.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(out.embedding[0].numpy(), frames.mean(0).numpy(), atol=1e-4, rtol=0)


def test_a_checkpoint_without_affine_layer_norms_is_refused_by_its_config_key(tmp_path):
    """`norm_affine: false` (transformer LayerNorms without weight and bias) is a variant FunASR
    builds and this encoder does not implement: the load names the config key, as for the other
    unsupported variants, instead of blaming the checkpoint for 'missing keys'."""
    from pipeline.model import CheckpointError

    conf = model_conf(tiny(num_heads=6, embed_dim=48))
    conf["model_conf"]["norm_affine"] = False
    ref = funasr_model(conf, num_classes=len(TOKENS), seed=7)
    assert not any(k.endswith("norm1.weight") for k in ref.state_dict())  # FunASR's own model has none
    with pytest.raises(CheckpointError, match=r"norm_affine=False is not supported") as e:
        load_bundle(bare_file(tmp_path / "ckpt", ref, conf))
    assert "missing keys" not in str(e.value)


def test_a_model_without_extra_tokens_from_funasr_loads_and_matches(tmp_path):
    """`num_extra_tokens: 0`: FunASR's module has no `extra_tokens` parameter at all, so its
    checkpoint has no such key; there is nothing to load for it, and the outputs must match."""
    conf = model_conf(tiny(num_heads=6, embed_dim=48))
    conf["model_conf"]["modalities"]["audio"]["num_extra_tokens"] = 0
    ref = funasr_model(conf, num_classes=len(TOKENS), seed=8)
    assert not any(k.endswith("extra_tokens") for k in ref.state_dict())
    bundle = load_bundle(bare_file(tmp_path / "ckpt", ref, conf))
    for clip in random_clips(LENGTHS, seed=8):
        frames, scores = funasr_forward(ref, clip)
        with torch.no_grad():
            out = bundle.model(torch.from_numpy(clip)[None])
        np.testing.assert_allclose(out.frames[0].numpy(), frames.numpy(), atol=1e-4, rtol=0)
        np.testing.assert_allclose(out.scores[0].numpy(), scores.numpy(), atol=1e-4, rtol=0)
