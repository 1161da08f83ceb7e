"""Parity with the reference implementation: FunASR's AutoModel loads the same published-layout
directory with its own loader and runs its own one-at-a-time inference."""

import numpy as np
import pytest
import torch

from pipeline.model import load_bundle
from pipeline.testing.checkpoints import random_model, tiny, write_checkpoint

from .conftest import random_clips

pytestmark = pytest.mark.reference

LENGTHS = [400, 719, 16_000, 27_777, 80_000]


def funasr_outputs(model_dir, clips):
    from funasr import AutoModel

    am = AutoModel(model=str(model_dir), disable_update=True, device="cpu", ncpu=2, log_level="ERROR")
    frames = [am.generate(c, granularity="frame", extract_embedding=True)[0] for c in clips]
    utt = [am.generate(c, granularity="utterance", extract_embedding=True)[0] for c in clips]
    return frames, utt


@pytest.mark.parametrize("heads,dim", [(6, 48), (4, 64)])
def test_matches_funasr_one_at_a_time(tmp_path, heads, dim):
    model = random_model(tiny(num_heads=heads, embed_dim=dim), seed=heads)
    alibi = model.modality_encoders["AUDIO"].alibi_scale
    assert (alibi < 0).any(), "the fixture must exercise the clamp of a negative learned ALiBi scale"
    model_dir = write_checkpoint(model, tmp_path, "hub")
    clips = random_clips(LENGTHS, seed=heads)
    ref_frames, ref_utt = funasr_outputs(model_dir, clips)

    bundle = load_bundle(model_dir)
    for clip, rf, ru in zip(clips, ref_frames, ref_utt, strict=True):
        with torch.no_grad():
            out = bundle.model(torch.from_numpy(clip)[None])
        assert out.frames.shape[1] == rf["feats"].shape[0] == (len(clip) - 400) // 320 + 1
        np.testing.assert_allclose(out.frames[0].numpy(), rf["feats"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out.embedding[0].numpy(), ru["feats"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out.scores[0].numpy(), np.array(ru["scores"]), atol=1e-4, rtol=0)
        assert bundle.labels[int(out.scores[0].argmax())] == ru["labels"][int(np.argmax(ru["scores"]))].split(
            "/"
        )[-1].replace("<unk>", "unknown")


def test_old_tokens_with_unuse_entries_are_masked_like_funasr(tmp_path):
    old = [
        "生气/angry",
        "unuse_0",
        "unuse_1",
        "开心/happy",
        "中立/neutral",
        "unuse_2",
        "难过/sad",
        "unuse_3",
        "<unk>",
    ]
    model = random_model(tiny(num_heads=4, embed_dim=32), seed=11)
    model_dir = write_checkpoint(model, tmp_path, "hub", tokens=old)
    clips = random_clips([20_000], seed=5)
    _, ref_utt = funasr_outputs(model_dir, clips)
    bundle = load_bundle(model_dir)
    assert bundle.masked_labels == [1, 2, 5, 7]
    with torch.no_grad():
        scores = bundle.model(torch.from_numpy(clips[0])[None]).scores[0].numpy()
    assert np.all(scores[[1, 2, 5, 7]] == 0)
    kept = [i for i in range(9) if i not in (1, 2, 5, 7)]
    np.testing.assert_allclose(scores[kept], np.array(ref_utt[0]["scores"]), atol=1e-5)


def test_one_learned_alibi_scale_for_all_heads_matches_funasr(tmp_path):
    """`learned_alibi_scale_per_head: false`: one learned ALiBi scale `[1, 1, 1, 1, 1]` shared by the
    heads, which keep one slope each (FunASR builds the bias for `num_alibi_heads` heads whatever
    the scale's shape). The checkpoint loads strictly either way, so wrong slopes would go unnoticed."""
    import dataclasses

    cfg = dataclasses.replace(tiny(num_heads=6, embed_dim=48), alibi_scale_per_head=False)
    model = random_model(cfg, seed=5)
    assert model.modality_encoders["AUDIO"].alibi_scale.shape == (1, 1, 1, 1, 1)
    model_dir = write_checkpoint(model, tmp_path, "hub")
    clips = random_clips([16_000, 9_000], seed=8)
    ref_frames, ref_utt = funasr_outputs(model_dir, clips)

    bundle = load_bundle(model_dir)
    lengths = torch.tensor([len(c) for c in clips])
    wav = torch.zeros(len(clips), int(lengths.max()))
    for i, c in enumerate(clips):
        wav[i, : len(c)] = torch.from_numpy(c)
    with torch.no_grad():
        out = bundle.model(wav, lengths)  # a padded batch, against FunASR one clip at a time
    for i, (rf, ru) in enumerate(zip(ref_frames, ref_utt, strict=True)):
        T = int(out.frame_lengths[i])
        np.testing.assert_allclose(out.frames[i, :T].numpy(), rf["feats"], atol=1e-4, rtol=0)
        np.testing.assert_allclose(out.scores[i].numpy(), np.array(ru["scores"]), atol=1e-4, rtol=0)
