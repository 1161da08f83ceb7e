"""Conversations through jobs/extract.py: one row per diariser turn, each equal to the model run on that
turn cut out by sox; the per-speaker timeline and summary of that output checked against the known turns.

The recordings (pipeline.testing.conversations) lay espeak-ng sentences of two voices at known times:
one overlap, a 44.1 kHz stereo recording, and a 20 ms turn shorter than the model's minimum.
"""

from __future__ import annotations

import io
import subprocess
from pathlib import Path

import numpy as np
import pyarrow.dataset as pads
import pytest
import soundfile as sf
import torch
import torchaudio

from pipeline.cli import extract, visualize
from pipeline.model import load_bundle
from pipeline.rttm import turn_id
from pipeline.testing.conversations import Conversation, make_conversations, overlap_s

core = pytest.importorskip("pyannote.core")
MIN_TURN_S = 0.025  # the model's receptive field, 400 samples at 16 kHz


@pytest.fixture(scope="module")
def convs(tmp_path_factory):
    """The recordings, and their RTTM written by pyannote itself (one file per recording)."""
    d = tmp_path_factory.mktemp("conversations")
    convs = make_conversations(d)
    for conv in convs:
        ann = core.Annotation(uri=conv.id)
        for k, t in enumerate(conv.turns):
            ann[core.Segment(t.start_s, t.end_s), k] = t.speaker
        out = io.StringIO()
        ann.write_rttm(out)
        (d / "rttm" / f"{conv.id}.rttm").write_text(out.getvalue())
    return d, convs


def run_job(
    tmp_path: Path, manifest: Path | str, model_dir, extra: str = "", name: str = "out"
) -> tuple[dict, Path]:
    out = tmp_path / name
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n{extra}"
        f"model:\n  source: {model_dir}\n  device: cpu\n  dtype: float32\n"
        f"audio:\n  resampler: torchaudio\n"  # as `reference` resamples
        f"output:\n  path: {out}\n  max_error_fraction: 1.0\n"
    )
    assert extract.main(["--config", str(cfg)]) == 0
    return {r["id"]: r for r in pads.dataset(str(out), format="parquet").to_table().to_pylist()}, out


def sox_cut(src: Path, start: float, end: float, dst: Path) -> Path:
    subprocess.run(["sox", str(src), str(dst), "trim", f"{start:.3f}", f"={end:.3f}"], check=True)
    return dst


def reference(path: Path) -> np.ndarray:
    """soundfile -> channel mean -> torchaudio resample, by hand."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    t = torch.from_numpy(x.mean(axis=1))
    return (t if sr == 16000 else torchaudio.functional.resample(t, sr, 16000)).numpy()


def model_on(bundle, clip: np.ndarray):
    with torch.no_grad():
        return bundle.model(torch.from_numpy(np.ascontiguousarray(clip, np.float32))[None])


def check_turns(rows: dict, convs, bundle, tmp_path: Path, ids=turn_id, overlaps: bool = True) -> None:
    """Every known turn is one row: its span, speaker and overlap, and the model's numbers on the turn
    cut out by sox (too short: an error row that says so)."""
    known = {ids(t.recording, t.speaker, t.start_s): (conv, t) for conv in convs for t in conv.turns}
    assert set(rows) == set(known)
    for rid, (conv, t) in known.items():
        r = rows[rid]
        assert (r["recording_id"], r["speaker"]) == (t.recording, t.speaker)
        assert r["start_s"] == pytest.approx(t.start_s, abs=1e-9)
        if overlaps:
            assert r["overlap_s"] == pytest.approx(overlap_s(t, conv.turns), abs=1e-6)
        if t.end_s - t.start_s < MIN_TURN_S:
            assert r["error"] is not None and "too short" in r["error"] and r["embedding"] is None
            continue
        assert r["error"] is None, r["error"]
        assert r["end_s"] == pytest.approx(t.end_s, abs=1e-9)
        assert (r["sample_rate"], r["channels"]) == (conv.sample_rate, conv.channels)
        cut = reference(sox_cut(conv.path, t.start_s, t.end_s, tmp_path / f"{rid}{conv.path.suffix}"))
        ref = model_on(bundle, cut)
        # 44.1 kHz: the job resamples the whole recording, then cuts; the cut resampled alone differs
        # in its first and last milliseconds (the resampler's filter sees no context there)
        atol = 1e-4 if conv.sample_rate == 16000 else 3e-3
        np.testing.assert_allclose(np.array(r["embedding"]), ref.embedding[0].numpy(), atol=atol)
        np.testing.assert_allclose(np.array(r["scores"]), ref.scores[0].numpy(), atol=atol)
        assert r["label"] == bundle.labels[int(ref.scores[0].argmax())]
        assert r["num_frames"] == ref.frames.shape[1]
        if conv.sample_rate != 16000:  # exact against the whole recording decoded by hand, then cut
            whole = reference(conv.path)[round(t.start_s * 16000) : round(t.end_s * 16000)]
            np.testing.assert_allclose(
                np.array(r["embedding"]), model_on(bundle, whole).embedding[0], atol=1e-4
            )


# -- diariser output in: RTTM files, one RTTM of many recordings, NeMo diarisation manifests -------


@pytest.fixture(scope="module")
def rttm_output(ray_session, tiny_model_dir, convs, tmp_path_factory):
    """The job on a glob of RTTM files (pyannote's: one per recording), audio found by file id."""
    d, _ = convs
    tmp = tmp_path_factory.mktemp("rttm_glob")
    return run_job(tmp, d / "rttm" / "*.rttm", tiny_model_dir, f"  audio_root: {d / 'audio'}\n")


@pytest.mark.slow
def test_rttm_glob_one_row_per_turn_equal_to_the_model_on_sox_cuts(
    rttm_output, convs, tiny_model_dir, tmp_path
):
    rows, out = rttm_output
    check_turns(rows, convs[1], load_bundle(tiny_model_dir), tmp_path)
    # a rerun processes nothing and duplicates nothing
    cfg = out.parent / "out.yaml"
    assert extract.main(["--config", str(cfg)]) == 0
    again = pads.dataset(str(out), format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert sorted(again) == sorted(rows)


@pytest.mark.slow
def test_one_rttm_of_many_recordings_with_wav_scp_beside_it(ray_session, tiny_model_dir, convs, tmp_path):
    """A folder holding one RTTM of all recordings (lines in any order) and a Kaldi wav.scp."""
    d, cs = convs
    folder = tmp_path / "diarised"
    folder.mkdir()
    lines = [line for c in cs for line in (d / "rttm" / f"{c.id}.rttm").read_text().splitlines(keepends=True)]
    (folder / "all.rttm").write_text("".join(lines[::-1]))
    (folder / "wav.scp").write_text("".join(f"{c.id} {c.path}\n" for c in cs))
    rows, _ = run_job(tmp_path, folder, tiny_model_dir)
    check_turns(rows, cs, load_bundle(tiny_model_dir), tmp_path)


@pytest.mark.slow
def test_nemo_diarisation_manifest_with_a_window(ray_session, tiny_model_dir, convs, tmp_path):
    """NeMo's diarisation manifest as its inference writes it (every key, `label: infer`, `text: -`),
    given with input.format left at auto: audio + RTTM per line; call-0001 limited to [3, 9) s, which
    drops its first turn and cuts its last at 9 s."""
    import dataclasses
    import json

    d, cs = convs
    lines = [
        {
            "audio_filepath": f"audio/{c.path.name}",
            "offset": 0,
            "duration": None,
            "label": "infer",
            "text": "-",
            "num_speakers": 2,
            "rttm_filepath": f"rttm/{c.id}.rttm",
            "uem_filepath": None,
        }
        for c in cs
    ]
    lines[0].update(offset=3.0, duration=6.0)
    (d / "diar_manifest.json").write_text("".join(json.dumps(x) + "\n" for x in lines))
    rows, _ = run_job(tmp_path, d / "diar_manifest.json", tiny_model_dir)
    first = cs[0]
    window = [
        dataclasses.replace(t, start_s=max(t.start_s, 3.0), end_s=min(t.end_s, 9.0))
        for t in first.turns
        if t.end_s > 3.0 and t.start_s < 9.0
    ]
    assert len(window) == len(first.turns) - 1 and window[-1].end_s == 9.0
    check_turns(
        rows,
        [dataclasses.replace(first, turns=tuple(window)), *cs[1:]],
        load_bundle(tiny_model_dir),
        tmp_path,
    )


def sox_channel(src: Path, channel: int, dst: Path) -> Path:
    """One channel (1-based) of `src` alone, by sox."""
    subprocess.run(["sox", str(src), str(dst), "remix", str(channel)], check=True)
    return dst


@pytest.mark.slow
def test_rttm_channels_one_speaker_per_channel_and_a_mono_file_falls_back_to_its_mix(
    ray_session, tiny_model_dir, convs, tmp_path
):
    """Call-centre stereo: each side's speech (an espeak-ng voice each, one turn overlapping the other
    side's) on its own channel, merged by sox; the RTTM names channel 1 or 2 per turn. Every turn equals
    the model on that channel alone cut by sox, not on the mix. call-0001 (mono) with an RTTM naming
    channels 1 and 2 is analysed on its only channel."""
    import dataclasses

    from pipeline.testing.conversations import Plan

    d, cs = convs
    sides = make_conversations(
        tmp_path / "sides",
        (
            Plan("agent", ".wav", 16000, 1, (("SPEAKER_00", 0.3, 0), ("SPEAKER_00", 5.6, 2)), 10.0),
            Plan("customer", ".wav", 16000, 1, (("SPEAKER_01", 2.2, 1),), 10.0),
        ),
    )
    folder = tmp_path / "calls"
    (folder / "audio").mkdir(parents=True)
    (folder / "rttm").mkdir()
    stereo = folder / "audio" / "call-st.wav"
    subprocess.run(["sox", "-M", str(sides[0].path), str(sides[1].path), str(stereo)], check=True)
    (folder / "audio" / "call-0001.wav").symlink_to(cs[0].path)
    turns = [dataclasses.replace(t, recording="call-st") for side in sides for t in side.turns]
    channel = {"SPEAKER_00": 1, "SPEAKER_01": 2}
    lines = [
        f"SPEAKER {t.recording} {channel[t.speaker]} {t.start_s:.3f} {t.end_s - t.start_s:.3f} "
        f"<NA> <NA> {t.speaker} <NA> <NA>\n"
        for t in [*turns, *cs[0].turns]
    ]
    (folder / "rttm" / "all.rttm").write_text("".join(lines))
    rows, _ = run_job(
        tmp_path, folder / "rttm" / "all.rttm", tiny_model_dir, f"  audio_root: {folder / 'audio'}\n"
    )
    bundle = load_bundle(tiny_model_dir)
    per_channel = [
        Conversation("call-st", sox_channel(stereo, k + 1, tmp_path / f"ch{k + 1}.wav"), 16000, 2,
                     tuple(t for t in turns if channel[t.speaker] == k + 1))
        for k in range(2)
    ]  # fmt: skip
    on_mono = {turn_id(t.recording, t.speaker, t.start_s) for t in cs[0].turns}
    check_turns(
        {i: r for i, r in rows.items() if i not in on_mono}, per_channel, bundle, tmp_path, overlaps=False
    )
    check_turns({i: r for i, r in rows.items() if i in on_mono}, [cs[0]], bundle, tmp_path)
    # the overlap is still measured across the channels; and on the mix the overlapped turn differs
    late = rows[turn_id("call-st", "SPEAKER_01", 2.2)]
    assert late["overlap_s"] == pytest.approx(overlap_s(turns[2], turns), abs=1e-6) and late["overlap_s"] > 0
    mix = reference(sox_cut(stereo, late["start_s"], late["end_s"], tmp_path / "mix.wav"))
    assert np.abs(np.array(late["embedding"]) - model_on(bundle, mix).embedding[0].numpy()).max() > 1e-3


@pytest.mark.slow
def test_meld_csv_names_its_audio_through_a_path_template(ray_session, tiny_model_dir, convs, tmp_path):
    """MELD's CSV as it ships: no path column, the clip named by Dialogue_ID and Utterance_ID, the
    speaker in `Speaker`. The clips are the turns of two recordings cut out by sox."""
    import csv

    d, cs = convs
    clips = tmp_path / "train_splits"
    clips.mkdir()
    names = {"SPEAKER_00": "Chandler", "SPEAKER_01": "Joey"}
    header = ["Sr No.", "Utterance", "Speaker", "Emotion", "Sentiment", "Dialogue_ID", "Utterance_ID",
              "Season", "Episode", "StartTime", "EndTime"]  # fmt: skip
    table, want = [], {}
    for dia, conv in enumerate(c for c in cs if c.sample_rate == 16000):
        for utt, t in enumerate(conv.turns):
            clip = sox_cut(conv.path, t.start_s, t.end_s, clips / f"dia{dia}_utt{utt}.wav")
            table.append([len(table) + 1, t.text, names[t.speaker], "neutral", "neutral", dia, utt, 3, 7,
                          "00:16:16,059", "00:16:21,731"])  # fmt: skip
            want[f"dia{dia}_utt{utt}.wav"] = (clip, names[t.speaker])  # no id column: the path as built
    with open(tmp_path / "train_sent_emo.csv", "w", newline="") as f:
        csv.writer(f).writerows([header, *table])
    extra = f"  audio_root: {clips}\n  path_template: 'dia{{Dialogue_ID}}_utt{{Utterance_ID}}.wav'\n"
    rows, _ = run_job(tmp_path, tmp_path / "train_sent_emo.csv", tiny_model_dir, extra)
    assert set(rows) == set(want)
    bundle = load_bundle(tiny_model_dir)
    for rid, (clip, speaker) in want.items():
        r = rows[rid]
        assert r["error"] is None and r["speaker"] == speaker and r["path"] == str(clip)
        assert r["Emotion"] == "neutral" and r["StartTime"] == "00:16:16,059" and r["start_s"] is None
        ref = model_on(bundle, reference(clip))
        np.testing.assert_allclose(np.array(r["embedding"]), ref.embedding[0].numpy(), atol=1e-4)
        assert r["label"] == bundle.labels[int(ref.scores[0].argmax())]


# -- per-speaker views of a real output ---------------------------------------------------------------


def band_mask(png: Path) -> np.ndarray:
    """[H, W] bool: pixels of any class colour of the timeline."""
    import matplotlib.image

    from pipeline.downstream.timeline import COLORS

    img = matplotlib.image.imread(str(png))[:, :, :3]
    mask = np.zeros(img.shape[:2], bool)
    for hex_colour in COLORS.values():
        rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        mask |= np.abs(img - rgb).max(axis=2) < 0.02
    return mask


def runs(flags: np.ndarray) -> list[tuple[int, int]]:
    """[start, end) of the runs of True."""
    padded = np.concatenate([[False], flags, [False]]).astype(np.int8)
    edges = np.flatnonzero(np.diff(padded))
    return list(zip(edges[::2], edges[1::2], strict=True))


@pytest.mark.slow  # needs the job's output (the rttm_output fixture)
def test_timeline_has_a_lane_per_speaker_with_its_turns(rttm_output, convs, tmp_path):
    import matplotlib.image

    _, out = rttm_output
    conv = convs[1][0]  # call-0001: SPEAKER_00, SPEAKER_01, SPEAKER_00, SPEAKER_01 (overlapping the third)
    assert visualize.main(["--features", str(out), "--timeline", conv.id, "--output", str(tmp_path)]) == 0
    png = tmp_path / f"timeline-{conv.id}.png"
    mask = band_mask(png)
    # bands fill their lane's plot from 0 to 1 (stacked scores); the legend's patches are short
    band_cols = mask.sum(axis=0) >= 100
    lanes = [r for r in runs(mask[:, band_cols].any(axis=1)) if r[1] - r[0] >= 50]
    assert len(lanes) == 2, lanes
    got = {
        speaker: runs(mask[top:bottom].sum(axis=0) >= 0.5 * (bottom - top))
        for (top, bottom), speaker in zip(lanes, ["SPEAKER_00", "SPEAKER_01"], strict=True)
    }
    want = {s: [(t.start_s, t.end_s) for t in conv.turns if t.speaker == s] for s in got}
    assert {s: len(r) for s, r in got.items()} == {s: len(w) for s, w in want.items()}
    # one time axis from 0 to the last end, shared by the lanes: pixels are proportional to seconds
    (a0, b0), (s0, e0) = got["SPEAKER_00"][0], want["SPEAKER_00"][0]
    scale = (b0 - a0) / (e0 - s0)
    x0 = a0 - s0 * scale
    for speaker in got:
        for (a, b), (s, e) in zip(got[speaker], want[speaker], strict=True):
            assert abs(a - (x0 + s * scale)) <= 3 and abs(b - (x0 + e * scale)) <= 3, (speaker, a, b, s, e)
    assert abs(x0 + max(t.end_s for t in conv.turns) * scale - got["SPEAKER_01"][-1][1]) <= 3
    # the overlap (SPEAKER_01 starts before SPEAKER_00 ends) is hatched in both lanes, and only there
    img = matplotlib.image.imread(str(png))[:, :, :3]
    dark = img.max(axis=2) < 0.25
    lo, hi = round(x0 + 7.5 * scale), round(x0 + 8.11 * scale)
    for top, bottom in lanes:
        hatch = dark[top + 3 : bottom - 3].sum(axis=0)
        assert hatch[lo + 2 : hi - 2].min() > 0
        other = [round(x0 + s * scale) for s in (1.0, 2.0, 4.0, 6.5, 9.0)]
        assert all(hatch[x] == 0 for x in other)


@pytest.fixture(scope="module")
def expected(convs, tiny_model_dir, tmp_path_factory):
    """Per (recording, speaker), from the known turns and the model's scores on each turn's sox cut:
    turns, seconds, seconds per label, score sums weighted by seconds, labels in time order, turn ids."""
    bundle = load_bundle(tiny_model_dir)
    tmp = tmp_path_factory.mktemp("expected")
    want: dict[tuple[str, str], dict] = {}
    for conv in convs[1]:
        for t in sorted(conv.turns, key=lambda t: t.start_s):
            if t.end_s - t.start_s < MIN_TURN_S:
                continue
            cut = reference(sox_cut(conv.path, t.start_s, t.end_s, tmp / f"c{conv.path.suffix}"))
            scores = model_on(bundle, cut).scores[0].numpy().astype(np.float64)
            label, seconds = bundle.labels[int(scores.argmax())], t.end_s - t.start_s
            w = want.setdefault(
                (t.recording, t.speaker),
                {"turns": 0, "seconds": 0.0, "by_label": {}, "scores": 0.0, "labels": [], "ids": []},
            )
            w["turns"] += 1
            w["seconds"] += seconds
            w["by_label"][label] = w["by_label"].get(label, 0.0) + seconds
            w["scores"] = w["scores"] + scores * seconds
            w["labels"].append(label)
            w["ids"].append(turn_id(t.recording, t.speaker, t.start_s))
    return want, bundle.labels


def changed_ids(want: dict) -> set[str]:
    return {
        w["ids"][k]
        for w in want.values()
        for k in range(1, w["turns"])
        if w["labels"][k] != w["labels"][k - 1]
    }


@pytest.mark.slow  # needs the job's output (the rttm_output fixture)
def test_summary_per_recording_and_speaker_from_the_known_turns(rttm_output, expected, tmp_path):
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    _, out = rttm_output
    want, labels = expected
    assert visualize.main(["--features", str(out), "--summary", "--output", str(tmp_path)]) == 0
    speakers = pq.read_table(tmp_path / "speakers.parquet").to_pylist()
    assert pacsv.read_csv(tmp_path / "speakers.csv").num_rows == len(speakers)
    assert [(s["recording_id"], s["speaker"]) for s in speakers] == sorted(want)
    for s in speakers:
        w = want[(s["recording_id"], s["speaker"])]
        assert s["turns"] == w["turns"] and s["seconds"] == pytest.approx(w["seconds"], abs=1e-6)
        assert s["changes"] == sum(a != b for a, b in zip(w["labels"], w["labels"][1:], strict=False))
        for k, name in enumerate(labels):
            assert s[f"share_{name}"] == pytest.approx(w["by_label"].get(name, 0.0) / w["seconds"], abs=1e-6)
            assert s[f"score_{name}"] == pytest.approx(w["scores"][k] / w["seconds"], abs=3e-3)
    changes = pq.read_table(tmp_path / "changes.parquet").to_pylist()
    assert {c["id"] for c in changes} == changed_ids(want)
    assert all(c["label"] != c["previous_label"] for c in changes)


def doc_block(name: str, out: Path) -> tuple[str, str]:
    from tests.test_queries import BLOCKS

    lang, text = BLOCKS[name]
    assert "outputs/calls" in text
    return lang, text.replace("outputs/calls", str(out))


def doc_sql(name: str, out: Path) -> list[dict]:
    import duckdb

    lang, text = doc_block(name, out)
    assert lang == "sql"
    rel = duckdb.connect().sql(text)
    return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


@pytest.mark.slow  # needs the job's output (the rttm_output fixture)
def test_conversation_recipes_of_docs_queries(rttm_output, expected):
    _, out = rttm_output
    want, labels = expected
    got = doc_sql("speaker_turns", out)
    assert [(r["recording_id"], r["speaker"]) for r in got] == sorted(want)
    for r in got:
        w = want[(r["recording_id"], r["speaker"])]
        assert r["turns"] == w["turns"] and r["seconds"] == pytest.approx(w["seconds"], abs=1e-6)
        for name in ("angry", "happy", "neutral", "sad"):
            assert r[name] == pytest.approx(w["scores"][labels.index(name)] / w["seconds"], abs=3e-3)
    shares = {
        (*k, label, what): v
        for k, w in want.items()
        for label, sec in w["by_label"].items()
        for what, v in (("seconds", sec), ("share", sec / w["seconds"]))
    }

    def flat(rows: list[dict]) -> dict:
        keys = ("recording_id", "speaker", "label")
        return {(*(r[k] for k in keys), what): r[what] for r in rows for what in ("seconds", "share")}

    assert flat(doc_sql("speaker_time_share", out)) == pytest.approx(shares)
    assert {r["id"] for r in doc_sql("emotion_changes", out)} == changed_ids(want)
    lang, code = doc_block("polars_speaker_share", out)
    ns: dict = {}
    exec(compile(code, "queries.md:polars_speaker_share", "exec"), ns)
    assert lang == "python" and flat(ns["share"].to_dicts()) == pytest.approx(shares)


def test_changes_follow_each_speakers_turns_in_time_order(tmp_path):
    """Labels that do change (the tiny random model gives every turn the same one): a change is against
    the same speaker's previous turn in the same recording, whoever spoke in between."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from pipeline.downstream.summary import summarize
    from pipeline.downstream.timeline import LABELS

    turns = [("r1", "A", 0.0, "happy"), ("r1", "B", 1.0, "neutral"), ("r1", "A", 2.0, "sad"),
             ("r1", "B", 3.0, "neutral"), ("r1", "A", 5.0, "sad"), ("r1", "A", 9.0, "angry"),
             ("r2", "A", 0.0, "sad")]  # fmt: skip
    rows = [
        {"id": f"{r}_{s}_{t}", "recording_id": r, "speaker": s, "start_s": t, "end_s": t + 0.5,
         "duration_s": 0.5, "label": label, "scores": [1.0 / 9] * 9, "error": None}
        for r, s, t, label in turns
    ]  # fmt: skip
    out = tmp_path / "out"
    out.mkdir()
    table = pa.Table.from_pylist(rows[::-1])
    at = table.schema.get_field_index("scores")
    table = table.set_column(at, "scores", table["scores"].cast(pa.list_(pa.float32(), len(LABELS))))
    pq.write_table(table, out / "part-0.parquet")
    speakers, changes = summarize(str(out))
    assert changes["id"].to_pylist() == ["r1_A_2.0", "r1_A_9.0"]
    assert changes["previous_label"].to_pylist() == ["happy", "sad"]
    assert {(s["recording_id"], s["speaker"]): s["changes"] for s in speakers.to_pylist()} == {
        ("r1", "A"): 2,
        ("r1", "B"): 0,
        ("r2", "A"): 0,
    }
    assert [r["id"] for r in doc_sql("emotion_changes", out)] == ["r1_A_2.0", "r1_A_9.0"]


@pytest.mark.slow  # needs the job's output (the rttm_output fixture)
def test_the_segments_of_a_turn_count_from_the_turns_start_as_documented(rttm_output):
    """README: `segments` times are seconds from the row's own start. A turn at 3 s of its file has
    its first window at 0 and its last ending at the turn's length, not at 3 s and the turn's end."""
    _, out = rttm_output
    t = pads.dataset(str(out), format="parquet").to_table(columns=["start_s", "end_s", "segments", "error"])
    later = [r for r in t.to_pylist() if r["error"] is None and r["start_s"] > 0.5]
    assert later
    for r in later:
        segs = r["segments"]
        assert segs[0]["start_s"] == 0.0
        assert segs[-1]["end_s"] == pytest.approx(r["end_s"] - r["start_s"], abs=1 / 16000)
