"""Decoding real files (espeak-ng speech converted by sox / written by soundfile) to 16 kHz mono."""

import io

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from pipeline.audio import AudioError, chunk_bounds, decode, to_mono_16k
from pipeline.samples import synthesize


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory):
    return tmp_path_factory.mktemp("speech")


def independent(path) -> np.ndarray:
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    m = torch.from_numpy(x.mean(axis=1))
    return (torchaudio.functional.resample(m, sr, 16000) if sr != 16000 else m).numpy()


@pytest.mark.parametrize(
    "name,rate,channels,encoding",
    [
        ("a.wav", 16000, 1, "pcm16"),
        ("b.wav", 44100, 1, "pcm24"),
        ("c.wav", 22050, 1, "pcm32"),
        ("d.wav", 8000, 1, "float32"),
        ("e.flac", 48000, 2, None),
        ("f.ogg", 16000, 1, None),
        ("g.mp3", 22050, 1, None),
        ("h.opus", 48000, 1, None),
    ],
)
def test_codecs_rates_and_channels(speech_dir, name, rate, channels, encoding):
    path = synthesize(
        "testing one two three", speech_dir / name, sample_rate=rate, channels=channels, encoding=encoding
    )
    out = decode(path.read_bytes(), name)
    assert (out.sample_rate, out.channels) == (rate, channels)
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    ref = independent(path)
    assert len(out.samples) == len(ref)
    np.testing.assert_allclose(out.samples, ref, atol=1e-6)
    info = sf.info(str(path))
    assert abs(out.duration_s - info.duration) < 0.01
    assert np.abs(out.samples).max() > 0.01  # it is speech, not silence


def test_stereo_downmix_is_the_channel_mean(tmp_path):
    t = np.arange(16000) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)
    buf = io.BytesIO()
    sf.write(buf, np.stack([left, right], 1), 16000, format="WAV", subtype="FLOAT")
    out = decode(buf.getvalue(), "s.wav")
    np.testing.assert_allclose(out.samples, ((left + right) / 2).astype(np.float32), atol=1e-6)
    assert out.channels == 2


def test_resampling_keeps_frequency_and_length():
    sr = 48000
    t = np.arange(sr * 2) / sr
    x = (0.5 * np.sin(2 * np.pi * 1000 * t)).astype(np.float32)
    y = to_mono_16k(x, sr)
    assert len(y) == 32000
    spectrum = np.abs(np.fft.rfft(y))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 1000) < 1
    np.testing.assert_allclose(
        y, torchaudio.functional.resample(torch.from_numpy(x), sr, 16000).numpy(), atol=1e-6
    )


def wav_bytes(x, sr=16000, subtype="FLOAT"):
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


@pytest.mark.parametrize(
    "data,needle",
    [
        (b"", "empty file"),
        (wav_bytes(np.zeros(0, np.float32)), "no samples"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 7, "cannot decode"),
        (np.random.default_rng(0).bytes(5000), "unrecognised"),
        (b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + b"\x00" * 500, "unrecognised"),
        (wav_bytes(np.zeros(399, np.float32)), "too short: 399 samples"),
        (
            wav_bytes(np.concatenate([np.zeros(1000), [np.nan], np.zeros(1000)]).astype(np.float32)),
            "non-finite",
        ),
        (wav_bytes(np.concatenate([np.zeros(1000), [np.inf]]).astype(np.float32)), "non-finite"),
        (wav_bytes(np.full(400, np.nan, np.float32), sr=8000), "non-finite"),
        (wav_bytes(np.zeros(300, np.float32), sr=22050), "too short: 218 samples"),
    ],
)
def test_bad_inputs_raise_audio_errors(data, needle):
    with pytest.raises(AudioError, match=needle):
        decode(data, "x.wav")


def test_truncated_flac(speech_dir):
    path = synthesize("this file gets cut in half", speech_dir / "t.flac")
    data = path.read_bytes()
    # either a clean error or the readable prefix; never another exception type
    try:
        out = decode(data[: len(data) // 2], "t.flac")
    except AudioError:
        return
    assert len(out.samples) < len(decode(data, "t.flac").samples)


def test_silence_is_valid():
    out = decode(wav_bytes(np.zeros(8000, np.float32), subtype="PCM_16"), "s.wav")
    assert out.duration_s == 0.5 and not out.samples.any()


@pytest.mark.parametrize(
    "n,w,expected",
    [
        (1000, 1000, [(0, 1000)]),
        (999, 1000, [(0, 999)]),
        (3400, 960, [(0, 1040), (960, 2000), (1920, 2960), (2880, 3400)]),
        (3200, 960, [(0, 1040), (960, 2000), (1920, 3200)]),  # tail of 320 merged
        (2000, 960, [(0, 1040), (960, 2000)]),  # tail [1920, 2000) is too short: merged
        (2000, 1000, [(0, 1040), (960, 2000)]),  # windows round down to whole frames (960)
    ],
)
def test_chunk_bounds(n, w, expected):
    assert chunk_bounds(n, w) == expected


@pytest.mark.parametrize("n", [16_000 * 61 + 123, 16_000 * 30, 16_000 * 90 + 399, 16_000 * 90 + 400])
def test_windows_tile_the_frame_grid_of_the_whole_clip(n):
    """Frames of the windows, concatenated, are exactly the frames of the unsplit clip: same count,
    same start times."""

    def frames(a, b):
        return [(a + 320 * t) for t in range((b - a - 400) // 320 + 1)]

    windows = chunk_bounds(n, 16_000 * 30)
    starts = [f for a, b in windows for f in frames(a, b)]
    assert starts == frames(0, n)
    assert all(b - a >= 400 for a, b in windows)
