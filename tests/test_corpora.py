"""Corpora as they ship, through jobs/extract.py, against the model run on independently prepared audio.

Each form is made by the tool its users have (sox/ffmpeg for audio, Lhotse for CutSets, Hugging Face
`datasets` for Parquet shards, `http.server` for URLs); the reference for every row is the model on
the same span cut or decoded by another program (sox, the ffmpeg CLI, soundfile + torchaudio by hand).
"""

import functools
import http.server
import json
import shutil
import subprocess
import threading
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest
import soundfile as sf
import torch
import torchaudio

from pipeline.cli import extract
from pipeline.model import load_bundle

ROOT = Path(__file__).resolve().parent.parent

SENTENCES = ["I can not believe you did that", "the weather is fine today", "leave me alone please"]


@pytest.fixture(scope="module")
def recording(tmp_path_factory):
    """~6 s of speech with pauses, as a 44.1 kHz stereo flac and a 16 kHz mono wav of the same signal."""
    from pipeline.testing.samples import synthesize

    d = tmp_path_factory.mktemp("recording")
    parts = []
    for i, text in enumerate(SENTENCES):
        clip = synthesize(text, d / f"s{i}.wav", pitch=40 + 10 * i, sample_rate=44100)
        x, _ = sf.read(str(clip), dtype="float32")
        parts += [x, np.zeros(int(0.4 * 44100), np.float32)]
    mono = np.concatenate(parts)
    stereo = np.stack([mono, 0.5 * mono], axis=1)
    sf.write(str(d / "rec.flac"), stereo, 44100, subtype="PCM_24")
    sf.write(str(d / "rec16k.wav"), resample_ref(mono, 44100), 16000, subtype="FLOAT")
    return d


def resample_ref(x: np.ndarray, sr: int) -> np.ndarray:
    t = torch.from_numpy(np.ascontiguousarray(x, np.float32))
    return (t if sr == 16000 else torchaudio.functional.resample(t, sr, 16000)).numpy()


def decoded_ref(path: Path) -> np.ndarray:
    """soundfile -> channel mean -> torchaudio resample: the FunASR recipe, by hand."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    return resample_ref(x.mean(axis=1), sr)


def ffmpeg_ref(path: Path) -> np.ndarray:
    """The ffmpeg CLI decodes the first audio stream at its own rate and channels; mean; resample."""
    probe = subprocess.run(
        [
            "ffprobe",
            "-v",
            "error",
            "-select_streams",
            "a:0",
            "-show_entries",
            "stream=sample_rate,channels",
            "-of",
            "json",
            str(path),
        ],
        capture_output=True,
        text=True,
        check=True,
    )
    stream = json.loads(probe.stdout)["streams"][0]
    raw = subprocess.run(
        [
            "ffmpeg",
            "-v",
            "error",
            "-i",
            str(path),
            "-map",
            "0:a:0",
            "-f",
            "f32le",
            "-acodec",
            "pcm_f32le",
            "-",
        ],
        capture_output=True,
        check=True,
    ).stdout
    x = np.frombuffer(raw, np.float32).reshape(-1, int(stream["channels"]))
    return resample_ref(x.mean(axis=1), int(stream["sample_rate"]))


def sox_cut(wav16k: Path, start_s: float, end_s: float | None, out: Path) -> np.ndarray:
    """sox trims a 16 kHz file by sample counts: an independent cut on the 16 kHz grid."""
    a = round(start_s * 16000)
    cmd = ["sox", str(wav16k), str(out), "trim", f"{a}s"]
    if end_s is not None:
        cmd.append(f"={round(end_s * 16000)}s")
    subprocess.run(cmd, check=True)
    return sf.read(str(out), dtype="float32")[0]


def run_job(tmp_path, manifest, model_dir, extra="", name="out"):
    out = tmp_path / name
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n{extra}"
        f"audio:\n  resampler: torchaudio\n"  # the references resample as FunASR does
        f"model:\n  source: {model_dir}\n  device: cpu\n  dtype: float32\n"
        f"output:\n  path: {out}\n  max_error_fraction: 1.0\n"
    )
    assert extract.main(["--config", str(cfg)]) == 0
    return {r["id"]: r for r in pads.dataset(str(out), format="parquet").to_table().to_pylist()}, out


def assert_model_equal(bundle, row, clip, atol=1e-4):
    with torch.no_grad():
        ref = bundle.model(torch.from_numpy(np.ascontiguousarray(clip, np.float32))[None])
    assert row["error"] is None, row["error"]
    assert row["num_frames"] == ref.frames.shape[1]
    np.testing.assert_allclose(np.array(row["embedding"]), ref.embedding[0].numpy(), atol=atol)
    np.testing.assert_allclose(np.array(row["scores"]), ref.scores[0].numpy(), atol=atol)
    assert row["label"] == bundle.labels[int(ref.scores[0].argmax())]


def test_nemo_segments_in_manifest_shards_of_a_stereo_flac(ray_session, tiny_model_dir, recording, tmp_path):
    spans = [(0.0, 1.2), (1.75, 2.5), (3.1, None)]
    shards = tmp_path / "manifests"
    shards.mkdir()
    for k, (start, dur) in enumerate(spans):
        row = {
            "id": f"seg{k}",
            "audio_filepath": str(recording / "rec.flac"),
            "offset": start,
            "duration": dur,
        }
        (shards / f"part-{k}.jsonl").write_text(json.dumps(row) + "\n")
    (shards / "part-9.jsonl").write_text(
        json.dumps(
            {"id": "late", "audio_filepath": str(recording / "rec.flac"), "offset": 60.0, "duration": 1.0}
        )
        + "\n"
    )
    rows, out = run_job(tmp_path, f"{shards}/part-*.jsonl", tiny_model_dir)
    assert len(rows) == 4
    bundle = load_bundle(tiny_model_dir)
    whole = decoded_ref(recording / "rec.flac")
    for k, (start, dur) in enumerate(spans):
        r = rows[f"seg{k}"]
        a, b = round(start * 16000), len(whole) if dur is None else round((start + dur) * 16000)
        assert_model_equal(bundle, r, whole[a:b])
        assert r["offset_s"] == start and abs(r["duration_s"] - (b - a) / 16000) < 1e-6
        assert (r["sample_rate"], r["channels"]) == (44100, 2)
    assert "past the end" in rows["late"]["error"] and rows["late"]["offset_s"] == 60.0
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"]["input"] == 4 and run["output_totals"]["rows"] == 4


def test_kaldi_data_dir_against_sox_cuts(ray_session, tiny_model_dir, recording, tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    wav = recording / "rec16k.wav"
    (d / "wav.scp").write_text(f"rec1 {wav}\n")
    (d / "segments").write_text("utt1 rec1 0.25 1.50\nutt2 rec1 2.00 3.30\nutt3 rec1 4.10 -1\n")
    (d / "utt2spk").write_text("utt1 ann\nutt2 ann\nutt3 bob\n")
    rows, _ = run_job(tmp_path, d, tiny_model_dir)
    bundle = load_bundle(tiny_model_dir)
    for utt, start, end in (("utt1", 0.25, 1.5), ("utt2", 2.0, 3.3), ("utt3", 4.1, None)):
        clip = sox_cut(wav, start, end, tmp_path / f"{utt}.wav")
        assert_model_equal(bundle, rows[utt], clip)
        assert rows[utt]["recording_id"] == "rec1"
    assert rows["utt3"]["speaker"] == "bob"


def test_lhotse_cutset(ray_session, tiny_model_dir, recording, tmp_path):
    lhotse = pytest.importorskip("lhotse")
    rec = lhotse.Recording.from_file(str(recording / "rec.flac"), recording_id="rec")
    sups = [
        lhotse.SupervisionSegment(
            id="a", recording_id="rec", start=0.3, duration=1.0, speaker="x", text="one"
        ),
        lhotse.SupervisionSegment(
            id="b", recording_id="rec", start=2.0, duration=1.4, custom={"emotion": "ang"}
        ),
    ]
    cuts = lhotse.CutSet.from_manifests(
        recordings=lhotse.RecordingSet.from_recordings([rec]),
        supervisions=lhotse.SupervisionSet.from_segments(sups),
    )
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    rows, _ = run_job(tmp_path, tmp_path / "cuts.jsonl.gz", tiny_model_dir)
    bundle = load_bundle(tiny_model_dir)
    whole = decoded_ref(recording / "rec.flac")
    for sid, start, dur in (("a", 0.3, 1.0), ("b", 2.0, 1.4)):
        assert_model_equal(bundle, rows[sid], whole[round(start * 16000) : round((start + dur) * 16000)])
    assert rows["a"]["speaker"] == "x" and json.loads(rows["b"]["custom"]) == {"emotion": "ang"}


def test_lhotse_mono_cuts_are_their_channel_alone(ray_session, tiny_model_dir, recording, tmp_path):
    """Lhotse MonoCuts of a stereo call (one speaker per channel) and of a recording kept as a file per
    headset: each is its own channel, as Lhotse loads it, never the mix nor the first file."""
    lhotse = pytest.importorskip("lhotse")
    x, sr = sf.read(str(recording / "rec.flac"), dtype="float32")
    left, right = x[:, 0], np.ascontiguousarray(x[::-1, 0])  # two different signals
    sf.write(str(tmp_path / "call.flac"), np.stack([left, right], axis=1), sr, subtype="PCM_24")
    for c, ch in enumerate((left, right)):
        sf.write(str(tmp_path / f"mtg.Headset-{c}.flac"), ch, sr, subtype="PCM_24")
    recs = [
        lhotse.Recording.from_file(str(tmp_path / "call.flac"), recording_id="call"),
        lhotse.Recording(
            "mtg",
            [
                lhotse.audio.AudioSource(
                    type="file", channels=[c], source=str(tmp_path / f"mtg.Headset-{c}.flac")
                )
                for c in (0, 1)
            ],
            sampling_rate=sr,
            num_samples=len(left),
            duration=len(left) / sr,
        ),
    ]
    sups = [
        lhotse.SupervisionSegment(f"{r}-{c}", r, start=0.5, duration=1.5, channel=c)
        for r in ("call", "mtg")
        for c in (0, 1)
    ]
    cuts = lhotse.CutSet.from_manifests(
        recordings=lhotse.RecordingSet.from_recordings(recs),
        supervisions=lhotse.SupervisionSet.from_segments(sups),
    ).trim_to_supervisions(keep_overlapping=False)  # each cut: its own supervision
    cuts.to_file(tmp_path / "cuts.jsonl")
    rows, _ = run_job(tmp_path, tmp_path / "cuts.jsonl", tiny_model_dir)
    bundle = load_bundle(tiny_model_dir)
    for c, ch in enumerate((left, right)):
        clip = resample_ref(ch, sr)[8000:32000]
        for r in ("call", "mtg"):
            assert_model_equal(bundle, rows[f"{r}-{c}"], clip)


def sox_channel(src: Path, channel: int, dst: Path) -> Path:
    """One channel (1-based) of `src` alone, by sox."""
    subprocess.run(["sox", str(src), str(dst), "remix", str(channel)], check=True)
    return dst


def test_lhotse_multicut_of_a_stereo_call_reads_each_side_on_its_channel(
    ray_session, tiny_model_dir, recording, tmp_path
):
    """A Lhotse MultiCut of a stereo call, one speaker per channel (`CutSet.from_manifests` on a 2-channel
    recording whose supervisions say `"channel": 0` / `1`, as Fisher and Switchboard recipes write them):
    each supervision equals the model on its channel cut out by sox (`remix`) and trimmed, not on the
    mix. The same file under a recording whose supervisions all name channel 0 (Lhotse's default) is the
    mix, as before."""
    lhotse = pytest.importorskip("lhotse")
    sides = []
    for k, text in enumerate(["I can not believe you did that", "leave me alone please"]):
        from pipeline.testing.samples import synthesize

        x, _ = sf.read(str(synthesize(text, tmp_path / f"say{k}.wav", pitch=30 + 40 * k)), dtype="float32")
        # side A speaks from 0.2 s, side B from 1.0 s: they talk over each other, so the mix is neither
        side = np.zeros(4 * 16000, np.float32)
        at = (3200, 16000)[k]
        side[at : at + min(len(x), 28000)] = x[:28000]
        sf.write(str(tmp_path / f"side{k}.wav"), side, 16000, subtype="PCM_16")
        sides.append(tmp_path / f"side{k}.wav")
    call = tmp_path / "call.wav"
    subprocess.run(["sox", "-M", *map(str, sides), str(call)], check=True)  # channel 1: A, channel 2: B
    recs = [lhotse.Recording.from_file(str(call), recording_id=rid) for rid in ("call", "room")]
    sup = lhotse.SupervisionSegment
    spans = {"call-A": (0.2, 1.7), "call-B": (1.0, 1.7), "room-1": (0.2, 1.7), "room-2": (1.0, 1.7)}
    sups = [
        sup("call-A", "call", *spans["call-A"], channel=0),
        sup("call-B", "call", *spans["call-B"], channel=1),
        sup("room-1", "room", *spans["room-1"]),
        sup("room-2", "room", *spans["room-2"]),
    ]
    cuts = lhotse.CutSet.from_manifests(
        recordings=lhotse.RecordingSet.from_recordings(recs),
        supervisions=lhotse.SupervisionSet.from_segments(sups),
    )
    assert {type(c).__name__ for c in cuts} == {"MultiCut"}
    cuts.to_file(tmp_path / "cuts.jsonl.gz")
    rows, _ = run_job(tmp_path, tmp_path / "cuts.jsonl.gz", tiny_model_dir)
    assert sorted(rows) == sorted(spans)
    bundle = load_bundle(tiny_model_dir)
    for sid, channel in (("call-A", 1), ("call-B", 2)):
        start, dur = spans[sid]
        alone = sox_channel(call, channel, tmp_path / f"ch{channel}.wav")
        assert_model_equal(bundle, rows[sid], sox_cut(alone, start, start + dur, tmp_path / f"{sid}.wav"))
        assert rows[sid]["channels"] == 2  # the file's count, as for RTTM turns on their channel
    for sid in ("room-1", "room-2"):
        start, dur = spans[sid]
        both = sox_cut(call, start, start + dur, tmp_path / f"{sid}.wav")
        assert both.shape[1] == 2
        assert_model_equal(bundle, rows[sid], both.mean(axis=1))


def test_hugging_face_parquet_with_embedded_audio(ray_session, tiny_model_dir, recording, tmp_path):
    datasets = pytest.importorskip("datasets")
    from datasets.table import embed_table_storage

    files = [str(recording / f"s{i}.wav") for i in range(3)]
    ds = datasets.Dataset.from_dict({"audio": files, "emotion": ["ang", "neu", "sad"]})
    ds = ds.cast_column("audio", datasets.Audio())
    table = embed_table_storage(ds.data.table)
    import pyarrow as pa

    table = table.append_column("id", pa.array(["x0", "x1", "x2"]))
    shard = tmp_path / "hub" / "data" / "train-00000-of-00001.parquet"
    shard.parent.mkdir(parents=True)
    pq.write_table(table, shard)
    # the same layout with a row whose audio bytes are null
    broken = (
        table.slice(0, 1)
        .set_column(
            table.schema.get_field_index("audio"),
            "audio",
            pa.array([{"bytes": None, "path": "gone.wav"}], table["audio"].type),
        )
        .set_column(table.schema.get_field_index("id"), "id", pa.array(["x9"]))
    )
    pq.write_table(broken, shard.parent / "train-bad.parquet")
    for f in files:  # the bytes are in the manifest: the files are not needed any more
        shutil.move(f, f + ".moved")
    try:
        rows, _ = run_job(tmp_path, shard.parent, tiny_model_dir)
    finally:
        for f in files:
            shutil.move(f + ".moved", f)
    bundle = load_bundle(tiny_model_dir)
    for i in range(3):
        assert_model_equal(bundle, rows[f"x{i}"], decoded_ref(Path(files[i])))
        assert (
            rows[f"x{i}"]["path"].endswith(f"s{i}.wav")
            and rows[f"x{i}"]["emotion"] == ["ang", "neu", "sad"][i]
        )
    # no bytes: the row is fetched from the struct's path, which names nothing here
    assert rows["x9"]["error"].startswith("fetch: FileNotFoundError") and "gone.wav" in rows["x9"]["error"]


def ffmpeg(*args) -> None:
    subprocess.run(["ffmpeg", "-v", "error", *map(str, args)], check=True)


@pytest.fixture(scope="module")
def meld_folder(tmp_path_factory, recording):
    """MELD-style: one mp4 (H.264 video + AAC 48 kHz stereo) per utterance, plus one without audio."""
    if not shutil.which("ffmpeg"):
        pytest.skip("needs the ffmpeg CLI (make sysdeps)")
    d = tmp_path_factory.mktemp("meld")
    (d / "train").mkdir()
    video = "-f lavfi -i testsrc=size=64x48:rate=10".split()
    h264 = "-c:v libx264 -pix_fmt yuv420p".split()
    for i in range(2):
        audio = ["-i", str(recording / f"s{i}.wav"), "-shortest", *"-c:a aac -ar 48000 -ac 2".split()]
        ffmpeg(*video, *audio, *h264, d / "train" / f"dia{i}_utt0.mp4")
    ffmpeg(*video, "-t", "1", *h264, d / "train" / "silent_video.mp4")
    return d


def test_meld_style_folder_of_mp4(ray_session, tiny_model_dir, meld_folder, tmp_path):
    rows, _ = run_job(tmp_path, meld_folder, tiny_model_dir)
    assert set(rows) == {"train/dia0_utt0", "train/dia1_utt0", "train/silent_video"}
    bundle = load_bundle(tiny_model_dir)
    for i in range(2):
        r = rows[f"train/dia{i}_utt0"]
        ref = ffmpeg_ref(meld_folder / "train" / f"dia{i}_utt0.mp4")
        # the same AAC stream decoded by another FFmpeg build: close, and the same label
        with torch.no_grad():
            out = bundle.model(torch.from_numpy(ref)[None])
        assert r["error"] is None and (r["sample_rate"], r["channels"]) == (48000, 2)
        assert abs(r["num_frames"] - out.frames.shape[1]) <= 1
        np.testing.assert_allclose(np.array(r["embedding"]), out.embedding[0].numpy(), atol=2e-2)
        assert r["label"] == bundle.labels[int(out.scores[0].argmax())]
    assert "no audio stream" in rows["train/silent_video"]["error"]


@pytest.fixture()
def http_root(tmp_path):
    """A plain HTTP server on 127.0.0.1 serving a folder (stopped after the test)."""
    root = tmp_path / "www"
    root.mkdir()
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(root))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield root, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_manifest_and_audio_over_http(ray_session, tiny_model_dir, recording, http_root, tmp_path):
    root, url = http_root
    for i in range(2):
        shutil.copy(recording / f"s{i}.wav", root / f"s{i}.wav")
    rows = [
        {"id": "h0", "path": "s0.wav"},
        {"id": "h1", "path": f"{url}/s1.wav"},
        {"id": "gone", "path": "nope.wav"},
    ]
    (root / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    got, _ = run_job(tmp_path, f"{url}/manifest.jsonl", tiny_model_dir)
    bundle = load_bundle(tiny_model_dir)
    for i in range(2):
        assert_model_equal(bundle, got[f"h{i}"], decoded_ref(recording / f"s{i}.wav"))
        assert got[f"h{i}"]["path"] == f"{url}/s{i}.wav"
    assert (
        got["gone"]["error"].startswith("fetch: FileNotFoundError")
        and f"{url}/nope.wav" in got["gone"]["error"]
    )
