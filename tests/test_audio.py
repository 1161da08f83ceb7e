"""pipeline.audio on real files: espeak-ng speech converted by sox, and signals written by soundfile."""

from __future__ import annotations

import io
import json
import math
import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from pipeline.audio import (
    MIN_SAMPLES,
    AudioError,
    DecodedAudio,
    chunk_bounds,
    cut,
    decode,
    to_mono_16k,
    validate,
)
from pipeline.testing.samples import make_corpus, synthesize

TEXT = "testing one two three"
DEMO = Path(__file__).resolve().parents[1] / "samples" / "demo"


@pytest.fixture(scope="module")
def speech_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("speech")


@pytest.fixture(scope="module")
def reference(speech_dir) -> np.ndarray:
    """TEXT as sox writes it directly at 16 kHz mono float (gain 0.9): [N] float32."""
    x, sr = sf.read(str(synthesize(TEXT, speech_dir / "ref.wav", encoding="float32")), dtype="float32")
    assert sr == 16000
    return x


def wav_bytes(x: np.ndarray, sr: int = 16000, subtype: str = "FLOAT") -> bytes:
    buf = io.BytesIO()
    sf.write(buf, x, sr, format="WAV", subtype=subtype)
    return buf.getvalue()


def aligned_correlation(x: np.ndarray, ref: np.ndarray, max_lag: int = 1600) -> tuple[int, float]:
    """(lag of x behind ref in samples, |lag| <= max_lag; normalised cross-correlation at that lag)."""
    n = len(x) + len(ref)
    c = np.fft.irfft(np.fft.rfft(x, n) * np.conj(np.fft.rfft(ref, n)), n)
    lags = np.r_[0 : max_lag + 1, -max_lag:0]
    k = int(np.argmax(c[lags]))
    return int(lags[k]), float(c[lags[k]] / np.sqrt((x**2).sum() * (ref**2).sum()))


# -- codecs, rates, channels ---------------------------------------------------------------------


@pytest.mark.parametrize(
    "name,rate,channels,encoding",
    [
        ("a.wav", 16000, 1, "pcm16"),
        ("b.wav", 44100, 1, "pcm24"),
        ("c.wav", 22050, 1, "pcm32"),
        ("d.wav", 8000, 1, "float32"),
        ("e.wav", 48000, 2, "pcm16"),
        ("f.flac", 48000, 2, None),
        ("g.ogg", 16000, 1, None),
        ("h.ogg", 44100, 2, None),
        ("i.mp3", 22050, 1, None),
        ("j.opus", 48000, 1, None),
    ],
)
def test_real_speech_in_every_codec_rate_and_layout(speech_dir, reference, name, rate, channels, encoding):
    path = synthesize(TEXT, speech_dir / name, sample_rate=rate, channels=channels, encoding=encoding)
    out = decode(path.read_bytes(), name)

    assert isinstance(out, DecodedAudio)
    assert (out.sample_rate, out.channels) == (rate, channels)
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    assert np.isfinite(out.samples).all()
    assert out.duration_s == len(out.samples) / 16000
    if not name.endswith(".mp3"):  # mp3 frames are padded by the encoder
        assert len(out.samples) == math.ceil(sf.info(str(path)).frames * 16000 / rate)
        assert abs(len(out.samples) - len(reference)) <= 1
    # the same speech as sox's direct 16 kHz rendering, aligned in time (mp3 adds encoder delay)
    lag, corr = aligned_correlation(out.samples, reference)
    assert corr > 0.98, corr
    if not name.endswith(".mp3"):
        assert lag == 0
    # channel k has gain 0.9 - 0.4 k / (channels - 1), the reference 0.9: the mean over channels
    # keeps 0.7 / 0.9 of the level for stereo (taking one channel would keep 1.0, summing 1.56)
    expected = 1.0 if channels == 1 else 0.7 / 0.9
    level = np.sqrt(np.mean(out.samples**2) / np.mean(reference**2))
    assert level == pytest.approx(expected, rel=0.1)


def test_downmix_is_the_mean_of_known_different_channels():
    sr = 44100
    t = np.arange(sr) / sr
    chans = np.stack([0.5 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t), -0.1 * t], 1)
    out = decode(wav_bytes(chans.astype(np.float32), sr), "three.wav", resampler="torchaudio")
    mean = chans.astype(np.float32).mean(axis=1)  # numpy, then torchaudio's resampler directly
    expected = torchaudio.functional.resample(torch.from_numpy(mean), sr, 16000).numpy()
    assert out.channels == 3
    np.testing.assert_allclose(out.samples, expected, atol=1e-6)


def test_stereo_at_16k_is_exactly_the_channel_mean():
    t = np.arange(16000) / 16000
    left, right = 0.5 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t)
    out = decode(wav_bytes(np.stack([left, right], 1)), "s.wav")
    np.testing.assert_allclose(out.samples, ((left + right) / 2).astype(np.float32), atol=1e-7)


@pytest.mark.parametrize("container", ["wav", "mka"])  # libsndfile; FFmpeg (PCM in Matroska)
def test_a_channel_is_decoded_alone_and_a_mono_file_is_its_own_mix(tmp_path, container):
    sr = 16000
    t = np.arange(sr) / sr
    chans = np.stack([0.5 * np.sin(2 * np.pi * 220 * t), 0.2 * np.sin(2 * np.pi * 330 * t), -0.1 * t], 1)
    data = wav_bytes(chans.astype(np.float32), sr)
    if container == "mka":
        (tmp_path / "in.wav").write_bytes(data)
        subprocess.run(
            ["ffmpeg", "-loglevel", "error", "-i", str(tmp_path / "in.wav"), "-c:a", "pcm_f32le",
             str(tmp_path / "out.mka")],
            check=True,
        )  # fmt: skip
        data = (tmp_path / "out.mka").read_bytes()
    for c in range(3):
        out = decode(data, f"three.{container}", channel=c)
        assert out.channels == 3
        np.testing.assert_allclose(out.samples, chans[:, c].astype(np.float32), atol=1e-7)
    with pytest.raises(AudioError, match="no channel 4 .*the file has 3 channels"):
        decode(data, f"three.{container}", channel=3)
    mono = wav_bytes(chans[:, :1].astype(np.float32), sr)
    np.testing.assert_array_equal(decode(mono, "m.wav", channel=1).samples, decode(mono, "m.wav").samples)


@pytest.mark.parametrize("channels", [1, 2])
def test_a_flac_that_states_no_length_decodes_whole(speech_dir, channels):
    """A FLAC written to a pipe (ffmpeg, sox or flac to stdout, a recorder's stream) cannot go back to
    write its length: STREAMINFO says 0 samples, which libsndfile reports as 2**63 - 1 frames. That
    was an error row ("too long ... as its header states", or numpy's "array is too big" with no
    limit); the limit is now checked on what is decoded, as for other files that state no duration."""
    wav = synthesize(TEXT, speech_dir / f"piped{channels}.wav", sample_rate=44100, channels=channels)
    streamed = subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-i", str(wav), "-f", "flac", "pipe:1"],
        check=True,
        capture_output=True,
    ).stdout
    assert sf.info(io.BytesIO(streamed)).frames == 2**63 - 1  # what libsndfile makes of "unknown"
    x, sr = sf.read(str(wav), dtype="float32", always_2d=True)
    expected = torchaudio.functional.resample(torch.from_numpy(x.mean(axis=1)), sr, 16000).numpy()
    for limit in (None, 14400):
        out = decode(streamed, "piped.flac", resampler="torchaudio", max_duration_s=limit)
        assert (out.sample_rate, out.channels) == (44100, channels)
        np.testing.assert_allclose(out.samples, expected, atol=1e-6)
    with pytest.raises(AudioError, match=r"^too long: 1\.\d s decoded so far, over the limit of 1 s"):
        decode(streamed, "piped.flac", max_duration_s=1)


@pytest.mark.parametrize("sr", [8000, 22050, 44100, 48000])
def test_resampling_keeps_frequency_and_length(sr):
    n = 2 * sr
    x = (0.5 * np.sin(2 * np.pi * 1000 * np.arange(n) / sr)).astype(np.float32)
    y = to_mono_16k(x, sr, "torchaudio")
    assert y.dtype == np.float32 and len(y) == math.ceil(n * 16000 / sr) == 32000
    spectrum = np.abs(np.fft.rfft(y * np.hanning(len(y))))
    assert abs(np.argmax(spectrum) * 16000 / len(y) - 1000) <= 0.5  # 1 kHz, to the 0.5 Hz bin
    mid = y[2000:-2000]  # away from the edges, the amplitude is kept
    assert np.abs(mid).max() == pytest.approx(0.5, abs=0.01)
    direct = torchaudio.functional.resample(torch.from_numpy(x), sr, 16000).numpy()
    np.testing.assert_allclose(y, direct, atol=1e-6)
    # through a file the result is the same
    np.testing.assert_allclose(decode(wav_bytes(x, sr), resampler="torchaudio").samples, direct, atol=1e-6)


def test_to_mono_16k_accepts_float64_and_2d():
    x = np.random.default_rng(0).standard_normal((4800, 2))
    y = to_mono_16k(x, 48000)
    assert y.dtype == np.float32 and y.shape == (1600,)
    z = to_mono_16k(x[:, :1], 16000)
    assert z.dtype == np.float32 and z.shape == (4800,)
    np.testing.assert_array_equal(z, x[:, 0].astype(np.float32))


# -- what is not valid audio ---------------------------------------------------------------------


NEITHER = (
    "unsupported or unrecognised audio format.*, or a corrupt file: neither libsndfile nor FFmpeg can open it"
)


def _m4a_header() -> bytes:
    # the start of a real MPEG-4 audio file: an `ftyp` box with brand M4A
    return b"\x00\x00\x00\x20ftypM4A \x00\x00\x00\x00M4A mp42isom" + b"\x00" * 500


@pytest.mark.parametrize(
    "data,name,needle",
    [
        (b"", "x.wav", r"^empty file \(0 bytes\)$"),
        (wav_bytes(np.zeros(0, np.float32)), "x.wav", "no samples decoded"),
        (b"RIFF\x24\x00\x00\x00WAVEfmt " + b"\x00" * 7, "x.wav", "corrupt or truncated"),
        (np.random.default_rng(0).bytes(5000), "x.wav", NEITHER),
        (b"hello, this is text and not audio\n" * 40, "x.txt", NEITHER),
        (_m4a_header(), "x.m4a", r"unsupported or unrecognised audio format '\.m4a', or a corrupt file"),
        (
            wav_bytes(np.zeros(399, np.float32)),
            "x.wav",
            r"^too short: 399 samples at 16 kHz \(24\.9 ms\); at least 400 \(25 ms\) needed$",
        ),
        (wav_bytes(np.zeros(300, np.float32), sr=22050), "x.wav", "too short: 218 samples"),
        (wav_bytes(np.r_[np.zeros(1000), np.nan, np.zeros(1000)].astype(np.float32)), "x.wav", "non-finite"),
        (wav_bytes(np.r_[np.zeros(1000), np.inf].astype(np.float32)), "x.wav", "non-finite"),
        (wav_bytes(np.r_[-np.inf, np.zeros(1000)].astype(np.float32), sr=44100), "x.wav", "non-finite"),
        (wav_bytes(np.full(400, np.nan, np.float32), sr=8000), "x.wav", "non-finite"),
        (wav_bytes(np.zeros(20000, np.float32), sr=800), "x.wav", "unsupported sample rate 800 Hz"),
    ],
)
def test_bad_inputs_raise_audio_errors(data, name, needle):
    with pytest.raises(AudioError, match=needle):
        decode(data, name)


@pytest.mark.parametrize("name", ["t.flac", "t.ogg", "t.opus"])
def test_truncated_compressed_files_raise(speech_dir, name):
    data = synthesize("this file gets cut in half", speech_dir / name).read_bytes()
    decode(data, name)  # whole: fine
    for size in (len(data) // 2, 60):
        with pytest.raises(AudioError, match="corrupt or truncated|or a corrupt file"):
            decode(data[:size], name)


def test_truncated_wav_decodes_the_part_that_is_there(speech_dir):
    """libsndfile reads a wav cut short up to the cut; the header alone is an error."""
    data = synthesize("this file gets cut short", speech_dir / "t.wav", encoding="pcm16").read_bytes()
    full = decode(data).samples
    head = 44  # sox writes a plain 44-byte RIFF header for 16-bit mono pcm
    part = decode(data[: head + 2 * 8000]).samples
    np.testing.assert_array_equal(part, full[:8000])
    with pytest.raises(AudioError, match="corrupt or truncated audio: no samples decoded"):
        decode(data[:head])


def test_a_wav_whose_writer_never_finished_its_header_decodes(speech_dir):
    """A recorder killed before it closed its WAV (many write 0 as the RIFF and data sizes first and
    the real ones on close) leaves sizes of 0 before the samples: libsndfile reads 0 frames, which was
    a "no samples decoded" error row; FFmpeg reads the data to the end of the file."""
    path = synthesize(TEXT, speech_dir / "unfinished.wav", encoding="pcm16")
    x, sr = sf.read(str(path), dtype="int16")
    data = bytearray(path.read_bytes())
    at = data.index(b"data")
    assert data[:4] == b"RIFF" and len(data) - at - 8 == 2 * len(x)  # sox's plain header, then samples
    data[4:8] = data[at + 4 : at + 8] = bytes(4)  # the sizes a writer leaves until it closes the file
    assert sf.info(io.BytesIO(data)).frames == 0
    out = decode(bytes(data), "unfinished.wav")
    assert (out.sample_rate, out.channels) == (16000, 1)
    np.testing.assert_array_equal(out.samples, x.astype(np.float32) / 32768)
    # a file that holds no samples after its header stays the error it was
    with pytest.raises(AudioError, match="no samples decoded"):
        decode(bytes(data[: at + 8]), "empty.wav")


def test_silence_and_the_shortest_clip_are_valid():
    out = decode(wav_bytes(np.zeros(8000, np.float32), subtype="PCM_16"), "s.wav")
    assert out.duration_s == 0.5 and not out.samples.any()
    assert len(decode(wav_bytes(np.zeros(MIN_SAMPLES, np.float32))).samples) == MIN_SAMPLES


def test_validate():
    validate(np.zeros(400, np.float32))
    with pytest.raises(AudioError, match="too short: 99 samples"):
        validate(np.zeros(99, np.float32))
    with pytest.raises(AudioError, match="non-finite"):
        validate(np.r_[np.zeros(500), np.nan].astype(np.float32))
    validate(np.zeros(100, np.float32), min_samples=100)


# -- segments ------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def speech16(speech_dir) -> tuple[Path, np.ndarray]:
    """TEXT as 16 kHz mono 16-bit wav, and its decoded samples."""
    path = synthesize(TEXT, speech_dir / "cut_me.wav", encoding="pcm16")
    return path, decode(path.read_bytes()).samples


def sox_cut(path: Path, first: int, end: int | None) -> np.ndarray:
    """sox's trim at sample counts (exact): samples [first, end) of the file, or to its end."""
    out = path.with_name(f"cut_{first}_{end}.wav")
    subprocess.run(
        ["sox", "-D", str(path), str(out), "trim", f"{first}s", *([f"={end}s"] if end else [])], check=True
    )
    return sf.read(str(out), dtype="float32")[0]


@pytest.mark.parametrize(
    "start_s,end_s,first,end",
    [
        (0.5, 1.0, 8000, 16000),
        (0.123456, 0.9, 1975, 14400),  # 1975.296 rounds down
        (0.0, 0.025, 0, 400),  # the shortest valid segment
        (0.33334, 0.66667, 5333, 10667),  # 5333.44 down, 10666.72 up
        (0.25, None, 4000, None),  # to the end
    ],
)
def test_cut_matches_sox_trim_on_the_sample_grid(speech16, start_s, end_s, first, end):
    path, samples = speech16
    np.testing.assert_array_equal(cut(samples, start_s, end_s), sox_cut(path, first, end))


def test_cut_clamps_an_end_just_past_the_audio(speech16):
    path, samples = speech16
    duration = len(samples) / 16000
    np.testing.assert_array_equal(cut(samples, 1.0, duration + 0.09), sox_cut(path, 16000, None))


@pytest.mark.parametrize(
    "start,end,needle",
    [
        (-0.1, 1.0, "times must be finite and >= 0"),
        (float("nan"), 1.0, "times must be finite and >= 0"),
        (0.0, float("inf"), "times must be finite and >= 0"),
        (1.0, 1.0, "the end is not after the start"),
        (1.0, 0.5, "the end is not after the start"),
        ("D", None, "starts at or past the end of the audio"),
        ("D+1", "D+2", "starts at or past the end of the audio"),
        (0.5, "D+0.2", "ends more than 0.1 s past the end of the audio"),
        (0.5, 0.52, "too short: 320 samples"),
    ],
)
def test_cut_rejects_bad_times(speech16, start, end, needle):
    samples = speech16[1]
    duration = len(samples) / 16000
    at = {"D": duration, "D+1": duration + 1, "D+2": duration + 2, "D+0.2": duration + 0.2}
    start, end = at.get(start, start), at.get(end, end)
    with pytest.raises(AudioError, match=needle) as e:
        cut(samples, start, end)
    if "too short" not in needle:  # the message gives the times and the audio's duration
        assert f"segment [{start}, {end}) s of audio lasting {duration:.3f} s" in str(e.value)


# -- windows -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "n,w,expected",
    [
        (1000, 1000, [(0, 1000)]),  # fits: one window
        (999, 1000, [(0, 999)]),
        (10, 1000, [(0, 10)]),
        (2880, 960, [(0, 1040), (960, 2000), (1920, 2880)]),  # an exact multiple
        (3400, 960, [(0, 1040), (960, 2000), (1920, 2960), (2880, 3400)]),
        (3200, 960, [(0, 1040), (960, 2000), (1920, 3200)]),  # tail of 320 < 400: merged
        (2000, 960, [(0, 1040), (960, 2000)]),  # tail [1920, 2000) too short: merged
        (2000, 1000, [(0, 1040), (960, 2000)]),  # windows round down to whole frames (960)
    ],
)
def test_chunk_bounds(n, w, expected):
    assert chunk_bounds(n, w) == expected


@pytest.mark.parametrize(
    "n,w",
    [(16_000 * 61 + 123, 480_000), (16_000 * 60, 480_000), (16_000 * 90 + 399, 480_000)]
    # windows of one hop (audio.max_chunk_s under 40 ms): the last two both reach the end of a clip
    # 1-79 samples past the grid, and the last one merged into the one before was still under 400
    + [(16_000 * 90 + 400, 480_000), (16_040, 434), (16_000 * 3 + 79, 639), (16_000 * 3 + 80, 434)],
)
def test_windows_tile_the_frame_grid_of_the_whole_clip(n, w):
    """The windows' frames, concatenated, are exactly the unsplit clip's frames: same count and
    start times; windows are in order, cover the clip and are at least 400 samples long."""

    def frame_starts(a: int, b: int) -> list[int]:
        return [a + 320 * t for t in range((b - a - 400) // 320 + 1)]

    windows = chunk_bounds(n, w)
    assert windows[0][0] == 0 and windows[-1][1] == n
    assert all(a1 < a2 for (a1, _), (a2, _) in zip(windows, windows[1:], strict=False))
    assert all(b - a >= 400 for a, b in windows)
    assert [f for a, b in windows for f in frame_starts(a, b)] == frame_starts(0, n)


# -- the generator and the committed demo corpus -------------------------------------------------


def test_make_corpus_is_deterministic_and_labelled(tmp_path):
    a, b = make_corpus(tmp_path / "a", n=5, seed=3), make_corpus(tmp_path / "b", n=5, seed=3)
    rows = [json.loads(line) for line in a.read_text().splitlines()]
    assert [set(r) for r in rows] == [{"id", "path", "text", "speaker", "style"}] * 5
    assert len({r["text"] for r in rows}) == 5 and len({r["style"] for r in rows}) == 4
    for r in rows:
        assert (a.parent / r["path"]).read_bytes() == (b.parent / r["path"]).read_bytes()
        assert 1.0 <= decode((a.parent / r["path"]).read_bytes(), r["path"]).duration_s <= 4.5


def test_synthesize_names_the_missing_tool(tmp_path, monkeypatch):
    monkeypatch.setattr("pipeline.testing.samples.shutil.which", lambda tool: None)
    with pytest.raises(RuntimeError, match="espeak-ng is not installed.*apt-get install"):
        synthesize("hi", tmp_path / "x.wav")


def test_demo_corpus_decodes():
    rows = [json.loads(line) for line in (DEMO / "manifest.jsonl").read_text().splitlines()]
    assert len(rows) >= 16 and len({r["id"] for r in rows}) == len(rows)
    decoded = [decode((DEMO / r["path"]).read_bytes(), r["path"]) for r in rows]
    assert all(1.0 <= d.duration_s <= 4.5 for d in decoded)
    assert {Path(r["path"]).suffix for r in rows} >= {".flac", ".wav", ".ogg", ".mp3"}
    assert {d.sample_rate for d in decoded} > {16000} and max(d.channels for d in decoded) == 2


@pytest.mark.parametrize("rate", [8000, 22050, 44100, 48000])
def test_cached_resampler_gives_torchaudio_functional_samples_exactly(rate):
    from pipeline.audio import to_mono_16k

    x = np.random.default_rng(rate).standard_normal(rate * 2).astype(np.float32)
    want = torchaudio.functional.resample(torch.from_numpy(x), rate, 16000).numpy()
    for _ in range(2):  # the second call uses the cached kernel
        np.testing.assert_array_equal(to_mono_16k(x, rate, "torchaudio"), want)
