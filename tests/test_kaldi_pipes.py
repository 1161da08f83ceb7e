"""Kaldi `wav.scp` decoder pipes (`flac -c -d -s a.flac |`, `sph2pipe -f wav -p -c 2 a.sph |`, ...) as
the standard recipes write them: read as the file they name, on the channel they pick, never run.

The audio is real (espeak-ng speech; flac, stereo and NIST SPHERE files written by sox); the reference
for a pipe is the same audio given as a plain path, a channel cut out by `sox in.wav out.wav remix N`.
"""

import subprocess
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

from pipeline.audio import AudioError, decode
from pipeline.model import load_bundle
from pipeline.testing.samples import synthesize
from tests.test_corpora import assert_model_equal, run_job
from tests.test_manifest import read

UNREAD = "the pipeline does not read"


def sox(*args: str) -> None:
    subprocess.run(["sox", *args], check=True)


@pytest.fixture(scope="module")
def audio(tmp_path_factory) -> Path:
    """a.wav, b.wav (two voices, 16 kHz mono), st.wav = a|b as a stereo file, its channels cut alone
    (st1.wav, st2.wav), and the same audio as flac and NIST SPHERE (sox writes both)."""
    d = tmp_path_factory.mktemp("pipes_audio")
    synthesize("the weather is fine today", d / "a.wav", pitch=40)
    synthesize("leave me alone please, I said", d / "b.wav", pitch=80)
    sox("-M", str(d / "a.wav"), str(d / "b.wav"), str(d / "st.wav"))
    for n in (1, 2):
        sox(str(d / "st.wav"), str(d / f"st{n}.wav"), "remix", str(n))
    sox(str(d / "a.wav"), str(d / "a.flac"))
    sox(str(d / "st.wav"), str(d / "st.sph"))
    sox(str(d / "a.wav"), str(d / "a.sph"))
    return d


def shorten_sph(src: Path, out: Path, coding: str) -> Path:
    """An LDC-style shorten-compressed SPHERE file's header (`sample_coding -s26 pcm,embedded-shorten-v2.00`)
    over bytes that are not PCM: what must never be decoded as raw samples."""
    data = src.read_bytes()
    head = (
        data[:1024]
        .rstrip(b"\0")
        .replace(b"sample_coding -s3 pcm", f"sample_coding -s{len(coding)} {coding}".encode())
    )
    assert coding.encode() in head
    out.write_bytes(head.ljust(1024, b"\0") + bytes(range(256)) * 64)
    return out


def test_sox_writes_the_nist_sphere_files_the_tests_use(audio):
    assert (audio / "st.sph").read_bytes().startswith(b"NIST_1A")
    x, sr = sf.read(str(audio / "st.wav"), dtype="int16")
    assert sr == 16000 and x.shape[1] == 2 and not np.array_equal(x[:, 0], x[:, 1])


def test_decoder_pipes_are_read_as_the_file_and_channel_they_name(audio, tmp_path):
    a = audio
    (tmp_path / "wav.scp").write_text(
        f"libri flac -c -d -s {a}/a.flac |\n"
        f"libri2 flac -d -c -s {a}/a.flac|\n"
        f"libri3 flac --decode --stdout --silent '{a}/a.flac' |\n"
        f"sw-A /opt/kaldi/tools/sph2pipe_v2.5/sph2pipe -f wav -p -c 1 {a}/st.sph |\n"
        f"sw-B sph2pipe -f wav -p -c 2 {a}/st.sph |\n"
        f"wsj sph2pipe -f wav {a}/a.sph |\n"
        f"sx sox {a}/st.wav -t wav - |\n"
        f"sx2 sox {a}/st.wav -t wav - remix 2 |\n"
        f"sxmix sox -t wav {a}/st.wav -r 16000 -b 16 -e signed-integer -c 1 -t wav - |\n"
        f"ff ffmpeg -v 8 -i {a}/a.flac -f wav -acodec pcm_s16le - |\n"
        f"plain {a}/a.wav\n"
        f"rel sox st.wav -t wav - remix 1 |\n"
    )
    # both sides of the call name the file, as Switchboard dirs do: the pipe's channel is the recording
    (tmp_path / "reco2file_and_channel").write_text("sw-A st A\nsw-B st B\nsx st A\nsx2 st B\n")
    rows = {r["id"]: r for r in read(tmp_path, audio_root=str(a)).to_pylist()}
    expect = {
        "libri": (f"{a}/a.flac", None),
        "libri2": (f"{a}/a.flac", None),
        "libri3": (f"{a}/a.flac", None),
        "sw-A": (f"{a}/st.sph", 0),
        "sw-B": (f"{a}/st.sph", 1),
        "wsj": (f"{a}/a.sph", None),
        # a pipe passing every channel is the file as a plain path is: its side still picks a channel
        "sx": (f"{a}/st.wav", 0),
        "sx2": (f"{a}/st.wav", 1),
        "sxmix": (f"{a}/st.wav", None),
        "ff": (f"{a}/a.flac", None),
        "plain": (f"{a}/a.wav", None),
        # relative: against input.audio_root (the recipe's directory, where Kaldi runs the command)
        "rel": (f"{a}/st.wav", 0),
    }
    assert {k: (r["path"], r["_channel"]) for k, r in rows.items()} == expect
    assert all(r["_input_error"] is None for r in rows.values())


UNSUPPORTED = [
    ("sox /a.wav -t wav - speed 1.1 |", "sox effect 'speed 1.1'"),
    ("sox /a.wav -t wav - vol 0.5 |", "sox effect 'vol 0.5'"),
    ("sox /a.wav -t wav - trim 0 1 |", "sox effect 'trim 0 1'"),
    ("sox /a.wav -r 8000 -t wav - |", "resamples to 8000 Hz"),
    ("sox /a.wav /b.wav -t wav - |", "more than one input"),
    ("sox - -t wav - |", "standard input"),
    ("sph2pipe -f wav -p -t 1.5:3 /a.sph |", "-t 1.5:3 selects a range"),
    ("sph2pipe -f wav -u /a.sph |", "8-bit mu-law"),
    ("sph2pipe -f wav /a.sph /out.wav |", "writes to the file '/out.wav'"),
    ("flac -d /a.flac |", "without -c"),
    ("flac -c -d --skip=100 /a.flac |", "option --skip"),
    ("ffmpeg -i /a.m4a -ss 2 -f wav - |", "ffmpeg option -ss 2"),
    ("ffmpeg -i /a.m4a /out.wav |", "writes to the file '/out.wav'"),
    ("cat /a.wav |", "it runs 'cat'"),
    ("flac -c -d -s /a.flac | sox - -t wav - speed 1.1 |", "chains several commands"),
    ("sox $DATA/a.wav -t wav - |", "needs the shell"),
    ("sox /a.wav -t wav - 2>/dev/null |", "shell syntax"),
]


@pytest.mark.parametrize("command,why", UNSUPPORTED)
def test_a_pipe_whose_output_the_pipeline_does_not_reproduce_is_an_error_row(tmp_path, command, why):
    (tmp_path / "wav.scp").write_text(f"rec1 /audio/rec1.wav\nrec2 {command}\n")
    rows = read(tmp_path).to_pylist()
    assert rows[0]["_input_error"] is None and rows[1]["path"] is None
    error = rows[1]["_input_error"]
    assert error.startswith(f"wav.scp: 'rec2' is a pipe command ({command!r}) {UNREAD}: "), error
    assert why in error and error.endswith("; give a file path instead"), error


def test_a_pipe_in_a_wav_scp_beside_an_rttm_gives_the_turns_its_channel(audio, tmp_path):
    (tmp_path / "calls.rttm").write_text(
        "SPEAKER c1 1 0.10 0.80 <NA> <NA> agent <NA> <NA>\n"
        "SPEAKER c2 1 0.20 0.50 <NA> <NA> caller <NA> <NA>\n"
        "SPEAKER c3 1 0.00 0.40 <NA> <NA> x <NA> <NA>\n"
        "SPEAKER c3 2 0.50 0.90 <NA> <NA> y <NA> <NA>\n"
        "SPEAKER c4 1 0.00 0.40 <NA> <NA> z <NA> <NA>\n"
    )
    (tmp_path / "wav.scp").write_text(
        f"c1 flac -c -d -s {audio}/a.flac |\n"
        f"c2 sph2pipe -f wav -p -c 2 {audio}/st.sph |\n"
        f"c3 sox {audio}/st.wav -t wav - remix 1 |\n"
        f"c4 sox {audio}/st.wav -t wav - reverse |\n"
    )
    rows = {r["recording_id"] + r["speaker"]: r for r in read(tmp_path / "calls.rttm").to_pylist()}
    assert (rows["c1agent"]["path"], rows["c1agent"]["_channel"]) == (f"{audio}/a.flac", None)
    assert (rows["c2caller"]["path"], rows["c2caller"]["_channel"]) == (f"{audio}/st.sph", 1)
    # the RTTM's channels count within the one channel the pipe gives: its first is that channel
    assert (rows["c3x"]["path"], rows["c3x"]["_channel"]) == (f"{audio}/st.wav", 0)
    assert rows["c3y"]["path"] is None and "channel 2 of 'c3'" in rows["c3y"]["_input_error"]
    assert "sox effect 'reverse'" in rows["c4z"]["_input_error"]


def test_nist_sphere_decodes_as_the_wav_sox_wrote_it_from(audio):
    got = decode((audio / "st.sph").read_bytes(), "st.sph", channel=1)
    ref = decode((audio / "st2.wav").read_bytes(), "st2.wav")
    assert got.channels == 2 and np.array_equal(got.samples, ref.samples)


@pytest.mark.parametrize("coding", ["pcm,embedded-shorten-v2.00", "ulaw,embedded-shorten-v2.00"])
def test_a_shorten_compressed_sphere_file_is_refused_saying_how_to_convert_it(audio, tmp_path, coding):
    """FFmpeg fails on these with 'Invalid data' or 'Decoder not found' (or, for a decoder never
    checked against LDC's files, might decode them): the error must say what the file is."""
    f = shorten_sph(audio / "a.sph", tmp_path / "x.sph", coding)
    with pytest.raises(AudioError, match=r"shorten-compressed .*sph2pipe -f wav -p"):
        decode(f.read_bytes(), "x.sph")


def test_kaldi_pipes_through_the_job_equal_the_same_audio_as_plain_paths(
    ray_session, tiny_model_dir, audio, tmp_path
):
    d = tmp_path / "data"
    d.mkdir()
    shorten_sph(audio / "a.sph", audio / "packed.sph", "pcm,embedded-shorten-v2.00")
    (d / "wav.scp").write_text(
        f"libri flac -c -d -s {audio}/a.flac |\n"
        f"sw-B sph2pipe -f wav -p -c 2 {audio}/st.sph |\n"
        f"sx1 sox {audio}/st.wav -t wav - remix 1 |\n"
        f"ff ffmpeg -v 8 -i {audio}/a.flac -f wav -acodec pcm_s16le - |\n"
        f"packed sph2pipe -f wav -p {audio}/packed.sph |\n"
        f"fast sox {audio}/a.wav -t wav - speed 1.1 |\n"
    )
    (d / "segments").write_text(
        "u-libri libri 0.2 1.1\nu-sw sw-B 0.3 1.4\nu-sx sx1 0 -1\nu-ff ff 0 -1\nu-packed packed 0 1\nu-fast fast 0 1\n"
    )
    rows, _ = run_job(tmp_path, d, tiny_model_dir)
    assert len(rows) == 6
    bundle = load_bundle(tiny_model_dir)
    a = sf.read(str(audio / "a.wav"), dtype="float32")[0]
    b = sf.read(str(audio / "st2.wav"), dtype="float32")[0]
    left = sf.read(str(audio / "st1.wav"), dtype="float32")[0]
    assert_model_equal(bundle, rows["u-libri"], a[round(0.2 * 16000) : round(1.1 * 16000)])
    assert_model_equal(bundle, rows["u-sw"], b[round(0.3 * 16000) : round(1.4 * 16000)])
    assert_model_equal(bundle, rows["u-sx"], left)
    assert_model_equal(bundle, rows["u-ff"], a)
    assert (
        "shorten-compressed" in rows["u-packed"]["error"]
        and "sph2pipe -f wav -p" in rows["u-packed"]["error"]
    )
    assert rows["u-packed"]["embedding"] is None
    assert "sox effect 'speed 1.1'" in rows["u-fast"]["error"]
