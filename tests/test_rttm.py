"""pipeline.rttm: diariser output as pyannote writes it -> turns, overlap seconds, stable ids."""

from __future__ import annotations

import io

import numpy as np
import pytest

from pipeline.rttm import RttmError, parse_rttm
from pipeline.testing.conversations import Turn, rttm

core = pytest.importorskip("pyannote.core")


def pyannote_rttm(turns: list[tuple[str, str, float, float]]) -> str:
    """(recording, speaker, start, end) turns written by pyannote's own Annotation.write_rttm."""
    out = io.StringIO()
    for rec in dict.fromkeys(t[0] for t in turns):
        ann = core.Annotation(uri=rec)
        for k, (r, spk, a, b) in enumerate(turns):
            if r == rec:
                ann[core.Segment(a, b), k] = spk
        ann.write_rttm(out)
    return out.getvalue()


def covered_on_grid(turn, others, step=1e-4) -> float:
    """Seconds of `turn` inside any of `others`, counted on a 0.1 ms grid (independent of the code)."""
    t = np.arange(turn[0], turn[1], step) + step / 2
    inside = np.zeros(len(t), bool)
    for a, b in others:
        inside |= (t >= a) & (t < b)
    return inside.sum() * step


def test_turns_grouped_by_recording_in_time_order_with_overlap_and_ids():
    turns = [
        ("meeting", "B", 4.0, 9.0),
        ("meeting", "A", 0.5, 5.25),
        ("meeting", "C", 8.0, 12.0),
        ("meeting", "A", 6.0, 8.5),  # B and C both cover 8.0-8.5: counted once
        ("call", "agent", 0.0, 2.0),
        ("call", "customer", 2.0, 3.5),  # touching, not overlapping
    ]
    text = "SPKR-INFO meeting 1 <NA> <NA> <NA> unknown A <NA> <NA>\n;; a comment\n\n" + pyannote_rttm(turns)
    t = parse_rttm(text, "x.rttm").to_pylist()
    assert [(r["recording_id"], r["speaker"], r["start_s"]) for r in t] == [
        ("call", "agent", 0.0),
        ("call", "customer", 2.0),
        ("meeting", "A", 0.5),
        ("meeting", "B", 4.0),
        ("meeting", "A", 6.0),
        ("meeting", "C", 8.0),
    ]
    for r in t:
        mine = (r["start_s"], r["end_s"])
        others = [(a, b) for rec, spk, a, b in turns if rec == r["recording_id"] and spk != r["speaker"]]
        assert r["overlap_s"] == pytest.approx(covered_on_grid(mine, others), abs=1e-3)
        assert r["id"] == f"{r['recording_id']}_{r['speaker']}_{round(r['start_s'] * 1000):07d}"
    by_id = {r["id"]: r for r in t}
    assert by_id["meeting_A_0006000"]["overlap_s"] == pytest.approx(2.5)  # B 6-8.5 and C 8-8.5, once
    assert by_id["meeting_A_0000500"]["end_s"] == pytest.approx(5.25)


def test_the_nine_field_variant_and_line_order_do_not_change_the_answer():
    ten = pyannote_rttm([("r", "s1", 1.0, 2.0), ("r", "s2", 1.5, 3.0)])
    nine = "".join(" ".join(line.split()[:9]) + "\n" for line in ten.splitlines()[::-1])
    assert parse_rttm(nine).equals(parse_rttm(ten))


def test_bad_lines_name_the_file_and_line():
    with pytest.raises(RttmError, match=r"x.rttm: line 2: .* got 8"):
        parse_rttm("SPEAKER r 1 0.0 1.0 <NA> <NA> s <NA> <NA>\nSPEAKER r 1 0.0 1.0 <NA> <NA> s\n", "x.rttm")
    with pytest.raises(RttmError, match="line 1: onset and duration must be seconds"):
        parse_rttm("SPEAKER r 1 zero 1.0 <NA> <NA> s <NA> <NA>\n", "x.rttm")
    assert parse_rttm("").num_rows == 0


@pytest.mark.parametrize("onset,duration", [("nan", "1.0"), ("inf", "1.0"), ("0.5", "nan"), ("0.5", "-inf")])
def test_times_that_are_not_finite_name_the_file_and_line(onset, duration):
    """float() reads "nan" and "inf": a NaN onset crashed the id's rounding with a bare ValueError (an
    inf one with an OverflowError) instead of the error that names the file and line."""
    good = "SPEAKER r 1 0.0 1.0 <NA> <NA> s <NA> <NA>\n"
    with pytest.raises(RttmError, match=r"^x\.rttm: line 2: onset and duration must be seconds"):
        parse_rttm(good + f"SPEAKER r 1 {onset} {duration} <NA> <NA> s <NA> <NA>\n", "x.rttm")


def test_the_test_corpus_writes_rttm_as_pyannote_does():
    turns = [Turn("c", "SPEAKER_01", 3.5, 5.02, ""), Turn("c", "SPEAKER_00", 0.5, 2.84, "")]
    assert rttm(turns) == pyannote_rttm(
        [("c", t.speaker, t.start_s, t.end_s) for t in sorted(turns, key=lambda t: t.start_s)]
    )


def test_channels_count_where_a_recording_names_more_than_one():
    text = (
        "SPEAKER call 1 0.0 1.0 <NA> <NA> agent <NA> <NA>\n"  # call-centre stereo: 1-based channels
        "SPEAKER call 2 0.5 1.0 <NA> <NA> customer <NA> <NA>\n"
        "SPEAKER call 1 2.0 1.0 <NA> <NA> agent <NA> <NA>\n"
        "SPEAKER kaldi 0 0.0 1.0 <NA> <NA> a <NA> <NA>\n"  # 0-based (Kaldi writes 0)
        "SPEAKER kaldi 1 1.0 1.0 <NA> <NA> b <NA> <NA>\n"
        "SPEAKER mixed 1 0.0 1.0 <NA> <NA> a <NA> <NA>\n"  # pyannote/NeMo: 1 for any audio -> the mix
        "SPEAKER mixed 1 1.0 1.0 <NA> <NA> b <NA> <NA>\n"
        "SPEAKER odd A 0.0 1.0 <NA> <NA> a <NA> <NA>\n"  # not a number -> the mix
        "SPEAKER odd B 1.0 1.0 <NA> <NA> b <NA> <NA>\n"
    )
    t = parse_rttm(text).to_pylist()
    assert [(r["recording_id"], r["speaker"], r["start_s"], r["channel"]) for r in t] == [
        ("call", "agent", 0.0, 0),  # grouped by channel, in time order within it: one decode each
        ("call", "agent", 2.0, 0),
        ("call", "customer", 0.5, 1),
        ("kaldi", "a", 0.0, 0),
        ("kaldi", "b", 1.0, 1),
        ("mixed", "a", 0.0, None),
        ("mixed", "b", 1.0, None),
        ("odd", "a", 0.0, None),
        ("odd", "b", 1.0, None),
    ]
    assert {r["id"]: r["overlap_s"] for r in t}["call_customer_0000500"] == pytest.approx(0.5)
