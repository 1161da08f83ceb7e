"""pipeline.vad on long recordings of real speech (espeak-ng sentences, known silences, faint noise)."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from pipeline.audio import decode
from pipeline.config import ConfigError, VadConfig, load_config
from pipeline.vad import max_segment_samples, on_grid, speech_segments, split_long
from tests.speech import encode, long_recording, noise_only, sentence_clips

# find_spec, not importorskip: importing silero_vad would set torch's thread count for the whole session
pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("silero_vad") is None, reason="needs the vad extra: pip install -e '.[vad]'"
)

ROOT = Path(__file__).resolve().parents[1]
SR = 16000
# How far past a true speech edge a segment may reach beyond speech_pad_ms: silero scores 32 ms windows,
# holds speech until its score stays below threshold - 0.15, and the edges move out to the 20 ms grid.
SLACK_S = 0.15
GAPS = [1.0, 2.0, 1.5, 3.0, 1.0]  # leading silence, three pauses of 1-3 s, trailing silence


@pytest.fixture(scope="module")
def clips16() -> list[np.ndarray]:
    return sentence_clips(4, 16000)


@pytest.fixture(scope="module")
def clips44() -> list[np.ndarray]:
    return sentence_clips(4, 44100)


def recording_16k_wav(clips16, clips44):
    rec = long_recording(clips16, GAPS, 16000, seed=2)
    return rec, encode(rec, "WAV")


def recording_44k_stereo_flac(clips16, clips44):
    rec = long_recording(clips44, GAPS, 44100, seed=3)
    return rec, encode(rec, "FLAC", channels=2)


def assert_on_grid(segments: list[tuple[int, int]], n: int) -> None:
    for s, e in segments:
        assert s % 320 == 0 and (e % 320 == 0 or e == n), (s, e)
        assert 400 <= e - s
    assert all(a[1] <= b[0] for a, b in zip(segments, segments[1:], strict=False)), "sorted, disjoint"


@pytest.mark.parametrize("make", [recording_16k_wav, recording_44k_stereo_flac])
def test_segments_cover_each_sentence_and_stay_near_it(clips16, clips44, make):
    rec, data = make(clips16, clips44)
    samples = decode(data, "rec").samples
    cfg = VadConfig()
    segments = speech_segments(samples, cfg)

    assert_on_grid(segments, len(samples))
    truth = rec.spans_at(SR)
    reach = int((cfg.speech_pad_ms / 1000 + SLACK_S) * SR)
    # every segment lies within one sentence widened by the padding and the slack
    for s, e in segments:
        assert any(ts - reach <= s and e <= te + reach for ts, te in truth), ((s, e), truth)
    # every sentence is covered, sample by sample, by the union of the segments
    covered = np.zeros(len(samples), bool)
    for s, e in segments:
        covered[s:e] = True
    for ts, te in truth:
        assert covered[ts : min(te, len(samples))].all(), ((ts, te), segments)
    # the 1-3 s pauses separate the sentences: one segment each (all shorter than max_segment_s)
    assert len(segments) == len(truth)


def test_noise_only_has_no_speech():
    rec = noise_only(20.0)
    assert speech_segments(decode(encode(rec, "WAV"), "noise").samples, VadConfig()) == []


def test_silence_and_too_short_input_have_no_speech():
    assert speech_segments(np.zeros(5 * SR, np.float32), VadConfig()) == []
    assert speech_segments(np.zeros(399, np.float32), VadConfig()) == []


def test_long_utterance_is_split_at_quiet_frames_within_the_limit(clips16):
    rec = long_recording(clips16, [0.5, 0.0, 0.0, 0.0, 0.5], seed=4)  # ~8 s of speech without a pause
    cfg = VadConfig(max_segment_s=3)
    segments = speech_segments(rec.samples, cfg)

    assert_on_grid(segments, len(rec.samples))
    assert len(segments) >= 3
    assert all(e - s <= 3 * SR for s, e in segments)
    # one run of speech: the pieces are adjacent and cover the whole utterance
    assert all(a[1] == b[0] for a, b in zip(segments, segments[1:], strict=False))
    (ts, _), (_, te) = rec.spans_at(SR)[0], rec.spans_at(SR)[-1]
    assert segments[0][0] <= ts and segments[-1][1] >= te
    # each cut is the quietest 320-sample frame between 1.5 s and 3 s into its piece
    x, end = rec.samples.astype(np.float64), segments[-1][1]
    for s, cut in segments[:-1]:
        last = s + min(3 * SR, end - s - 400) // 320 * 320
        energies = {c: float(np.sum(x[c : c + 320] ** 2)) for c in range(s + 3 * SR // 2, last + 1, 320)}
        assert energies[cut] == min(energies.values()), (s, cut)


def test_on_grid_moves_edges_outward_and_keeps_spans_disjoint():
    assert on_grid([(100, 1000), (1100, 4890)], 4900) == [(0, 1280), (1280, 4900)]
    assert on_grid([(640, 960)], 10_000) == [(640, 960)]
    assert on_grid([(0, 500), (700, 900)], 900) == [(0, 640), (640, 900)]


def test_max_segment_s_in_samples_is_not_a_frame_short_where_floats_fall_below():
    """32.3 s is 1615 frames exactly, but 32.3 * 16000 is 516799.99999999994 in floats: truncated, the
    limit was 32.28 s and speech of exactly 32.3 s was split, against `max_segment_s` ("longer than")."""
    assert 32.3 * SR < 516800
    assert max_segment_samples(32.3) == 516800
    assert max_segment_samples(30.0) == 480000 and max_segment_samples(30.01) == 480000  # down to the grid


def test_split_long_cuts_at_the_quietest_frame():
    x = np.full(10 * 320, 0.5, np.float32)
    x[7 * 320 : 8 * 320] = 0.01  # the quiet frame starts at 2240
    x[2 * 320 : 3 * 320] = 0.0  # quieter, but before half the limit: not a candidate
    assert split_long(x, 0, len(x), max_len=8 * 320) == [(0, 2240), (2240, 3200)]
    assert split_long(x, 0, len(x), max_len=10 * 320) == [(0, 3200)]


def test_bad_input_is_a_clear_error():
    with pytest.raises(ValueError, match="16000 Hz"):
        speech_segments(np.zeros(SR, np.float32), VadConfig(), sample_rate=8000)
    with pytest.raises(ValueError, match=r"mono samples \[N\]"):
        speech_segments(np.zeros((SR, 2), np.float32), VadConfig())


def test_thread_count_survives_import_load_and_calls():
    """silero_vad's model module sets torch's thread count to 1 on import; pipeline.vad restores it."""
    code = textwrap.dedent(
        """
        import sys, numpy as np, torch
        torch.set_num_threads(3)
        from pipeline.config import VadConfig
        from pipeline.vad import speech_segments
        after_import = torch.get_num_threads()
        speech_segments(np.zeros(16000, np.float32), VadConfig())  # loads silero, runs it
        assert "silero_vad.model" in sys.modules
        print(after_import, torch.get_num_threads())
        """
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "3"}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["3", "3"]


def test_model_is_loaded_once_per_process():
    from pipeline import vad

    speech_segments(np.zeros(SR, np.float32), VadConfig())
    model = vad._load()[0]
    speech_segments(np.zeros(SR, np.float32), VadConfig())
    assert vad._load()[0] is model


def test_config_keys_and_defaults(tmp_path):
    cfg = load_config(None, ["input.manifest=m.jsonl", "output.path=out"])
    assert cfg.audio.segmentation == "none"
    assert cfg.audio.vad.model_dump() == {
        "threshold": 0.5,
        "min_speech_ms": 250,
        "min_silence_ms": 300,
        "speech_pad_ms": 100,
        "max_segment_s": 30.0,
    }
    cfg = load_config(
        None, ["input.manifest=m", "output.path=o", "audio.segmentation=vad", "audio.vad.max_segment_s=12"]
    )
    assert (cfg.audio.segmentation, cfg.audio.vad.max_segment_s) == ("vad", 12.0)
    with pytest.raises(ConfigError, match="audio.segmentation"):
        load_config(None, ["input.manifest=m", "output.path=o", "audio.segmentation=energy"])
    with pytest.raises(ConfigError, match="audio.vad.window: unknown key"):
        load_config(None, ["input.manifest=m", "output.path=o", "audio.vad.window=3"])
    with pytest.raises(ConfigError, match="audio.vad.max_segment_s"):
        load_config(None, ["input.manifest=m", "output.path=o", "audio.vad.max_segment_s=0.5"])


def test_batched_scores_and_spans_match_silero_window_by_window(clips16, monkeypatch):
    """The windows are scored in batches (only the LSTM state runs along them); silero's own model,
    called on one window at a time as its get_speech_timestamps does, is the reference. Batched
    kernels sum in another order, so scores agree to float rounding, and the spans exactly."""
    import torch

    from pipeline import vad

    threads = torch.get_num_threads()
    try:
        from silero_vad import get_speech_timestamps, load_silero_vad

        with warnings.catch_warnings():  # silero's loader uses deprecated importlib/jit APIs
            warnings.simplefilter("ignore", DeprecationWarning)
            reference = load_silero_vad(onnx=False)  # a model of its own: none of pipeline.vad's state
    finally:
        torch.set_num_threads(threads)
    rec = long_recording(clips16, GAPS, 16000, seed=2)
    x = np.concatenate([rec.samples, rec.samples[:300]])  # a last window of 300 samples, zero-padded
    monkeypatch.setattr(vad, "BATCH_WINDOWS", 37)  # batch edges inside speech: the state crosses them
    ours = vad.speech_probabilities(x)

    with torch.no_grad():
        reference.reset_states()
        padded = np.zeros(len(ours) * 512, np.float32)
        padded[: len(x)] = x
        theirs = np.array(
            [
                reference(torch.from_numpy(padded[i * 512 : (i + 1) * 512].copy()), SR).item()
                for i in range(len(ours))
            ],
            np.float32,
        )
    assert len(ours) == -(-len(x) // 512)
    np.testing.assert_allclose(ours, theirs, rtol=0, atol=1e-5)

    cfg = VadConfig()
    hysteresis = dict(
        threshold=cfg.threshold,
        min_speech_duration_ms=cfg.min_speech_ms,
        min_silence_duration_ms=cfg.min_silence_ms,
        speech_pad_ms=cfg.speech_pad_ms,
        sampling_rate=SR,
    )
    with torch.no_grad():
        silero_spans = get_speech_timestamps(torch.from_numpy(x), reference, **hysteresis)
    torch.set_num_threads(threads)
    _, from_probs = vad._load()
    our_spans = from_probs(ours.tolist(), audio_length_samples=len(x), **hysteresis)
    assert our_spans == silero_spans and len(silero_spans) == len(rec.spans)
