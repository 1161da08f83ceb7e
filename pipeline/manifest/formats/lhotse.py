"""Lhotse CutSets (`cuts.jsonl[.gz]`): one row per supervision (a cut without supervisions is one
row, named by the cut). Read whole by one task, in batches."""

from __future__ import annotations

import io
import json
from collections.abc import Collection, Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from ...config import InputConfig
from ...schema import CHANNEL, INPUT_ERROR
from ...storage import Storage
from ..columns import Columns, file_name, normalise
from ..errors import ManifestError
from .base import Format, read_bytes, text

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece

BATCH_ROWS = 4096
COLUMNS = Columns("id", "path", False, start="offset", end="end", recording="recording_id", speaker="speaker")
NAMES = [
    "id",
    "path",
    "recording_id",
    "offset",
    "end",
    INPUT_ERROR,
    "speaker",
    "language",
    "text",
    "custom",
    CHANNEL,
]
TYPES = [pa.string()] * 3 + [pa.float64()] * 2 + [pa.string()] * 5 + [pa.int64()]


# what a Lhotse Recording and a SupervisionSegment always write (a cut has `type` and `recording`)
RECORDING_KEYS = frozenset({"id", "sources", "sampling_rate", "num_samples", "duration"})
SUPERVISION_KEYS = frozenset({"id", "recording_id", "start", "duration"})


def detect(name: str) -> str | None:
    return "lhotse" if name.endswith((".jsonl", ".jsonl.gz")) and "cuts" in name else None


def not_cuts(keys: Collection[str], uri: str, line: int | None = None) -> None:
    """Refuse a Lhotse RecordingSet or SupervisionSet (what recipes write as
    `<corpus>_recordings_<part>.jsonl.gz` and `<corpus>_supervisions_<part>.jsonl.gz`) with the command
    that joins them into the CutSet this pipeline reads. `keys`: the keys of a CutSet's `line`, or the
    columns of a JSON-lines manifest (`line` None)."""
    if "type" in keys or "recording" in keys:  # a cut (checked first: this runs on every line of a CutSet)
        return
    keys = set(keys)
    if RECORDING_KEYS <= keys:
        kind, item, mine, other = "RecordingSet", "Recording", "recordings", "supervisions"
    elif SUPERVISION_KEYS <= keys:
        kind, item, mine, other = "SupervisionSet", "SupervisionSegment", "supervisions", "recordings"
    else:
        return
    name = file_name(uri)
    # the recipe names the other half of a part alike: suggest it, or a placeholder where the name differs
    beside = (
        uri[: len(uri) - len(name)] + name.replace(mine, other) if mine in name else f"<{other}.jsonl.gz>"
    )
    files = {mine: uri, other: beside}
    raise ManifestError(
        f"{uri}: a Lhotse {kind}{f' (line {line} is a {item})' if line else ''}, not a CutSet: the pipeline "
        f"reads cuts, which join each recording to its supervisions. Make a CutSet and set input.manifest "
        f"to it: lhotse cut simple -r {files['recordings']} -s {files['supervisions']} cuts.jsonl.gz "
        f"(without -s: a cut per whole recording)"
    )


def read(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    data = text(read_bytes(source.uri, storage))
    sides = _sides(data)
    rows: list[dict] = []
    for n, line in enumerate(io.BytesIO(data), 1):
        if not line.strip():
            continue
        try:
            cut = json.loads(line)
        except ValueError as e:
            raise ManifestError(f"{source.uri}: line {n}: not JSON: {e}") from None
        rows.extend(_cut_rows(cut, source, n, sides))
        if len(rows) >= BATCH_ROWS:
            yield _table(rows, source)
            rows = []
    if rows:
        yield _table(rows, source)


def _single(channel: object) -> int | None:
    """A supervision's channel when it is one (`0`, `[1]`), else None (`[0, 1]`: shared; absent)."""
    if isinstance(channel, list) and len(channel) == 1:
        channel = channel[0]
    return channel if isinstance(channel, int) and not isinstance(channel, bool) else None


def _sides(data: bytes) -> dict[object, set[int]]:
    """Per recording, the single channels that the supervisions of its MultiCuts name, over the whole
    CutSet: where there are two or more (a stereo call, a file per headset), each supervision is read
    on its channel, even in a window of the recording that holds one side's supervisions only. Only
    lines that name a MultiCut (Lhotse writes `"type": "MultiCut"`) are parsed for it; a cut written
    without its type adds its own supervisions' channels in `_cut_rows`."""
    sides: dict[object, set[int]] = {}
    for line in io.BytesIO(data):
        if b"MultiCut" not in line:
            continue
        try:
            cut = json.loads(line)
        except ValueError:
            continue  # the reading pass names the line
        if not isinstance(cut, dict) or not isinstance(cut.get("channel"), list):
            continue
        named = {_single(s.get("channel")) for s in cut.get("supervisions") or [] if isinstance(s, dict)}
        sides.setdefault((cut.get("recording") or {}).get("id"), set()).update(named - {None})
    return sides


def _cut_rows(cut: dict, source: Source, line: int, sides: dict[object, set[int]]) -> list[dict]:
    not_cuts(cut, source.uri, line)
    if "id" not in cut:
        raise ManifestError(f"{source.uri}: line {line}: a cut without an 'id'")
    rec = cut.get("recording") or {}
    path, channel, error = _recording_path(rec, cut.get("channel"), cut["id"])
    if cut.get("type") == "MixedCut" or "tracks" in cut:
        path, channel, error = (
            None,
            None,
            f"Lhotse cut {cut['id']!r} is a MixedCut; only single-recording cuts are read",
        )
    base = {"path": path, "recording_id": rec.get("id"), INPUT_ERROR: error, CHANNEL: channel}
    start = float(cut.get("start", 0.0))
    sups = cut.get("supervisions") or []
    if not sups:
        dur = cut.get("duration")
        return [
            {**base, "id": cut["id"], "offset": start, "end": None if dur is None else start + float(dur)}
        ]
    held = cut.get("channel")
    # a MultiCut of a recording whose supervisions lie on two or more channels: each supervision on its own
    # channel alone, as Lhotse's `to_mono()` splits it (Fisher, Switchboard: a side per channel), never the
    # mix of both sides. Supervisions all on one channel (Lhotse's default 0, on audio diarised as a mix),
    # or shared by channels (`[0, 1]`), keep the cut's audio
    named = {_single(s.get("channel")) for s in sups} - {None}
    per_channel = isinstance(held, list) and len(named | sides.get(rec.get("id"), set())) > 1
    out = []
    for s in sups:
        if "id" not in s:
            raise ManifestError(f"{source.uri}: line {line}: a supervision of cut {cut['id']!r} has no 'id'")
        begin = start + float(s.get("start", 0.0))  # supervision times are relative to the cut
        end = begin + float(s["duration"]) if s.get("duration") is not None else None
        row = dict(base)
        side = _single(s.get("channel")) if per_channel else None
        if side is not None and side not in held:
            # Lhotse's to_mono() drops it (on no channel of the cut): a row that says why, not another side
            row["path"], row[CHANNEL] = None, None
            row[INPUT_ERROR] = (
                f"Lhotse supervision {s['id']!r} is on channel {side}, which its cut {cut['id']!r} "
                f"(channels {held}) does not hold"
            )
        elif side is not None:
            row["path"], row[CHANNEL], row[INPUT_ERROR] = _recording_path(rec, side, cut["id"])
        if begin < 0:
            # a supervision may overhang its cut (Lhotse keeps them); there is no audio before the
            # recording's start: what exists of it is the row (Lhotse's `trim` cuts it so)
            if end is not None and end <= 0:
                row["path"], row[CHANNEL] = None, None
                row[INPUT_ERROR] = row[INPUT_ERROR] or (
                    f"Lhotse supervision {s['id']!r} lies before the start of its recording "
                    f"([{begin:g}, {end:g}) s)"
                )
            begin = 0.0
        custom = s.get("custom")
        out.append(
            {
                **row,
                "id": s["id"],
                "offset": begin,
                "end": end,
                "speaker": s.get("speaker"),
                "language": s.get("language"),
                "text": s.get("text"),
                "custom": None if custom is None else json.dumps(custom, sort_keys=True),
            }
        )
    return out


def _recording_path(rec: dict, channel: object, cut: str) -> tuple[str | None, int | None, str | None]:
    """(the file to read, the channel of it to analyse (None: the mix), or why neither). A MonoCut
    (`channel` an int) is that channel of its recording alone, as Lhotse loads it: read from the source
    that holds it (a recording may keep a file per channel: AMI's headsets); so is a MultiCut of one channel."""
    sources = rec.get("sources") or []
    if isinstance(channel, list) and len(channel) == 1:
        channel = channel[0]  # a MultiCut of one channel loads that channel alone, as a MonoCut does
    if not sources:
        return None, None, f"Lhotse recording {rec.get('id')!r} has no sources"
    src, pick = sources[0], None
    if isinstance(channel, int) and not isinstance(channel, bool):
        src = next((s for s in sources if channel in (s.get("channels") or [])), None)
        if src is None:
            return None, None, f"Lhotse cut {cut!r}: channel {channel} is in no source of its recording"
        held = src.get("channels") or []
        pick = held.index(channel) if len(held) > 1 else None  # a one-channel file is its own channel
    elif (
        isinstance(channel, list) and len(sources) == 1 and sorted(channel) != sorted(src.get("channels", []))
    ):
        # Lhotse loads those channels alone; the pipeline analyses one channel or the mix of all of them
        # (the mix of a subset is neither: reading it as the mix of the file would be other audio)
        return (
            None,
            None,
            f"Lhotse cut {cut!r}: channels {channel} of a recording with channels {src.get('channels')}; "
            f"only one channel or all of them can be read (MultiCut.to_mono gives a cut per channel)",
        )
    elif len(sources) > 1:
        return (
            None,
            None,
            f"Lhotse cut {cut!r}: its channels lie in several files ({len(sources)} sources); cut it to one "
            f"channel (CutSet.trim_to_supervisions) to read it",
        )
    # a transform's cut times are in the transformed audio (perturb_speed): the file cut at them is other
    # speech. Resampling is the one the pipeline does itself
    done = [t.get("name") for t in rec.get("transforms") or [] if t.get("name") != "Resample"]
    if done:
        return (
            None,
            None,
            f"Lhotse recording {rec.get('id')!r}: transform {done[0]!r} is not applied by this pipeline "
            f"(only Resample); use the cuts before it",
        )
    if src.get("type") in ("file", "url"):
        return src.get("source"), pick, None
    return (
        None,
        None,
        f"Lhotse recording {rec.get('id')!r}: source type {src.get('type')!r} is not supported (file, url)",
    )


def _table(rows: list[dict], source: Source) -> pa.Table:
    table = pa.table({n: pa.array([r.get(n) for r in rows], t) for n, t in zip(NAMES, TYPES, strict=True)})
    return normalise(table, COLUMNS, source.root)


FORMAT = Format(("lhotse",), detect, read)
