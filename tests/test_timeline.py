"""pipeline.downstream.timeline: the emotion timeline PNG, checked by its pixels, and the job's --timeline mode."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from jobs.visualize import main as visualize_main
from pipeline.downstream.timeline import COLORS, LABELS, load_timeline, plot_timeline

pytest.importorskip("matplotlib")


def one_hot(label: str) -> list[float]:
    return [1.0 if name == label else 0.0 for name in LABELS]


def colour_columns(png, hex_colour: str) -> np.ndarray:
    """x pixel positions of the image columns holding at least 50 pixels of `hex_colour`."""
    import matplotlib.image

    img = matplotlib.image.imread(str(png))[:, :, :3]
    rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
    hits = (np.abs(img - rgb).max(axis=2) < 0.02).sum(axis=0)
    return np.flatnonzero(hits >= 50)


def test_bands_follow_the_segments_and_silence_stays_blank(tmp_path):
    # 1-3 s all angry, 3-6 s silence, 6-9 s all sad: on the axis (0-9 s) the red band, the gap and
    # the blue band are 2 : 3 : 3 wide
    rows = [
        {"start_s": 1.0, "end_s": 3.0, "scores": one_hot("angry"), "label": "angry"},
        {"start_s": 6.0, "end_s": 9.0, "scores": one_hot("sad"), "label": "sad"},
    ]
    png = plot_timeline(rows, tmp_path / "t.png", "two segments")
    red, blue = colour_columns(png, COLORS["angry"]), colour_columns(png, COLORS["sad"])
    assert len(red) and len(blue)
    assert np.all(np.diff(red) == 1) and np.all(np.diff(blue) == 1), "each band is one solid run"
    red_w, gap, blue_w = red[-1] - red[0] + 1, blue[0] - red[-1] - 1, blue[-1] - blue[0] + 1
    assert red_w / blue_w == pytest.approx(2 / 3, rel=0.03)
    assert gap / blue_w == pytest.approx(1.0, rel=0.03)


def test_stacked_scores_split_the_band_height(tmp_path):
    scores = one_hot("happy")
    scores[LABELS.index("happy")], scores[LABELS.index("neutral")] = 0.25, 0.75
    png = plot_timeline(
        [{"start_s": 0.0, "end_s": 4.0, "scores": scores, "label": "neutral"}], tmp_path / "s.png", ""
    )
    import matplotlib.image

    img = matplotlib.image.imread(str(png))[:, :, :3]

    def rows_of(hex_colour):
        rgb = np.array([int(hex_colour[i : i + 2], 16) / 255 for i in (1, 3, 5)])
        return (np.abs(img - rgb).max(axis=2) < 0.02).sum(axis=1) >= 50  # [H] rows mostly this colour

    happy, neutral = rows_of(COLORS["happy"]).sum(), rows_of(COLORS["neutral"]).sum()
    assert happy / neutral == pytest.approx(1 / 3, rel=0.05)


def test_bad_rows_are_clear_errors(tmp_path):
    ok = {"start_s": 0.0, "end_s": 1.0, "scores": one_hot("sad"), "label": "sad"}
    with pytest.raises(ValueError, match="8 scores for 9 labels"):
        plot_timeline([{**ok, "scores": [0.1] * 8}], tmp_path / "x.png", "")
    with pytest.raises(ValueError, match="segment 1: no scores"):
        plot_timeline([ok, {**ok, "scores": None}], tmp_path / "x.png", "")
    with pytest.raises(ValueError, match="end_s 1.0 is not after start_s 2.0"):
        plot_timeline([{**ok, "start_s": 2.0}], tmp_path / "x.png", "")
    with pytest.raises(ValueError, match="no segments"):
        plot_timeline([], tmp_path / "x.png", "")


SCHEMA = pa.schema(
    [("id", pa.string()), ("recording_id", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64()),
     ("label", pa.string()), ("scores", pa.list_(pa.float32(), 9)), ("error", pa.string()),
     ("speaker", pa.string())]
)  # fmt: skip


def write_output(out, rows, schema=SCHEMA):
    """`rows` as two Parquet files of one output (the fields of `schema` that the rows have)."""
    out.mkdir()
    schema = pa.schema([f for f in schema if f.name in rows[0]])
    pq.write_table(pa.Table.from_pylist(rows[:3], schema), out / "part-0.parquet")
    pq.write_table(pa.Table.from_pylist(rows[3:], schema), out / "part-1.parquet")


def test_visualize_timeline_reads_one_recording_in_time_order(tmp_path):
    def row(rec, i, start, label, error=None):
        return {"id": f"{rec}/{i}", "recording_id": rec, "start_s": start, "end_s": start + 1.5,
                "label": None if error else label, "scores": None if error else one_hot(label),
                "error": error, "speaker": "s1"}  # fmt: skip

    write_output(
        tmp_path / "out",
        [row("calls/a", 2, 5.0, "sad"), row("b", 0, 0.0, "happy"), row("calls/a", 0, 0.5, "angry"),
         row("calls/a", 1, 2.5, "angry", error="model: RuntimeError: boom"), row("calls/a", 3, 8.0, "happy")],
    )  # fmt: skip
    rows, labels = load_timeline(str(tmp_path / "out"), "calls/a")
    assert [(r["start_s"], r["label"]) for r in rows] == [(0.5, "angry"), (5.0, "sad"), (8.0, "happy")]
    assert labels == list(LABELS)

    rc = visualize_main(
        ["--features", str(tmp_path / "out"), "--timeline", "calls/a", "--output", str(tmp_path / "viz")]
    )
    assert rc == 0
    png = tmp_path / "viz" / "timeline-calls_a.png"
    assert len(colour_columns(png, COLORS["sad"])) > 0 and len(colour_columns(png, COLORS["happy"])) > 0


def test_visualize_timeline_bad_input_exits_2(tmp_path, capsys):
    write_output(tmp_path / "out", [{"id": "x", "label": "sad", "start_s": 0.0}] * 4)
    rc = visualize_main(
        ["--features", str(tmp_path / "out"), "--timeline", "x", "--output", str(tmp_path / "v")]
    )
    assert rc == 2
    assert "no column 'recording_id'" in capsys.readouterr().err
    out = tmp_path / "out2"
    write_output(out, [{"id": "a", "recording_id": "a", "start_s": 0.0, "end_s": 1.0,
                        "scores": one_hot("sad"), "label": "sad"}] * 4)  # fmt: skip
    assert visualize_main(["--features", str(out), "--timeline", "zzz", "--output", str(tmp_path / "v")]) == 2
    assert "no speech segments of recording 'zzz'" in capsys.readouterr().err


def test_visualize_timeline_of_a_recording_without_speech_says_so(tmp_path, capsys):
    # audio.segmentation: vad writes a recording without speech as one row with null start_s, end_s,
    # label and scores, and no error (docs/queries.md); its timeline was refused as "segment 0: no
    # start_s (a model without a classifier head has no scores)", blaming the model
    write_output(
        tmp_path / "out",
        [{"id": "quiet", "recording_id": "quiet", "start_s": None, "end_s": None, "label": None,
          "scores": None, "error": None},
         {"id": "talk-0000050-0000150", "recording_id": "talk", "start_s": 0.5, "end_s": 1.5,
          "label": "sad", "scores": one_hot("sad"), "error": None}] * 2,
    )  # fmt: skip
    rc = visualize_main(
        ["--features", str(tmp_path / "out"), "--timeline", "quiet", "--output", str(tmp_path / "v")]
    )
    assert rc == 2
    assert "no speech segments of recording 'quiet'" in capsys.readouterr().err


# -- the emotion-over-time recipes of docs/queries.md on a segment-per-row output ------------------


@pytest.fixture(scope="module")
def segmented(tmp_path_factory):
    """(output dir, its speech segments): 3 recordings of 2 speakers with random segments and labels, an
    error row, and a recording without speech (one row with no span)."""
    rng = np.random.default_rng(7)
    rows = []
    for rec, speaker in (("call-0042", "ann"), ("call-0043", "bob"), ("call-0044", "ann")):
        t = rng.uniform(0, 2)
        for i in range(int(rng.integers(5, 12))):
            d, label = float(rng.uniform(0.5, 8)), LABELS[int(rng.integers(0, 5))]
            rows.append({"id": f"{rec}/{i:04d}", "recording_id": rec, "start_s": t, "end_s": t + d,
                         "label": label, "scores": one_hot(label), "error": None, "speaker": speaker})  # fmt: skip
            t += d + float(rng.uniform(0.3, 3))
    rows.append({"id": "call-0042/9999", "recording_id": "call-0042", "start_s": 500.0, "end_s": 510.0,
                 "label": None, "scores": None, "error": "model: RuntimeError: x", "speaker": "ann"})  # fmt: skip
    # a recording without speech: one row with no span and no label, which the recipes leave out
    rows.append({"id": "call-0045", "recording_id": "call-0045", "start_s": None, "end_s": None,
                 "label": None, "scores": None, "error": None, "speaker": "bob"})  # fmt: skip
    order = rng.permutation(len(rows))
    shuffled = [rows[i] for i in order]
    out = tmp_path_factory.mktemp("segmented") / "out"
    write_output(out, shuffled)
    return out, [r for r in rows if r["error"] is None and r["start_s"] is not None]


def doc_sql(name: str, out) -> list[dict]:
    import duckdb

    from tests.test_queries import BLOCKS

    lang, text = BLOCKS[name]
    assert lang == "sql" and "outputs/calls" in text
    rel = duckdb.connect().sql(text.replace("outputs/calls", str(out)))
    return [dict(zip(rel.columns, r, strict=True)) for r in rel.fetchall()]


def test_recording_timeline_recipe(segmented):
    out, ok = segmented
    got = doc_sql("recording_timeline", out)
    want = sorted((r for r in ok if r["recording_id"] == "call-0042"), key=lambda r: r["start_s"])
    assert [r["id"] for r in got] == [r["id"] for r in want]
    assert [r["start_s"] for r in got] == sorted(r["start_s"] for r in got)


@pytest.mark.parametrize(
    "name,key", [("time_share_recording", "recording_id"), ("time_share_speaker", "speaker")]
)
def test_time_share_recipes(segmented, name, key):
    out, ok = segmented
    got = doc_sql(name, out)
    seconds: dict[tuple[str, str], float] = {}
    for r in ok:
        seconds[(r[key], r["label"])] = seconds.get((r[key], r["label"]), 0.0) + r["end_s"] - r["start_s"]
    total = {g: sum(v for (k, _), v in seconds.items() if k == g) for g, _ in seconds}
    assert {(r[key], r["label"]): r["seconds"] for r in got} == pytest.approx(seconds)
    for r in got:
        assert r["share"] == pytest.approx(seconds[(r[key], r["label"])] / total[r[key]])
    for g in total:
        assert sum(r["share"] for r in got if r[key] == g) == pytest.approx(1.0)


def test_summary_of_whole_files_keeps_each_clip_its_own_recording(tmp_path, capsys):
    """A job on whole files (no spans) writes `recording_id` null and no speaker: --summary put every
    clip into one 'recording' and counted a label 'change' between unrelated clips."""
    clips = [("a", "happy"), ("b", "sad"), ("c", "happy"), ("d", "neutral")]
    table = pa.table(
        {
            "id": [c for c, _ in clips],
            "recording_id": pa.nulls(len(clips), pa.string()),
            "error": pa.nulls(len(clips), pa.string()),
            "duration_s": pa.array([1.0, 2.0, 3.0, 4.0], pa.float32()),
            "label": [label for _, label in clips],
            "scores": pa.array([one_hot(label) for _, label in clips], pa.list_(pa.float32(), len(LABELS))),
        }
    )
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(table, out / "part-0.parquet")
    assert visualize_main(["--features", str(out), "--summary", "--output", str(tmp_path / "viz")]) == 0
    speakers = pq.read_table(tmp_path / "viz" / "speakers.parquet").to_pylist()
    changes = pq.read_table(tmp_path / "viz" / "changes.parquet")
    assert changes.num_rows == 0
    assert sorted(s["recording_id"] for s in speakers) == sorted(c for c, _ in clips)
    assert sorted((s["turns"], s["changes"], s["seconds"]) for s in speakers) == [
        (1, 0, 1.0), (1, 0, 2.0), (1, 0, 3.0), (1, 0, 4.0)
    ]  # fmt: skip
    for s, (_, label) in zip(sorted(speakers, key=lambda s: s["seconds"]), clips, strict=True):
        assert s[f"share_{label}"] == 1.0
