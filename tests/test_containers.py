"""pipeline.audio on containers libsndfile does not read, made by the ffmpeg CLI from espeak-ng speech
(AMR by the encoder in PyAV's FFmpeg where the CLI has none).

Expected values come from another path: the ffmpeg CLI decodes the first audio stream to float32 at
the source rate and channel count, numpy averages the channels and torchaudio resamples. The CLI is
Debian's FFmpeg, not the one bundled in PyAV, so lossy codecs are compared by correlation and level.
Also: the size and duration limits, memory of long files, and `cut` against sox's sample-exact trim.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import torch
import torchaudio

from pipeline.audio import AudioError, decode
from pipeline.testing.samples import synthesize

TEXT = "testing one two three"
VIDEO = ["-f", "lavfi", "-i", "testsrc=size=160x120:rate=25"]  # a real picture stream
H264 = ["-c:v", "libx264", "-pix_fmt", "yuv420p", "-preset", "ultrafast"]

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI (make sysdeps)")


def ffmpeg(*args: str | Path) -> bytes:
    return subprocess.run(
        ["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True, capture_output=True
    ).stdout


def ffmpeg_decode(path: Path) -> tuple[np.ndarray, int]:
    """The first audio stream as the ffmpeg CLI decodes it: ([frames, channels] float32, rate)."""
    probe = subprocess.run(
        ["ffprobe", "-v", "error", "-select_streams", "a:0", "-show_entries", "stream=sample_rate,channels"]
        + ["-of", "json", str(path)],
        check=True,
        capture_output=True,
    ).stdout
    stream = json.loads(probe)["streams"][0]
    rate, channels = int(stream["sample_rate"]), int(stream["channels"])
    raw = ffmpeg("-i", path, "-map", "0:a:0", "-f", "f32le", "-acodec", "pcm_f32le", "-")
    return np.frombuffer(raw, np.float32).reshape(-1, channels), rate


def expected_16k(path: Path) -> tuple[np.ndarray, int, int]:
    x, rate = ffmpeg_decode(path)
    mono = torch.from_numpy(x.mean(axis=1, dtype=np.float32))
    out = mono if rate == 16000 else torchaudio.functional.resample(mono, rate, 16000)
    return out.numpy(), rate, x.shape[1]


@pytest.fixture(scope="module")
def work(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("containers")


@pytest.fixture(scope="module")
def speech(work) -> Path:
    """~1.5 s of speech, 48 kHz, 2 channels at different gains, float wav: the source of every container."""
    return synthesize(TEXT, work / "speech.wav", sample_rate=48000, channels=2, encoding="float32")


@pytest.fixture(scope="module")
def speech6(work) -> Path:
    return synthesize(TEXT, work / "speech6.wav", sample_rate=48000, channels=6, encoding="pcm24")


def has_encoder(name: str) -> bool:
    return f" {name} " in ffmpeg("-hide_banner", "-encoders").decode()


# name -> (inputs before the speech, output options); the speech is the last input
LOSSY = {
    "v.mp4": (VIDEO, ["-map", "0:v", "-map", "1:a", *H264, "-c:a", "aac", "-ar", "48000", "-ac", "2"]),
    "a.m4a": ([], ["-c:a", "aac", "-ar", "44100", "-ac", "2"]),
    "a.aac": ([], ["-c:a", "aac", "-ar", "22050", "-ac", "1", "-f", "adts"]),
    "a.webm": ([], ["-c:a", "libopus", "-b:a", "64k", "-ac", "2"]),
    "a.wma": ([], ["-c:a", "wmav2", "-b:a", "128k", "-ar", "44100", "-ac", "2"]),
    "v.flv": (VIDEO, ["-map", "0:v", "-map", "1:a", "-c:v", "flv", "-c:a", "libmp3lame", "-ar", "44100"]),
    "a.amr": ([], ["-c:a", "libopencore_amrnb", "-ar", "8000", "-ac", "1", "-b:a", "12.2k"]),
    "six.m4a": ([], ["-c:a", "aac", "-ac", "6"]),
}
# lossless: decoded numbers must match the CLI's to float precision; covers FFmpeg's sample formats
LOSSLESS = {
    "a.mkv": ([], ["-c:a", "flac"]),  # s16 packed
    "v.mkv": (VIDEO, ["-map", "0:v", "-map", "1:a", *H264, "-c:a", "flac", "-sample_fmt", "s32"]),  # s32
    "six.mka": ([], ["-c:a", "flac"]),  # 6 channels
    "f64.mkv": ([], ["-c:a", "pcm_f64le"]),  # dbl
    "u8.mov": ([], ["-c:a", "pcm_u8", "-ar", "22050"]),  # u8
    "s24.mov": ([], ["-c:a", "pcm_s24le"]),  # s32 after decoding
}


def make(work: Path, source: Path, name: str, spec: tuple[list[str], list[str]]) -> Path:
    inputs, options = spec
    out = work / name
    if not out.exists():
        ffmpeg(*inputs, "-i", source, "-shortest", *options, out)
    return out


def amr_with_pyav(work: Path, speech: Path) -> Path:
    """AMR-NB 12.2k written by the encoder in PyAV's FFmpeg (Debian's ffmpeg CLI has none); the CLI,
    which has the decoder, still gives the expected values."""
    import av

    out = work / "pyav.amr"
    pcm = np.frombuffer(ffmpeg("-i", speech, "-ar", "8000", "-ac", "1", "-f", "s16le", "-"), np.int16)
    with av.open(str(out), "w", format="amr") as container:
        stream = container.add_stream("libopencore_amrnb", rate=8000, layout="mono")
        stream.bit_rate = 12200
        frame = av.AudioFrame.from_ndarray(pcm[None, :], format="s16", layout="mono")
        frame.sample_rate = 8000
        for packet in [*stream.encode(frame), *stream.encode(None)]:
            container.mux(packet)
    return out


def check_same_speech(name: str, path: Path, *, lossless: bool) -> None:
    expected, rate, channels = expected_16k(path)
    out = decode(path.read_bytes(), name, resampler="torchaudio")
    assert (out.sample_rate, out.channels) == (rate, channels)
    assert out.samples.dtype == np.float32 and out.samples.ndim == 1
    if lossless:
        assert len(out.samples) == len(expected)
        np.testing.assert_allclose(out.samples, expected, atol=1e-4)
        return
    # a different FFmpeg build decodes: the same length (give or take a frame's rounding) and signal
    assert abs(len(out.samples) - len(expected)) <= 16, (len(out.samples), len(expected))
    n = min(len(out.samples), len(expected))
    a, b = out.samples[:n].astype(np.float64), expected[:n].astype(np.float64)
    corr = (a @ b) / np.sqrt((a @ a) * (b @ b))
    rms_diff = np.sqrt(np.mean((a - b) ** 2) / np.mean(b**2))
    assert corr > 0.99 and rms_diff < 0.1, (corr, rms_diff)


@pytest.mark.parametrize("name", list(LOSSY))
def test_lossy_containers_match_the_ffmpeg_cli(work, speech, speech6, name):
    if name == "a.amr" and not has_encoder("libopencore_amrnb"):
        path = amr_with_pyav(work, speech)
    else:
        path = make(work, speech6 if name.startswith("six") else speech, name, LOSSY[name])
    check_same_speech(name, path, lossless=False)


@pytest.mark.parametrize("name", list(LOSSLESS))
def test_lossless_containers_match_the_ffmpeg_cli(work, speech, speech6, name):
    path = make(work, speech6 if name.startswith("six") else speech, name, LOSSLESS[name])
    check_same_speech(name, path, lossless=True)


def test_an_ogg_video_goes_to_ffmpeg(work, speech):
    """Theora video with Vorbis audio (.ogv): libsndfile opens the Ogg, then says "File contains data in
    an unimplemented format", which was an error row ("corrupt or truncated") though FFmpeg decodes it."""
    if not has_encoder("libtheora"):
        pytest.skip("this ffmpeg has no Theora encoder")
    spec = (VIDEO, ["-map", "0:v", "-map", "1:a", "-c:v", "libtheora", "-c:a", "libvorbis", "-ar", "44100"])
    check_same_speech("v.ogv", make(work, speech, "v.ogv", spec), lossless=False)


def test_ogg_speex_goes_to_ffmpeg(work, speech):
    """Speex in Ogg (.spx, VoIP and older speech corpora): libsndfile opens the Ogg, then fails with
    "Unspecified internal error", which was an error row though FFmpeg decodes Speex."""
    if not has_encoder("libspeex"):
        pytest.skip("this ffmpeg has no Speex encoder")
    spec = ([], ["-c:a", "libspeex", "-ar", "16000", "-ac", "1"])
    check_same_speech("a.spx", make(work, speech, "a.spx", spec), lossless=False)


def test_the_first_audio_stream_is_decoded(work, speech):
    """video, then speech (flac, stereo), then a tone (flac, mono): the speech is what comes out."""
    path = work / "two.mkv"
    tone = ["-f", "lavfi", "-i", "sine=frequency=440:duration=2:sample_rate=48000"]
    maps = ["-map", "0:v", "-map", "1:a", "-map", "2:a"]
    ffmpeg(*VIDEO, "-i", speech, *tone, "-t", "1.5", *maps, *H264, "-c:a", "flac", path)
    check_same_speech("two.mkv", path, lossless=True)
    assert decode(path.read_bytes()).channels == 2


def test_the_same_pcm_gives_the_same_numbers_through_either_decoder(work, speech):
    """float wav (libsndfile, block by block) == the same floats in Matroska (FFmpeg, frame by frame)."""
    mkv = work / "same.mkv"
    ffmpeg("-i", speech, "-c:a", "pcm_f32le", mkv)
    a, b = decode(speech.read_bytes(), "speech.wav"), decode(mkv.read_bytes(), "same.mkv")
    assert sf.info(str(speech)).frames > 65536  # more than one libsndfile block
    assert (a.sample_rate, a.channels) == (b.sample_rate, b.channels) == (48000, 2)
    np.testing.assert_array_equal(a.samples, b.samples)


def test_a_vbr_mp3_without_a_xing_header_decodes_whole(work, speech, monkeypatch):
    """libsndfile takes an mp3's length from its first frame's size when no Xing/Info header states
    it, and reads no further: a clip that starts on speech (a big frame) and ends in silence (small
    frames) came out a fraction of its length."""
    path = work / "noxing.mp3"
    trimmed = "silenceremove=start_periods=1:start_threshold=0.02,apad=pad_dur=2"
    ffmpeg("-i", speech, "-af", trimmed, "-c:a", "libmp3lame", "-q:a", "4", "-write_xing", "0", path)
    check_same_speech("noxing.mp3", path, lossless=False)
    # the limit counts the whole file (3.6 s), not libsndfile's estimate (~1 s)
    with pytest.raises(AudioError, match=r"^too long: "):
        decode(path.read_bytes(), "noxing.mp3", max_duration_s=2.5)
    # a tag after the last frame is no audio: libsndfile's reading stands, FFmpeg is not asked
    tagged = work / "tagged.mp3"
    ffmpeg("-i", speech, "-c:a", "libmp3lame", "-q:a", "4", tagged)  # with a Xing header
    ape = b"APETAGEX" + (2000).to_bytes(4, "little") + (32).to_bytes(4, "little") + bytes(20)
    whole = decode(tagged.read_bytes(), "tagged.mp3")
    with monkeypatch.context() as m:
        m.setattr("pipeline.audio._read_ffmpeg", lambda *a, **k: pytest.fail("FFmpeg read a tagged mp3"))
        for tail in (ape, ape + b"TAG" + bytes(125)):
            np.testing.assert_array_equal(decode(tagged.read_bytes() + tail, "t.mp3").samples, whole.samples)
    # junk after the last frame: no error (FFmpeg skips what it cannot decode in a raw stream)
    junk = path.read_bytes() + bytes(range(256)) * 12
    assert decode(junk, "junk.mp3").duration_s == pytest.approx(len(expected_16k(path)[0]) / 16000, abs=0.1)


@pytest.mark.parametrize(
    "name,codec",
    [("g726.wav", ["-ar", "8000", "-ac", "1", "-c:a", "g726"]), ("ac3.wav", ["-c:a", "ac3"])],
)
def test_a_wav_of_a_codec_libsndfile_lacks_goes_to_ffmpeg(work, speech, name, codec):
    """libsndfile refuses a WAV whose format tag it does not know ("Malformed 'fmt ' chunk"): that was
    an error row, though FFmpeg decodes it (telephony G.726, AC-3 from video)."""
    path = work / name
    ffmpeg("-i", speech, *codec, path)
    check_same_speech(name, path, lossless=False)


def test_mp3_files_joined_end_to_end_decode_whole(work, speech):
    """`cat a.mp3 b.mp3` (podcast parts, call segments): libsndfile stops at the length the first
    part's Xing header states, and FFmpeg, asked then, refused the second part's header frame as
    invalid data, so the result was the first part alone. A raw stream skips a frame it cannot decode
    and goes on at the next, as the ffmpeg CLI and libsndfile do."""
    parts = [work / f"part{k}.mp3" for k in range(2)]
    for part, lead in zip(parts, ("anull", "adelay=300|300"), strict=True):
        ffmpeg("-i", speech, "-af", lead, "-c:a", "libmp3lame", "-q:a", "4", part)  # ID3 + Xing each
    joined = b"".join(part.read_bytes() for part in parts)
    out = decode(joined, "joined.mp3", resampler="torchaudio").samples
    first, second = (expected_16k(part)[0] for part in parts)
    # the second part's encoder delay and padding (<= 2 frames) stay: its Xing header is not the file's
    assert 0 <= len(out) - len(first) - len(second) <= 2 * 1152 // 3 + 16, (len(out), len(first), len(second))
    n = len(first) - 320
    a, b = out[:n].astype(np.float64), first[:n].astype(np.float64)
    assert (a @ b) / np.sqrt((a @ a) * (b @ b)) > 0.99


@pytest.mark.parametrize("codec,suffix", [("libvorbis", "ogg"), ("libopus", "opus")])
def test_a_chained_ogg_decodes_every_link(work, speech, codec, suffix):
    """Ogg files joined end to end (`cat`, a stream recorded across a metadata change) are one chained
    Ogg: libsndfile reads the first link only and stopped there, silently; FFmpeg reads them all. (At
    the junction FFmpeg builds differ by a few ms: the length is checked to 20 ms, the first link's
    samples against the CLI's decoding of that link alone.)"""
    links = [work / f"link{k}.{suffix}" for k in range(2)]
    for link, lead in zip(links, ("anull", "adelay=300|300"), strict=True):  # two different links
        ffmpeg("-i", speech, "-af", lead, "-c:a", codec, "-ar", "48000", link)
    path = work / f"chained.{suffix}"
    path.write_bytes(b"".join(link.read_bytes() for link in links))
    out = decode(path.read_bytes(), path.name, resampler="torchaudio").samples
    first, second = (expected_16k(link)[0] for link in links)
    assert abs(len(out) - len(first) - len(second)) <= 320, (len(out), len(first), len(second))
    n = len(first) - 320
    a, b = out[:n].astype(np.float64), first[:n].astype(np.float64)
    assert (a @ b) / np.sqrt((a @ a) * (b @ b)) > 0.99


def test_an_mp3_under_the_limit_is_not_refused_for_libsndfile_s_estimate(work, speech):
    """Without a Xing header (ffmpeg writing VBR mp3 to a pipe) libsndfile's length is the file size
    over the first frame's bitrate: a quiet start (small frames) makes it several times too long, and
    a file well under audio.max_duration_s was refused as "too long ... as its header states"."""
    path = work / "quiet_start.mp3"
    lead = "adelay=1500|1500,apad=pad_dur=0.5"
    path.write_bytes(ffmpeg("-i", speech, "-af", lead, "-c:a", "libmp3lame", "-q:a", "4", "-f", "mp3", "-"))
    estimate_s = sf.info(str(path)).duration
    expected, _, _ = expected_16k(path)
    actual_s = len(expected) / 16000
    assert estimate_s > 2 * actual_s  # the precondition: libsndfile's length is far too long
    out = decode(path.read_bytes(), "quiet_start.mp3", max_duration_s=actual_s + 0.5)
    assert abs(len(out.samples) - len(expected)) <= 16
    with pytest.raises(AudioError, match=r"^too long: .* decoded so far, over the limit of 1 s"):
        decode(path.read_bytes(), "quiet_start.mp3", max_duration_s=1)


def test_a_seekable_file_object_decodes_like_bytes(work, speech):
    path = make(work, speech, "v.mp4", LOSSY["v.mp4"])
    with open(path, "rb") as f:
        f.seek(100)  # decoded from the start whatever the position
        from_file = decode(f, "v.mp4")
    np.testing.assert_array_equal(from_file.samples, decode(path.read_bytes()).samples)
    with open(speech, "rb") as f:
        np.testing.assert_array_equal(decode(f).samples, decode(speech.read_bytes()).samples)


# -- what is not audio -----------------------------------------------------------------------------


def test_a_video_only_file_has_no_audio_stream(work):
    path = work / "video_only.mp4"
    ffmpeg(*VIDEO, "-t", "1", *H264, path)
    with pytest.raises(AudioError, match=r"^no audio stream: the file holds only video streams$"):
        decode(path.read_bytes(), "video_only.mp4")


@pytest.mark.parametrize("faststart", [False, True])
def test_truncated_mp4_raises(work, speech, faststart):
    """Index at the end (ffmpeg's default): cut in half, there is no index. Index first: the data runs out."""
    path = work / f"cut{int(faststart)}.mp4"
    flags = ["-movflags", "+faststart"] if faststart else []
    ffmpeg(
        *VIDEO, "-i", speech, "-shortest", "-map", "0:v", "-map", "1:a", *H264, "-c:a", "aac", *flags, path
    )
    data = path.read_bytes()
    decode(data, path.name)  # whole: fine
    needle = (
        r"corrupt or truncated audio: (FFmpeg stopped at|decoded .* its index lists)"
        if faststart
        else r"format '\.mp4', or a corrupt file"
    )
    with pytest.raises(AudioError, match=needle):
        decode(data[: len(data) // 2], path.name)


# -- limits ----------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def long_speech(work, speech) -> Path:
    """60 s: the speech clip repeated, 48 kHz stereo 16-bit wav."""
    out = work / "long.wav"
    ffmpeg("-stream_loop", "-1", "-i", speech, "-t", "60", "-c:a", "pcm_s16le", out)
    return out


def test_too_long_is_rejected_from_the_header_before_decoding(work, long_speech):
    mp4 = work / "long.mp4"
    ffmpeg("-i", long_speech, "-c:a", "aac", "-movflags", "+faststart", mp4)
    limit = r"too long: 60\.\d s as its header states, over the limit of 10 s \(audio\.max_duration_s\)"
    for path in (long_speech, mp4):
        data = path.read_bytes()
        with pytest.raises(AudioError, match=limit):
            decode(data, path.name, max_duration_s=10)
        assert decode(data, path.name, max_duration_s=61).duration_s == pytest.approx(60, abs=0.1)
    # the first tenth of the mp4 still has its index (faststart) but not the audio: rejected unread
    with pytest.raises(AudioError, match=limit):
        decode(mp4.read_bytes()[: mp4.stat().st_size // 10], "long.mp4", max_duration_s=10)


def test_a_raw_aac_under_the_limit_is_not_refused_for_ffmpeg_s_estimate(work, speech):
    """Raw ADTS AAC (an .aac from a phone recorder) states no duration: FFmpeg estimates one from the
    bitrate of its first frames, several times too long after a quiet start (88 s for these 5 s), and a
    file well under audio.max_duration_s was refused as "too long ... as its header states"."""
    path = work / "quiet_start.aac"
    ffmpeg("-i", speech, "-af", "adelay=3000|3000,apad=pad_dur=0.5", "-c:a", "aac", "-q:a", "2", path)
    expected, _, _ = expected_16k(path)
    limit = len(expected) / 16000 + 1
    out = decode(path.read_bytes(), path.name, max_duration_s=limit)
    assert abs(len(out.samples) - len(expected)) <= 16
    with pytest.raises(AudioError, match=r"^too long: .* decoded so far, over the limit of 2 s"):
        decode(path.read_bytes(), path.name, max_duration_s=2)


def test_too_long_without_a_stated_duration_stops_while_decoding(long_speech):
    # Matroska written to a pipe has no duration in its header: the limit applies as frames arrive
    data = ffmpeg("-i", long_speech, "-c:a", "flac", "-f", "matroska", "-")
    with pytest.raises(AudioError, match=r"too long: 10\.\d+ s decoded so far, .*\(audio\.max_duration_s\)"):
        decode(data, "piped.mkv", max_duration_s=10)


def test_too_big_is_rejected_by_size(speech):
    data = speech.read_bytes()
    with pytest.raises(
        AudioError, match=r"^file too big: .* over the limit of .* MB \(audio\.max_file_mb\)$"
    ):
        decode(data, "speech.wav", max_bytes=len(data) - 1)
    decode(data, "speech.wav", max_bytes=len(data))
    with open(speech, "rb") as f, pytest.raises(AudioError, match="audio.max_file_mb"):
        decode(f, max_bytes=1000)


@pytest.mark.parametrize("suffix", [".wav", ".mkv"])
def test_a_long_multichannel_file_is_never_held_interleaved(work, suffix):
    """2 minutes of 48 kHz stereo: the decoder's numpy memory peaks well under the interleaved float32
    array (the mono buffer is half of it), for libsndfile's blocks and FFmpeg's frames alike."""
    wav = work / "two_minutes.wav"
    if not wav.exists():
        subprocess.run(
            [
                "sox",
                "-D",
                "-n",
                "-r",
                "48000",
                "-c",
                "2",
                "-b",
                "16",
                str(wav),
                "synth",
                "120",
                "sine",
                "440",
                "sine",
                "660",
            ],
            check=True,
        )
    path = wav if suffix == ".wav" else work / "two_minutes.mkv"
    if not path.exists():
        ffmpeg("-i", wav, "-c:a", "pcm_s16le", path)
    data = path.read_bytes()
    interleaved = 120 * 48000 * 2 * 4
    tracemalloc.start()
    try:
        out = decode(data, path.name)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert out.channels == 2 and len(out.samples) == 120 * 16000
    # the mono buffer (1/2 of it) and the 16 kHz output (1/6; libsoxr's is a numpy array, torchaudio's
    # a torch one that tracemalloc does not see) plus blocks: held whole, it alone would be 1
    assert peak < 0.8 * interleaved, (peak, interleaved)
