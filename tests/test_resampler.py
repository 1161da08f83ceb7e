"""`audio.resampler`: libsoxr against independent references (analytic tones, sox's own `rate` effect),
torchaudio kept bit for bit, the config key, and a resume that refuses to mix the two."""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from pipeline.audio import RESAMPLERS, AudioError, decode, to_mono_16k
from pipeline.config import ConfigError, load_config

from .test_audio import wav_bytes

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "samples" / "demo"
sys.path.insert(0, str(ROOT / "jobs"))
import extract  # noqa: E402

EDGE = 400  # samples at each end left out of interior comparisons (the filters' ramp-in and -out)


def tone(freq: float, sr: int, seconds: float = 2.0, amp: float = 0.5) -> np.ndarray:
    return (amp * np.sin(2 * np.pi * freq * np.arange(int(sr * seconds)) / sr)).astype(np.float32)


def snr_db(got: np.ndarray, want: np.ndarray) -> float:
    err = got.astype(np.float64) - want
    return 10 * math.log10(np.mean(want**2) / max(np.mean(err**2), 1e-30))


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
@pytest.mark.parametrize("freq", [440.0, 1000.0, 3000.0])
def test_soxr_reproduces_a_pure_tone_at_16k(sr, freq):
    """The resampled tone against the same tone computed at 16 kHz by numpy (no resampler involved)."""
    y = to_mono_16k(tone(freq, sr), sr, "soxr")
    assert y.dtype == np.float32 and len(y) == 32000
    want = 0.5 * np.sin(2 * np.pi * freq * np.arange(len(y)) / 16000)
    inner = slice(EDGE, -EDGE)
    assert snr_db(y[inner], want[inner]) >= 100  # ~130 dB measured; torchaudio's is 66-73 dB
    assert np.abs(y[inner] - want[inner]).max() <= 1e-5


def test_soxr_removes_what_16k_cannot_hold_torchaudio_lets_some_through():
    """A 9.5 kHz tone has no place below 8 kHz: it must vanish, not fold back to 6.5 kHz."""
    x = tone(9500.0, 48000)
    level = {name: np.sqrt(np.mean(to_mono_16k(x, 48000, name)[EDGE:-EDGE] ** 2)) for name in RESAMPLERS}
    full = 0.5 / math.sqrt(2)
    assert 20 * math.log10(level["soxr"] / full) < -100
    assert 20 * math.log10(level["torchaudio"] / full) > -40  # its soft roll-off (-26 dB measured)


def test_soxr_agrees_with_sox_rate_effect(tmp_path):
    """sox's `rate -h` (its own code, run as a program) on tones plus noise: libsoxr HQ is within
    1e-4 of it away from the ends; torchaudio's kernel differs ~100x more on the same input."""
    sr = 44100
    rng = np.random.default_rng(0)
    x = tone(440.0, sr, 1.3, 0.3) + tone(2500.0, sr, 1.3, 0.2) + 0.05 * rng.standard_normal(int(sr * 1.3))
    x = x.astype(np.float32)
    src, dst = tmp_path / "in.wav", tmp_path / "out.wav"
    sf.write(str(src), x, sr, subtype="FLOAT")
    subprocess.run(
        ["sox", "-V1", str(src), "-b", "32", "-e", "float", str(dst), "rate", "-h", "16000"], check=True
    )
    want, _ = sf.read(str(dst), dtype="float32")
    got = to_mono_16k(x, sr, "soxr")
    assert len(got) == len(want)
    inner = slice(EDGE, -EDGE)
    assert np.abs(got[inner] - want[inner]).max() <= 1e-4
    assert np.abs(got - want).max() <= 2e-3  # the ends: sox pads its flush differently
    assert np.abs(to_mono_16k(x, sr, "torchaudio")[inner] - want[inner]).max() > 1e-3


@pytest.mark.parametrize("sr", [8000, 11025, 22050, 44100, 48000, 96000, 11127])
def test_soxr_length_is_the_ceiling_as_with_torchaudio(sr):
    for n in (400, 401, 441, 1234, 44101, 123457):
        y = to_mono_16k(np.ones(n, np.float32), sr, "soxr")
        assert len(y) == math.ceil(n * 16000 / sr), (sr, n, len(y))


@pytest.mark.parametrize("rate", [8000, 44100, 48000])
def test_torchaudio_resampler_is_functional_resample_bit_for_bit(rate):
    x = np.random.default_rng(rate).standard_normal(rate).astype(np.float32)
    want = torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()
    np.testing.assert_array_equal(decode(wav_bytes(x, rate), "x.wav", resampler="torchaudio").samples, want)


def test_sixteen_khz_input_is_the_same_whichever_resampler():
    x = np.random.default_rng(1).standard_normal((16000, 2)).astype(np.float32)
    a, b = (decode(wav_bytes(x), "x.wav", resampler=name).samples for name in RESAMPLERS)
    np.testing.assert_array_equal(a, b)


def test_odd_rate_torchaudio_refuses_soxr_resamples():
    """torchaudio's kernel for 11127 Hz would be ~700 MB; libsoxr needs no such kernel."""
    data = wav_bytes(tone(440.0, 11127, 1.0), sr=11127)
    with pytest.raises(AudioError, match="unsupported sample rate 11127 Hz"):
        decode(data, "x.wav", resampler="torchaudio")
    assert len(decode(data, "x.wav", resampler="soxr").samples) == 16000


def test_unknown_resampler_is_refused():
    with pytest.raises(ValueError, match="unknown resampler 'sinc'"):
        to_mono_16k(np.zeros(1000, np.float32), 44100, "sinc")


def test_config_key(tmp_path):
    p = tmp_path / "c.yaml"
    p.write_text("input: {manifest: m.jsonl}\noutput: {path: out}\n")
    assert load_config(p).audio.resampler == "soxr"
    assert load_config(p, ["audio.resampler=torchaudio"]).audio.resampler == "torchaudio"
    with pytest.raises(ConfigError, match="audio.resampler"):
        load_config(p, ["audio.resampler=sinc"])


def test_resume_with_another_resampler_is_refused(ray_session, tiny_model_dir, tmp_path, capsys):
    """Rows resampled two ways never share one output: the fingerprint names the resampler."""
    m = tmp_path / "m.jsonl"
    rows = [{"id": "a", "path": str(DEMO / "clips/005_excited.wav")}]  # 44.1 kHz
    m.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {m}\nmodel:\n  source: {tiny_model_dir}\n  device: cpu\n  dtype: float32\n"
        f"audio:\n  resampler: torchaudio\noutput:\n  path: {out}\n"
    )
    assert extract.main(["--config", str(cfg)]) == 0
    run = json.loads((out / "_run.json").read_text())
    assert run["model"]["resampler"] == RESAMPLERS["torchaudio"]
    first = pq_rows(out)["a"]["embedding"]

    assert extract.main(["--config", str(cfg), "--set", "audio.resampler=soxr"]) == 2
    assert "different resampler" in capsys.readouterr().err
    assert extract.main(["--config", str(cfg)]) == 0  # the same resampler resumes: nothing to do
    assert json.loads((out / "_run.json").read_text())["rows"]["skipped"] == 1

    assert (
        extract.main(
            ["--config", str(cfg), "--set", "audio.resampler=soxr", "--set", "output.mode=overwrite"]
        )
        == 0
    )
    run = json.loads((out / "_run.json").read_text())
    assert run["model"]["resampler"] == RESAMPLERS["soxr"] and run["rows"]["ok"] == 1
    second = pq_rows(out)["a"]["embedding"]
    cos = np.dot(first, second) / (np.linalg.norm(first) * np.linalg.norm(second))
    assert 0.99 < cos < 1.0 - 1e-9  # close, and not the same numbers


def pq_rows(out: Path) -> dict:
    import pyarrow.dataset as pads

    return {r["id"]: r for r in pads.dataset(str(out), format="parquet").to_table().to_pylist()}


def test_soxr_long_input_streamed_in_blocks_equals_one_call():
    """Past `SOXR_BLOCK` samples the input is streamed (no padded copy): the same samples as one call."""
    from pipeline.audio import SOXR_BLOCK

    for sr in (44100, 48000, 8000):
        x = np.random.default_rng(sr).standard_normal(3 * SOXR_BLOCK + 1234).astype(np.float32)
        n = math.ceil(len(x) * 16000 / sr)
        one_call = soxr_one_call(np.r_[x, np.zeros(64, np.float32)], sr)[:n]
        np.testing.assert_array_equal(to_mono_16k(x, sr, "soxr"), one_call)


def soxr_one_call(x: np.ndarray, sr: int) -> np.ndarray:
    import soxr

    return soxr.resample(x, sr, 16000, quality="HQ")
