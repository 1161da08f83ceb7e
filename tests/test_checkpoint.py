"""Every published layout loads through the same strict loader and gives identical outputs."""

import os
import pickle

import pytest
import torch

from pipeline.model import CheckpointError, load_bundle
from pipeline.testing.checkpoints import copy_reference_files, random_model, tiny, write_checkpoint

from .conftest import random_clips


@pytest.fixture(scope="module")
def model():
    return random_model(tiny(num_heads=6, embed_dim=48), seed=7)


def run(bundle, clip):
    with torch.no_grad():
        return bundle.model(torch.from_numpy(clip)[None])


def test_all_layouts_load_and_agree(tmp_path, model):
    clip = random_clips([20_000])[0]
    outs = {}
    for layout in ("hub", "bare", "safetensors", "fairseq"):
        b = load_bundle(write_checkpoint(model, tmp_path / layout, layout))
        assert len(b.weights_sha256) == 64 and b.sample_rate == 16_000 and b.normalize
        outs[layout] = run(b, clip)
    ref = outs["hub"]
    assert ref.scores is not None
    for layout, out in outs.items():
        assert torch.equal(out.frames, ref.frames), layout
    assert outs["fairseq"].scores is None  # the pre-training checkpoint has no head
    assert outs["bare"].scores is not None and torch.equal(outs["bare"].scores, ref.scores)


def test_bundle_carries_the_preprocessing_contract(tmp_path, model):
    b = load_bundle(write_checkpoint(model, tmp_path, "hub"))
    assert b.labels == [
        "angry",
        "disgusted",
        "fearful",
        "happy",
        "neutral",
        "other",
        "sad",
        "surprised",
        "unknown",
    ]
    assert b.embed_dim == 48 and b.masked_labels == []
    assert (b.input.sample_rate, b.input.receptive_field, b.input.hop) == (16_000, 400, 320)
    assert b.sample_rate == b.input.sample_rate and b.input.frame_rate == 50.0
    assert b.fingerprint()["weights_sha256"] == b.weights_sha256


def test_unprefixed_and_state_dict_wrapped_hub_files(tmp_path, model):
    d = write_checkpoint(model, tmp_path / "a", "hub", prefix="")
    sd = torch.load(d / "model.pt", weights_only=True)["model"]
    torch.save({"state_dict": {"module." + k: v for k, v in sd.items()}}, d / "model.pt")
    clip = random_clips([9_000])[0]
    ref = run(load_bundle(write_checkpoint(model, tmp_path / "b", "hub")), clip)
    assert torch.equal(run(load_bundle(d), clip).frames, ref.frames)


def test_4d_alibi_scale_is_upgraded(tmp_path, model):
    path = write_checkpoint(model, tmp_path, "bare")
    sd = torch.load(path, weights_only=True)
    sd["modality_encoders.AUDIO.alibi_scale"] = sd["modality_encoders.AUDIO.alibi_scale"].squeeze(0)
    assert sd["modality_encoders.AUDIO.alibi_scale"].dim() == 4
    torch.save(sd, path)
    b = load_bundle(path)
    assert torch.equal(
        b.model.modality_encoders["AUDIO"].alibi_scale, model.modality_encoders["AUDIO"].alibi_scale
    )


def test_missing_key_is_named(tmp_path, model):
    path = write_checkpoint(model, tmp_path, "bare")
    sd = torch.load(path, weights_only=True)
    del sd["blocks.1.mlp.fc2.bias"]
    torch.save(sd, path)
    with pytest.raises(CheckpointError, match=r"missing keys \(1\): blocks\.1\.mlp\.fc2\.bias"):
        load_bundle(path)


def test_unknown_key_is_named_and_shape_mismatch_reported(tmp_path, model):
    path = write_checkpoint(model, tmp_path, "bare")
    sd = torch.load(path, weights_only=True)
    sd["blocks.2.attn.qkv.weight"] = torch.zeros(3)  # a block the config does not have
    sd["proj.bias"] = torch.zeros(5)
    torch.save(sd, path)
    with pytest.raises(CheckpointError) as e:
        load_bundle(path)
    assert "unexpected keys (1): blocks.2.attn.qkv.weight" in str(e.value)
    assert "proj.bias" in str(e.value)


def test_config_that_disagrees_with_weights_fails_loudly(tmp_path, model):
    """The published large config beside tiny weights: shapes disagree, nothing loads silently."""
    d = write_checkpoint(model, tmp_path, "hub")
    copy_reference_files(tmp_path / "large")
    (tmp_path / "large" / "model.pt").write_bytes((d / "model.pt").read_bytes())
    with pytest.raises(CheckpointError, match="shape mismatches"):
        load_bundle(tmp_path / "large")


def test_legacy_fairseq_pickle_with_omegaconf_config_loads_without_fairseq(tmp_path, model):
    """Old fairseq checkpoints pickle an omegaconf DictConfig (and enums) as `cfg`: weights_only
    refuses them, the restricted unpickler reads them as inert data."""
    from omegaconf import OmegaConf

    src = write_checkpoint(model, tmp_path / "fs", "fairseq")
    ckpt = torch.load(src, weights_only=True)
    ckpt["cfg"] = OmegaConf.create(ckpt["cfg"])
    legacy = tmp_path / "legacy.pt"
    torch.save(ckpt, legacy)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(legacy, weights_only=True)
    clip = random_clips([12_000])[0]
    assert torch.equal(run(load_bundle(legacy), clip).frames, run(load_bundle(src), clip).frames)


def test_legacy_fairseq_pickle_with_a_typed_omegaconf_config_loads(tmp_path, model):
    """fairseq's configs are structured (dataclass) omegaconf configs: their nodes are typed
    (IntegerNode, FloatNode, ...) and their pickle names the value types, as protocol 2 spells them
    (`__builtin__.long`, `__builtin__.unicode`, `__builtin__.float`, `__builtin__.bool`). Such a file
    must load like the untyped one, with the same config and outputs."""
    from omegaconf import OmegaConf
    from omegaconf.nodes import BooleanNode, FloatNode, IntegerNode, StringNode

    def typed(v):
        if isinstance(v, dict):
            return {k: typed(x) for k, x in v.items()}
        if isinstance(v, list):
            return [typed(x) for x in v]
        for kind, node in ((bool, BooleanNode), (int, IntegerNode), (float, FloatNode), (str, StringNode)):
            if isinstance(v, kind):
                return node(v)
        return v

    src = write_checkpoint(model, tmp_path / "fs", "fairseq")
    ckpt = torch.load(src, weights_only=True)
    ckpt["cfg"] = OmegaConf.create(typed(ckpt["cfg"]))
    assert isinstance(ckpt["cfg"]["model"]._get_node("embed_dim"), IntegerNode)
    legacy = tmp_path / "legacy.pt"
    torch.save(ckpt, legacy)
    with pytest.raises(pickle.UnpicklingError):
        torch.load(legacy, weights_only=True)
    got, want = load_bundle(legacy), load_bundle(src)
    assert got.config == want.config and got.config.norm_eps == pytest.approx(model.cfg.norm_eps)
    clip = random_clips([12_000])[0]
    assert torch.equal(run(got, clip).frames, run(want, clip).frames)


def test_pre_zip_torch_save_format_loads_and_agrees(tmp_path, model):
    """Zip-format files are memory-mapped; a file in torch.save's older (pre-1.6) format cannot be
    and is read whole, with the same result."""
    import zipfile

    src = write_checkpoint(model, tmp_path / "zip", "hub")
    old = write_checkpoint(model, tmp_path / "old", "hub")
    torch.save(
        torch.load(src / "model.pt", weights_only=True),
        old / "model.pt",
        _use_new_zipfile_serialization=False,
    )
    assert zipfile.is_zipfile(src / "model.pt") and not zipfile.is_zipfile(old / "model.pt")
    with pytest.raises(RuntimeError, match="mmap"):
        torch.load(old / "model.pt", weights_only=True, mmap=True)
    clip = random_clips([16_000])[0]
    a, b = run(load_bundle(src), clip), run(load_bundle(old), clip)
    assert torch.equal(a.frames, b.frames) and torch.equal(a.scores, b.scores)


def test_weights_are_hashed_unless_the_same_file_was_hashed_already(tmp_path, model):
    """A model actor beside the driver takes the driver's hash for the same file (same file id)
    instead of reading the weights again; a changed file is hashed again."""
    import hashlib

    path = write_checkpoint(model, tmp_path, "hub")
    weights = path / "model.pt"
    real = hashlib.sha256(weights.read_bytes()).hexdigest()
    first = load_bundle(path)
    assert first.weights_sha256 == real
    # a hash that is not the file's: taken as given only because the file id says it was this file's
    given = load_bundle(path, known_sha256={first.weights_file_id: "f" * 64})
    assert given.weights_sha256 == "f" * 64
    stat = weights.stat()
    os.utime(weights, ns=(stat.st_atime_ns, stat.st_mtime_ns + 1_000_000))  # the file changed since
    again = load_bundle(path, known_sha256={first.weights_file_id: "f" * 64})
    assert again.weights_file_id != first.weights_file_id and again.weights_sha256 == real


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_pickle_that_would_run_code_is_refused(tmp_path, model):
    marker = tmp_path / "pwned"
    path = write_checkpoint(model, tmp_path, "bare")
    sd = torch.load(path, weights_only=True)
    torch.save({"model": sd, "cfg": {"model": _Exploit(marker)}}, path)
    with pytest.raises(CheckpointError, match=r"refused to load.*(posix|os)\.system"):
        load_bundle(path)
    assert not marker.exists()


def test_not_a_checkpoint(tmp_path):
    (tmp_path / "config.yaml").write_text("model_conf: {}\n")
    (tmp_path / "model.pt").write_bytes(b"this is not a checkpoint")
    with pytest.raises(CheckpointError, match="model.pt"):
        load_bundle(tmp_path / "model.pt")


def test_head_without_tokens_of_other_size_is_an_error(tmp_path):
    m = random_model(tiny(num_heads=4, embed_dim=32, num_classes=5), seed=1)
    path = write_checkpoint(m, tmp_path, "bare", tokens=["a", "b", "c", "d", "e"])
    (tmp_path / "tokens.txt").unlink()
    with pytest.raises(CheckpointError, match="5 classes but there is no tokens.txt"):
        load_bundle(path)


@pytest.mark.parametrize("layout", ["safetensors", "hub", "bare"])
def test_a_truncated_weights_file_is_a_checkpoint_error_naming_it(tmp_path, model, layout):
    """A partial download: every weights format fails as a CheckpointError naming the file (the job's
    `model.source: ...` line, exit 2), not as its reader's own exception type."""
    src = write_checkpoint(model, tmp_path, layout)
    weights = src / "model.pt" if src.is_dir() else src
    data = weights.read_bytes()
    weights.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=weights.name):
        load_bundle(src)


@pytest.mark.parametrize("layout", ["safetensors", "hub", "bare"])
def test_a_git_lfs_pointer_instead_of_the_weights_says_so(tmp_path, model, layout):
    """A hub repo cloned with git but without git-lfs holds small pointer files where the weights
    should be: the error says so and how to fetch them, not that the file was refused as unsafe."""
    src = write_checkpoint(model, tmp_path, layout)
    weights = src / "model.pt" if src.is_dir() else src
    weights.write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1164421421\n"
    )
    with pytest.raises(CheckpointError, match=f"{weights.name}.*Git LFS pointer") as e:
        load_bundle(src)
    assert "refused" not in str(e.value)


@pytest.mark.parametrize(
    "name, content",
    [
        ("tokens.txt", "\n".join(["生气/angry"] * 9).encode("utf-16")),  # Notepad's "Unicode"
        ("config.yaml", "# 模型\nmodel_conf: {}\n".encode("gbk")),
        ("configuration.json", b'["init_param", "model.pt"]'),
    ],
)
def test_a_text_file_of_the_layout_that_cannot_be_read_is_a_checkpoint_error_naming_it(
    tmp_path, model, name, content
):
    """The layout's text files (tokens.txt, config.yaml: UTF-8; configuration.json: a JSON object): one
    in another encoding or shape fails as a CheckpointError naming it (the job's `model.source: ...`
    line, exit 2), not as a UnicodeDecodeError or AttributeError."""
    src = write_checkpoint(model, tmp_path, "hub")
    (src / name).write_bytes(content)
    with pytest.raises(CheckpointError, match=name):
        load_bundle(src)


def test_a_fairseq_file_takes_the_waveform_normalisation_from_its_task_config(tmp_path, model):
    """fairseq keeps `normalize` in the task's config (`cfg.task.normalize`: audio_pretraining), not
    the model's: a pre-training file whose task says false must run on the raw waveform."""
    import dataclasses

    src = write_checkpoint(model, tmp_path, "fairseq")
    ckpt = torch.load(src, weights_only=True)
    del ckpt["cfg"]["model"]["normalize"]
    ckpt["cfg"]["task"]["normalize"] = False
    torch.save(ckpt, src)
    bundle = load_bundle(src)
    # independently: the same weights built with normalisation off (random_model's draws do not depend on it)
    raw = random_model(dataclasses.replace(model.cfg, normalize=False), seed=7)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in raw.state_dict().items())
    clip = random_clips([12_000], seed=3)[0] * 0.1 + 0.05  # quiet, with an offset: normalising changes it
    with torch.no_grad():
        want, normalised = raw(torch.from_numpy(clip)[None]), model(torch.from_numpy(clip)[None])
    assert not bundle.normalize
    got = run(bundle, clip)
    torch.testing.assert_close(got.frames, want.frames, atol=1e-5, rtol=0)
    assert (got.frames - normalised.frames).abs().max() > 1e-2


def test_a_file_that_is_not_a_checkpoint_is_not_reported_as_refused_for_safety(tmp_path, model):
    """An HTML page saved as model.pt (a download of a hub's web page instead of the file): the error
    says the file is not a readable checkpoint; "refused" is for pickles that name forbidden code."""
    src = write_checkpoint(model, tmp_path, "hub")
    (src / "model.pt").write_text("<!DOCTYPE html>\n<html><body>Not Found</body></html>\n")
    with pytest.raises(CheckpointError, match="model.pt: not a readable PyTorch checkpoint") as e:
        load_bundle(src)
    assert "refused" not in str(e.value)
