"""Source resolution and the hub cache, against a pre-populated local Hugging Face cache (the hubs
are unreachable here, which is also what the offline error path needs)."""

import pytest
import torch

from pipeline.model import ModelSourceError, load_model, parse_source
from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint


def test_parse_forms(tmp_path):
    assert (
        str(parse_source("hf:emotion2vec/emotion2vec_plus_base@abc"))
        == "hf:emotion2vec/emotion2vec_plus_base@abc"
    )
    r = parse_source("emotion2vec_plus_large")
    assert (r.hub, r.repo) == ("hf", "emotion2vec/emotion2vec_plus_large")
    r = parse_source("emotion2vec_base_finetuned")
    assert (r.hub, r.repo) == ("ms", "iic/emotion2vec_base_finetuned")
    r = parse_source("iic/emotion2vec_plus_seed", revision="v2.0.4")
    assert (r.hub, r.repo, r.revision) == ("ms", "iic/emotion2vec_plus_seed", "v2.0.4")
    assert parse_source(str(tmp_path)).hub == "local"
    with pytest.raises(ModelSourceError, match="owner/name"):
        parse_source("hf:not-a-repo")


def populate_hf_cache(cache, repo, model, commit="0123456789abcdef0123456789abcdef01234567"):
    """The layout huggingface_hub itself writes: models--owner--name/{refs/main, snapshots/<commit>/...}."""
    root = cache / ("models--" + repo.replace("/", "--"))
    snap = root / "snapshots" / commit
    write_checkpoint(model, snap, "hub")
    (root / "refs").mkdir(parents=True)
    (root / "refs" / "main").write_text(commit)
    return snap


def test_short_name_resolves_from_the_local_cache_offline(tmp_path):
    model = random_model(tiny(), seed=2)
    snap = populate_hf_cache(tmp_path, "emotion2vec/emotion2vec_plus_base", model)
    bundle = load_model("emotion2vec_plus_base", cache_dir=str(tmp_path), offline=True)
    assert bundle.weights_path == str(snap / "model.pt")
    assert bundle.source == "hf:emotion2vec/emotion2vec_plus_base"
    x = torch.randn(1, 8000)
    with torch.no_grad():
        assert torch.equal(bundle.model(x).frames, model(x).frames)


def test_missing_model_offline_says_how_to_predownload(tmp_path):
    with pytest.raises(ModelSourceError) as e:
        load_model("hf:emotion2vec/emotion2vec_plus_large", cache_dir=str(tmp_path), offline=True)
    msg = str(e.value)
    assert "offline" in msg and "hf download emotion2vec/emotion2vec_plus_large" in msg


def test_unknown_local_path_lists_the_short_names(tmp_path):
    with pytest.raises(ModelSourceError, match="emotion2vec_plus_large"):
        load_model(str(tmp_path / "nope"))


def test_modelscope_id_resolves_from_a_populated_modelscope_cache(tmp_path):
    """FunASR-style ids go to ModelScope; its client finds `{cache}/{owner}/{name}`."""
    model = random_model(tiny(), seed=4)
    write_checkpoint(model, tmp_path / "iic" / "emotion2vec_plus_seed", "hub")
    bundle = load_model("iic/emotion2vec_plus_seed", cache_dir=str(tmp_path), offline=True)
    assert bundle.weights_path == str(tmp_path / "iic" / "emotion2vec_plus_seed" / "model.pt")
    assert bundle.source == "ms:iic/emotion2vec_plus_seed"
    with pytest.raises(ModelSourceError, match="modelscope download --model iic/emotion2vec_base_finetuned"):
        load_model("emotion2vec_base_finetuned", cache_dir=str(tmp_path / "empty"), offline=True)


@pytest.mark.parametrize(
    "value, offline",
    [("1", True), ("true", True), ("YES", True), ("on", True), ("0", False), ("off", False), ("no", False)]
    + [("FALSE", False), ("", False)],
)
def test_hf_hub_offline_is_read_as_huggingface_hub_reads_it(monkeypatch, value, offline):
    """`model.offline` unset follows HF_HUB_OFFLINE with huggingface_hub's own reading of it (1, ON, YES,
    TRUE in any case): `off` or `no` must not turn a download into a cache-only look-up."""
    import huggingface_hub
    from huggingface_hub.constants import ENV_VARS_TRUE_VALUES

    from pipeline.model import resolve

    assert (value.upper() in ENV_VARS_TRUE_VALUES) == offline  # the client's rule, independently
    asked = {}

    def snapshot_download(repo, revision=None, cache_dir=None, local_files_only=False):
        asked["local_files_only"] = local_files_only
        return "/nowhere"

    monkeypatch.setattr(huggingface_hub, "snapshot_download", snapshot_download)
    monkeypatch.setenv("HF_HUB_OFFLINE", value)
    resolve("hf:emotion2vec/emotion2vec_plus_base")
    assert asked == {"local_files_only": offline}
