"""Who felt what: a small table per recording and speaker, and the turns where a speaker's emotion changes.

    from pipeline.downstream.summary import summarize, write_summary
    speakers, changes = summarize("outputs/calls")
    write_summary("outputs/calls", "outputs/calls-viz")   # speakers.{csv,parquet}, changes.{csv,parquet}

`speakers`: one row per (recording_id, speaker) of the ok rows: `turns`, `seconds` (speaking time: the
sum of the turns' lengths, `end_s - start_s`, or `duration_s` for rows without a span), `overlap_s`
(seconds of those turns that overlap another speaker; null when the output has no such column),
`changes` (how many of the speaker's turns have another top label than the speaker's turn before), then
`share_<label>` (fraction of the speaking time whose turn has that top label; they sum to 1) and
`score_<label>` (the class scores averaged over the speaking time, each turn weighted by its length).
A null speaker (rows that name none) is a group of its own. A row without a `recording_id` (a whole
file) is a recording of its own, named by its `id`.

`changes`: one row per turn whose top label differs from the same speaker's previous turn in that
recording (turns in order of `start_s`): recording_id, speaker, id, start_s, end_s, previous_label,
label.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.csv as pacsv
import pyarrow.parquet as pq

from ..schema import read_metadata
from ..storage import Storage
from .timeline import LABELS
from .train import open_output

NEEDED = ["id", "recording_id", "label", "scores", "duration_s"]
OPTIONAL = ["speaker", "start_s", "end_s", "overlap_s"]


def summarize(features: str, storage: Storage | None = None) -> tuple[pa.Table, pa.Table]:
    """(per recording and speaker, the turns where a speaker's top label changes); see the module docstring."""
    rows, labels = _load(features, storage)
    return _speakers(rows, labels), _changes(rows)


def write_summary(features: str, out_dir: str | Path, storage: Storage | None = None) -> list[Path]:
    """`out_dir/speakers.{csv,parquet}` and `out_dir/changes.{csv,parquet}`."""
    speakers, changes = summarize(features, storage)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, table in (("speakers", speakers), ("changes", changes)):
        pq.write_table(table, out / f"{name}.parquet")
        pacsv.write_csv(table, out / f"{name}.csv")
        paths += [out / f"{name}.csv", out / f"{name}.parquet"]
    return paths


def _load(features: str, storage: Storage | None) -> tuple[pa.Table, list[str]]:
    """The ok rows with a label, sorted by recording, speaker, start, id; nulls filled where absent."""
    ds = open_output(features, storage)
    names = set(ds.schema.names)
    missing = [c for c in NEEDED if c not in names]
    if missing:
        raise ValueError(f"{features}: no column {missing[0]!r}; is it an output of jobs/extract.py?")
    where = pc.field("label").is_valid()
    if "error" in names:
        where = where & pc.field("error").is_null()
    table = ds.to_table(columns=NEEDED + [c for c in OPTIONAL if c in names], filter=where)
    if table.num_rows == 0:
        raise ValueError(f"{features}: no rows with a label (a model without a classifier head has none)")
    for name, kind in (("speaker", pa.string()), ("start_s", pa.float64()), ("end_s", pa.float64())):
        if name not in table.column_names:
            table = table.append_column(name, pa.nulls(table.num_rows, kind))
    # a whole file (no spans) has no recording_id: it is a recording of its own, not one with every
    # other whole file (whose labels would count as one speaker's changes)
    at = table.schema.get_field_index("recording_id")
    table = table.set_column(at, "recording_id", pc.coalesce(table["recording_id"], table["id"]))
    keys = [
        ("recording_id", "ascending"),
        ("speaker", "ascending"),
        ("start_s", "ascending"),
        ("id", "ascending"),
    ]
    table = table.sort_by(keys)
    labels = (read_metadata(ds.schema) or {}).get("labels") or list(LABELS)
    return table, list(labels)


def _speakers(rows: pa.Table, labels: list[str]) -> pa.Table:
    seconds = pc.coalesce(pc.subtract(rows["end_s"], rows["start_s"]), rows["duration_s"].cast(pa.float64()))
    weight = seconds.to_numpy(zero_copy_only=False)
    scores = np.stack(rows["scores"].to_numpy(zero_copy_only=False)).astype(np.float64)  # [N, C]
    label = rows["label"].to_numpy(zero_copy_only=False)
    columns: dict[str, pa.Array | pa.ChunkedArray] = {
        "recording_id": rows["recording_id"],
        "speaker": rows["speaker"],
        "turns": pa.array(np.ones(len(weight), np.int64)),
        "seconds": pa.array(weight),
        "changes": pa.array(_changed(rows).astype(np.int64)),
    }
    if "overlap_s" in rows.column_names:
        columns["overlap_s"] = rows["overlap_s"]
    for k, name in enumerate(labels):
        columns[f"share_{name}"] = pa.array(np.where(label == name, weight, 0.0))
        columns[f"score_{name}"] = pa.array(scores[:, k] * weight)
    grouped = pa.table(columns).group_by(["recording_id", "speaker"], use_threads=False)
    sums = [(c, "sum") for c in columns if c not in ("recording_id", "speaker")]
    table = grouped.aggregate(sums)
    table = table.rename_columns([c.removesuffix("_sum") for c in table.column_names])
    total = table["seconds"]
    for name in labels:
        for kind in ("share", "score"):
            col = f"{kind}_{name}"
            table = table.set_column(table.schema.get_field_index(col), col, pc.divide(table[col], total))
    order = ["recording_id", "speaker", "turns", "seconds"]
    order += ["overlap_s"] if "overlap_s" in columns else []
    order += ["changes"] + [f"share_{n}" for n in labels] + [f"score_{n}" for n in labels]
    return table.select(order).sort_by([("recording_id", "ascending"), ("speaker", "ascending")])


def _changed(rows: pa.Table) -> np.ndarray:
    """[N] bool: the row's label differs from the previous row of the same recording and speaker
    (rows sorted by recording, speaker, start)."""
    rec = np.array(rows["recording_id"].to_pylist(), dtype=object)
    spk = np.array(rows["speaker"].to_pylist(), dtype=object)
    label = np.array(rows["label"].to_pylist(), dtype=object)
    out = np.zeros(len(label), bool)
    out[1:] = (rec[1:] == rec[:-1]) & (spk[1:] == spk[:-1]) & (label[1:] != label[:-1])
    return out


def _changes(rows: pa.Table) -> pa.Table:
    changed = _changed(rows)
    previous = (
        pa.array([None] + rows["label"].to_pylist()[:-1], pa.string()) if rows.num_rows else rows["label"]
    )
    table = pa.table(
        {
            "recording_id": rows["recording_id"],
            "speaker": rows["speaker"],
            "id": rows["id"],
            "start_s": rows["start_s"],
            "end_s": rows["end_s"],
            "previous_label": previous,
            "label": rows["label"],
        }
    )
    return table.filter(pa.array(changed))
