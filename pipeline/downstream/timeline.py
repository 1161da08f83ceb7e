"""Emotion over time in one recording: the class scores of its turns or speech segments along the time axis (PNG).

    from pipeline.downstream.timeline import write_timeline
    write_timeline("outputs/calls", "call-0042", "outputs/calls-viz")  # -> .../timeline-call-0042.png

`load_timeline` reads one recording's rows; `plot_timeline` draws any such rows.

The output must have spans with a recording (`recording_id`, `start_s`, `end_s`): a job run with
`audio.segmentation: vad`, or on a manifest of spans (diariser turns, Kaldi segments, Lhotse
supervisions). Each row is drawn from its start to its end as a stack of coloured bands, one per
class, each as high as the class score; silence stays blank. Rows wide enough to hold it get their
predicted label written above them. When the rows name speakers (a `speaker` column), each speaker
gets a lane of its own, in order of first appearance, on one time axis; where a turn overlaps another
speaker's turn, that stretch is hatched in both lanes.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.compute as pc

from ..schema import read_metadata
from ..storage import Storage
from .train import open_output

LABELS = ("angry", "disgusted", "fearful", "happy", "neutral", "other", "sad", "surprised", "unknown")
COLORS = {
    "angry": "#d62728",
    "disgusted": "#6b8e23",
    "fearful": "#9467bd",
    "happy": "#f2c500",
    "neutral": "#a8a8a8",
    "other": "#8c564b",
    "sad": "#1f77b4",
    "surprised": "#ff7f0e",
    "unknown": "#505050",
}
COLUMNS = ["recording_id", "start_s", "end_s", "scores", "label"]
OPTIONAL = ["speaker"]  # read when the output has it: one lane per speaker
MIN_LABEL_WIDTH = 0.04  # a segment gets its label written above it from this fraction of the time axis


def load_timeline(
    features: str, recording_id: str, storage: Storage | None = None
) -> tuple[list[dict[str, Any]], list[str]]:
    """(the ok rows of `recording_id` that have a span, ordered by start_s, the class names in score
    order)."""
    ds = open_output(features, storage)
    names = set(ds.schema.names)
    missing = [c for c in COLUMNS if c not in names]
    if missing:
        raise ValueError(
            f"{features}: no column {missing[0]!r}; a timeline needs spans of recordings: an output of "
            "a job run with audio.segmentation: vad or on a manifest of spans (RTTM turns, Kaldi segments)"
        )
    # a recording without speech (audio.segmentation: vad) is one row without a span: nothing to draw
    where = (pc.field("recording_id") == recording_id) & pc.field("start_s").is_valid()
    if "error" in names:
        where = where & pc.field("error").is_null()
    columns = COLUMNS + [c for c in OPTIONAL if c in names]
    table = ds.to_table(columns=columns, filter=where).sort_by("start_s")
    if table.num_rows == 0:
        raise ValueError(f"{features}: no speech segments of recording {recording_id!r}")
    labels = (read_metadata(ds.schema) or {}).get("labels") or list(LABELS)
    return table.to_pylist(), list(labels)


def write_timeline(
    features: str, recording_id: str, out_dir: str | Path, storage: Storage | None = None
) -> Path:
    """`out_dir/timeline-<recording_id>.png` for one recording of the output `features` (characters other
    than letters, digits, `.`, `_` and `-` in the id become `_` in the file name)."""
    rows, labels = load_timeline(features, recording_id, storage)
    name = re.sub(r"[^A-Za-z0-9._-]", "_", recording_id)
    return plot_timeline(
        rows, Path(out_dir) / f"timeline-{name}.png", f"{recording_id}: emotion over time", labels
    )


def plot_timeline(
    rows: Sequence[Mapping[str, Any]], path: str | Path, title: str, labels: Sequence[str] = LABELS
) -> Path:
    """Draw `rows` (start_s, end_s, scores [len(labels)], label, optional speaker) as stacked score
    bands over time: one lane, or one per speaker when rows name speakers."""
    starts, widths, scores = _arrays(rows, labels)
    lanes = _lanes(rows)
    plt = _plt()
    height = 4.2 if len(lanes) == 1 else 1.2 + 2.2 * len(lanes)
    fig, axes = plt.subplots(
        len(lanes), 1, figsize=(14, height), sharex=True, squeeze=False, constrained_layout=True
    )
    lo, hi = min(0.0, float(starts.min())), float((starts + widths).max())
    for ax, (speaker, index) in zip(axes[:, 0], lanes.items(), strict=True):
        _bands(ax, starts[index], widths[index], scores[index], labels)
        ax.set_xlim(lo, hi)  # from 0: leading silence shows as a gap
        ax.set_ylim(0, 1.0)
        for i in index:
            if rows[i].get("label") and widths[i] >= MIN_LABEL_WIDTH * (hi - lo):
                ax.text(starts[i] + widths[i] / 2, 1.01, str(rows[i]["label"]), ha="center", va="bottom",
                        fontsize=8, clip_on=False)  # fmt: skip
        if speaker is None:
            ax.set_ylabel("class score")
        else:
            ax.set_ylabel(f"{speaker}\nclass score")
            for a, b in _overlaps(starts, widths, lanes, speaker):
                ax.axvspan(a, b, ymin=0, ymax=1, facecolor="none", edgecolor="black", hatch="///", lw=0)
    axes[0, 0].set_title(title, pad=16)
    axes[0, 0].legend(loc="upper left", bbox_to_anchor=(1.005, 1.0), fontsize=8, frameon=False)
    _time_axis(plt, axes[-1, 0], hi - lo)
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    plt.close(fig)
    return out


def _bands(
    ax: Any, starts: np.ndarray, widths: np.ndarray, scores: np.ndarray, labels: Sequence[str]
) -> None:
    bottom = np.zeros(len(starts))
    for k, name in enumerate(labels):
        ax.bar(starts, scores[:, k], widths, bottom, align="edge", linewidth=0,
               color=COLORS.get(name, f"C{k}"), label=name)  # fmt: skip
        bottom += scores[:, k]


def _time_axis(plt: Any, ax: Any, span: float) -> None:
    if span > 300:
        step = next((m * 60 for m in (1, 2, 5, 10, 15, 30, 60) if span / (m * 60) <= 10), 7200)
        ax.xaxis.set_major_locator(plt.MultipleLocator(step))
        ax.xaxis.set_major_formatter(lambda t, _: f"{int(t) // 60}:{int(t) % 60:02d}")
        ax.set_xlabel("time (min:s)")
    else:
        ax.set_xlabel("time (s)")


def _lanes(rows: Sequence[Mapping[str, Any]]) -> dict[str | None, list[int]]:
    """speaker -> indices of its rows, speakers in order of first appearance; {None: all} without speakers."""
    if not any(r.get("speaker") is not None for r in rows):
        return {None: list(range(len(rows)))}
    lanes: dict[str | None, list[int]] = {}
    for i, r in enumerate(rows):
        lanes.setdefault(r.get("speaker"), []).append(i)
    return lanes


def _overlaps(
    starts: np.ndarray, widths: np.ndarray, lanes: Mapping[str | None, list[int]], speaker: str | None
) -> list[tuple[float, float]]:
    """The stretches where a turn of `speaker` and a turn of another speaker both run."""
    ends = starts + widths
    others = np.array([j for other, index in lanes.items() if other != speaker for j in index], np.int64)
    out: list[tuple[float, float]] = []
    if not len(others):
        return out
    for i in lanes[speaker]:
        a, b = np.maximum(starts[others], starts[i]), np.minimum(ends[others], ends[i])
        out += [(float(x), float(y)) for x, y in zip(a[b > a], b[b > a], strict=True)]
    return out


def _arrays(rows: Sequence[Mapping[str, Any]], labels: Sequence[str]) -> tuple[np.ndarray, ...]:
    """(starts [N], widths [N], scores [N, C]) with every row checked."""
    if not rows:
        raise ValueError("no segments to plot")
    for i, row in enumerate(rows):
        missing = [k for k in ("start_s", "end_s", "scores") if row.get(k) is None]
        if missing:
            raise ValueError(
                f"segment {i}: no {missing[0]} (a model without a classifier head has no scores)"
            )
        if len(row["scores"]) != len(labels):
            raise ValueError(f"segment {i}: {len(row['scores'])} scores for {len(labels)} labels")
        if not row["end_s"] > row["start_s"]:
            raise ValueError(f"segment {i}: end_s {row['end_s']} is not after start_s {row['start_s']}")
    starts = np.array([r["start_s"] for r in rows], np.float64)
    widths = np.array([r["end_s"] for r in rows], np.float64) - starts
    return starts, widths, np.array([r["scores"] for r in rows], np.float64)


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt
