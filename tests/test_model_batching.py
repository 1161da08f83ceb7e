"""A clip's outputs must not depend on what it is batched with (docs/model.md, "Padding")."""

import pytest
import torch

from pipeline.model import InputTooShortError, load_bundle

from .conftest import random_clips


def pad(clips):
    n = max(len(c) for c in clips)
    batch = torch.zeros(len(clips), n)
    for i, c in enumerate(clips):
        batch[i, : len(c)] = torch.from_numpy(c)
    return batch, torch.tensor([len(c) for c in clips])


def single(model, clip):
    with torch.no_grad():
        return model(torch.from_numpy(clip)[None])


@pytest.mark.parametrize("lengths", [[400, 16_000], [48_000, 3_333, 17_001, 401, 9_000], [12_345] * 3])
def test_padded_batch_equals_one_at_a_time(tiny_model_dir, lengths):
    model = load_bundle(tiny_model_dir).model
    clips = random_clips(lengths, seed=len(lengths))
    wav, lens = pad(clips)
    with torch.no_grad():
        out = model(wav, lens)
    for i, clip in enumerate(clips):
        ref = single(model, clip)
        T = ref.frames.shape[1]
        assert int(out.frame_lengths[i]) == T
        assert (out.frames[i, :T] - ref.frames[0]).abs().max() <= 1e-4
        assert torch.all(out.frames[i, T:] == 0)  # padding frames are zeroed
        assert (out.embedding[i] - ref.embedding[0]).abs().max() <= 1e-4
        assert (out.scores[i] - ref.scores[0]).abs().max() <= 1e-4


def test_padding_without_the_mask_would_leak(tiny_model_dir):
    """Guard for the test above: the same batch run as separate un-masked rows differs, so the
    equality really comes from the masking and not from the clips being insensitive to padding."""
    model = load_bundle(tiny_model_dir).model
    clips = random_clips([48_000, 9_000], seed=1)
    wav, _ = pad(clips)
    with torch.no_grad():
        unmasked = model(wav[1:2])  # the short clip with 39k samples of zeros treated as audio
    ref = single(model, clips[1])
    T = ref.frames.shape[1]
    assert (unmasked.frames[0, :T] - ref.frames[0]).abs().max() > 1e-3


@pytest.mark.parametrize("dtype,tol", [(torch.bfloat16, 0.15), (torch.float16, 0.02)])
def test_half_precision_batches_stay_close(tiny_model_dir, dtype, tol):
    ref_model = load_bundle(tiny_model_dir).model
    model = load_bundle(tiny_model_dir, dtype=dtype).model
    clips = random_clips([16_000, 7_777, 30_000], seed=2)
    wav, lens = pad(clips)
    with torch.no_grad():
        out = model(wav, lens)
        ref = ref_model(wav, lens)
    assert out.frames.dtype == dtype and out.embedding.dtype == torch.float32
    assert torch.isfinite(out.frames.float()).all()
    scale = ref.frames.abs().max()
    assert (out.frames.float() - ref.frames).abs().max() <= tol * scale
    assert (out.scores - ref.scores).abs().max() <= tol
    # and in half precision a padded batch still matches its own single-clip runs
    for i, clip in enumerate(clips):
        with torch.no_grad():
            one = model(torch.from_numpy(clip)[None])
        T = one.frames.shape[1]
        assert (out.frames[i, :T].float() - one.frames[0].float()).abs().max() <= tol * scale


def test_too_short_input_raises_a_clear_error(tiny_model_dir):
    model = load_bundle(tiny_model_dir).model
    wav, lens = pad(random_clips([16_000, 399]))
    with pytest.raises(InputTooShortError, match="utterance 1 has 399 samples.*at least 400"):
        model(wav, lens)


def test_lengths_past_the_end_of_the_batch_raise_a_clear_error(tiny_model_dir):
    """A length longer than the padded batch (lengths counted before a trim or a resample) has no
    samples behind it: the frame count, the valid-frame mask and the pooled mean would be computed for
    audio that is not there. It must be refused, naming the row, not answered with wrong numbers."""
    model = load_bundle(tiny_model_dir).model
    wav, _ = pad(random_clips([16_000, 12_000]))
    with pytest.raises(ValueError, match="utterance 1 has length 20000.*16000 samples"):
        model(wav, torch.tensor([16_000, 20_000]))


def test_silence_gives_finite_features(tiny_model_dir):
    model = load_bundle(tiny_model_dir).model
    with torch.no_grad():
        out = model(torch.zeros(2, 8_000), torch.tensor([8_000, 4_000]))
    assert torch.isfinite(out.frames).all() and torch.isfinite(out.scores).all()


def test_normalisation_equals_a_layer_norm_per_row_and_is_one_batched_pass_off_the_cpu():
    """Each row is layer-normalised over its valid samples only (whatever sits in the padding), by
    the CPU's per-row loop and by the batched spelling the other devices run; the batched one is the
    same handful of tensor ops for 2 rows as for 7: no loop over rows."""
    import torch.nn.functional as F

    from pipeline.model import kernels

    lengths = [16_000, 400, 7_777, 9_001, 12_000, 500, 16_000]
    wav, lens = pad(random_clips(lengths, seed=11))
    wav = wav + 5.0 * (torch.arange(wav.shape[1]) >= lens[:, None])  # garbage in the padding
    for normalize in (kernels.normalize_rows, kernels._normalize_batched):
        with torch.inference_mode():
            got = normalize(wav, lens)
        for i, n in enumerate(lengths):
            want = F.layer_norm(wav[i, :n].double(), (n,), eps=1e-5)
            torch.testing.assert_close(got[i, :n].double(), want, atol=2e-5, rtol=0)
            assert torch.all(got[i, n:] == 0)

    def ops(rows: int) -> int:
        with torch.inference_mode(), torch.profiler.profile() as prof:
            kernels._normalize_batched(wav[:rows], lens[:rows])
        return len([e for e in prof.events() if e.name.startswith("aten::")])

    assert ops(2) == ops(7)


def test_forward_with_host_lengths_reads_nothing_back_from_the_device(tiny_model_dir):
    """With the lengths on the host, the forward decides everything (length check, padded or not)
    without reading a device tensor: on the meta device, which holds no values, any such read (a
    `.tolist()`, a `bool()`) raises. On a GPU such a read would wait for all queued work."""
    model = load_bundle(tiny_model_dir).model.to("meta")
    wav, lens = pad(random_clips([16_000, 7_777, 401], seed=12))
    with torch.inference_mode():
        out = model(wav.to("meta"), lens)
        assert out.frames.shape == (3, 49, model.cfg.embed_dim) and out.scores.shape == (3, 9)
        with pytest.raises(InputTooShortError, match="utterance 1 has 399 samples"):
            model(wav.to("meta"), torch.tensor([16_000, 399, 401]))
        model(wav[:1].to("meta"))  # no lengths: every row full, also decided on the host
