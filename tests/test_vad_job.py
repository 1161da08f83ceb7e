"""`audio.segmentation: vad` through jobs/extract.py: one row per speech segment of each recording,
each equal to the model run on that span alone (cut independently), exactly once across reruns."""

import json
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import soundfile as sf
import torch
import torchaudio

from pipeline.cli import extract
from pipeline.model import load_bundle

from .speech import encode, long_recording, noise_only, sentence_clips

pytest.importorskip("silero_vad")
ROOT = Path(__file__).resolve().parent.parent


def reference(path: Path) -> np.ndarray:
    """soundfile -> channel mean -> torchaudio resample, by hand."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    t = torch.from_numpy(x.mean(axis=1))
    return (t if sr == 16000 else torchaudio.functional.resample(t, sr, 16000)).numpy()


def test_recordings_split_into_speech_segments(ray_session, tiny_model_dir, tmp_path):
    clips = sentence_clips(3)
    wav_rec = long_recording(clips, [1.5, 2.0, 1.0, 1.5])
    (tmp_path / "call.wav").write_bytes(encode(wav_rec, "WAV"))
    flac_rec = long_recording(sentence_clips(3, sample_rate=44100)[::-1], [1.0, 2.5, 1.5, 1.0], 44100, seed=3)
    (tmp_path / "meeting.flac").write_bytes(encode(flac_rec, "FLAC", channels=2))
    (tmp_path / "hold_music.wav").write_bytes(encode(noise_only(4.0), "WAV"))
    rows = [
        {"id": "call", "path": "call.wav", "speaker": "a"},
        {"id": "meeting", "path": "meeting.flac", "speaker": "b"},
        {"id": "hold", "path": "hold_music.wav", "speaker": "c"},
    ]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "out"
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {tmp_path / 'm.jsonl'}\n"
        f"model:\n  source: {tiny_model_dir}\n  device: cpu\n  dtype: float32\n"
        f"audio:\n  segmentation: vad\n  resampler: torchaudio\n"  # as `reference` resamples
        f"output:\n  path: {out}\n"
    )
    assert extract.main(["--config", str(cfg)]) == 0
    got = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    by_rec: dict[str, list[dict]] = {}
    for r in got:
        by_rec.setdefault(r["recording_id"], []).append(r)
    bundle = load_bundle(tiny_model_dir)
    for rec_id, rec, fname in (("call", wav_rec, "call.wav"), ("meeting", flac_rec, "meeting.flac")):
        segs = sorted(by_rec[rec_id], key=lambda r: r["start_s"])
        assert len(segs) == len(rec.spans), [(s["start_s"], s["end_s"]) for s in segs]
        whole = reference(tmp_path / fname)
        for seg, (a, b) in zip(segs, rec.spans, strict=True):
            assert seg["error"] is None and seg["speaker"] == rows[0 if rec_id == "call" else 1]["speaker"]
            # around the true speech: speech_pad_ms (0.1 s), a 32 ms VAD window and the 20 ms grid
            assert a - 0.25 <= seg["start_s"] <= a + 0.05 and b - 0.05 <= seg["end_s"] <= b + 0.25
            # the id names the segment in centiseconds (7 digits), on the model's 20 ms grid: an even
            # count of 160-sample steps from the start of the recording
            name, a_cs, b_cs = seg["id"].rsplit("-", 2)
            assert (name, len(a_cs), len(b_cs), int(a_cs) % 2, int(b_cs) % 2) == (rec_id, 7, 7, 0, 0)
            assert (int(a_cs) * 160, int(b_cs) * 160) == (
                round(seg["start_s"] * 16000),
                round(seg["end_s"] * 16000),
            )
            assert seg["offset_s"] is None  # a whole file: no manifest span
            span = whole[round(seg["start_s"] * 16000) : round(seg["end_s"] * 16000)]
            with torch.no_grad():
                ref = bundle.model(torch.from_numpy(span)[None])
            np.testing.assert_allclose(np.array(seg["embedding"]), ref.embedding[0].numpy(), atol=1e-4)
            assert abs(seg["duration_s"] - len(span) / 16000) < 1e-6
    # no speech: the recording still appears once, not as a failure
    (hold,) = by_rec["hold"]
    assert (
        hold["id"] == "hold" and hold["error"] is None and hold["label"] is None and hold["start_s"] is None
    )
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"]["input"] == 3 and run["output_totals"]["error"] == 0
    # a rerun processes nothing and duplicates nothing
    assert extract.main(["--config", str(cfg)]) == 0
    again = pads.dataset(str(out), format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert sorted(again) == sorted(r["id"] for r in got) and len(set(again)) == len(again)
    assert json.loads((out / "_run.json").read_text())["rows"]["skipped"] == 3
