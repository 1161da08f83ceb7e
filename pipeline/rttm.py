"""Diariser output (RTTM) -> speaker turns. Pure: text in, an Arrow table out; no storage, no Ray.

    turns = parse_rttm(text, "calls.rttm")   # id, recording_id, speaker, start_s, end_s, overlap_s

RTTM is what pyannote (`Annotation.write_rttm`), NeMo and dscore write, one turn per line:

    SPEAKER <file-id> <channel> <onset> <duration> <NA> <NA> <speaker> <NA> <NA>

Ten fields; the nine-field variant some tools write (no trailing `<NA>`) is read too. Lines of other
types (`SPKR-INFO`, `LEXEME`, ...), blank lines and `#` / `;;` comments are skipped. One file may hold
many recordings. Turns come out grouped by recording, in time order, so the audio of a recording is
decoded once for all its turns. `channel` is the channel a turn is analysed on, 0-based, or null for
the mix of all channels: the RTTM's channel field (2nd, 1-based in NIST's RTTM; 0-based where a
recording's turns use channel 0, as Kaldi writes) counts only where it tells channels apart, i.e. where
a recording's turns name two or more channels (one speaker per channel: call-centre stereo). A
recording whose turns all name one channel (pyannote and NeMo write `1` for any audio) is analysed on
the mix, and so is one with a channel field that is not a number. The turns of a recording analysed
per channel come grouped by channel (in time order within it), so each channel is decoded once.
`overlap_s` is how much of a turn another speaker of the same
recording also speaks (the union of their turns, so two others at once count once). Ids are
`<file-id>_<speaker>_<onset in ms, 7 digits>`: stable across reruns and independent of the line order.
"""

from __future__ import annotations

import math

import numpy as np
import pyarrow as pa


class RttmError(ValueError):
    pass


TURN_SCHEMA = pa.schema(
    [
        ("id", pa.string()),
        ("recording_id", pa.string()),
        ("speaker", pa.string()),
        ("start_s", pa.float64()),
        ("end_s", pa.float64()),
        ("overlap_s", pa.float64()),
        ("channel", pa.int32()),
    ]
)


def parse_rttm(text: str, uri: str = "<rttm>") -> pa.Table:
    """RTTM text -> one row per SPEAKER line (see the module docstring). Raises RttmError naming the
    file and line for a SPEAKER line with too few fields or times that are not (finite) numbers."""
    recs, spks, starts, durs, fields2 = [], [], [], [], []
    for n, line in enumerate(text.splitlines(), 1):
        fields = line.split()
        if not fields or fields[0].startswith(("#", ";;")) or fields[0] != "SPEAKER":
            continue
        if len(fields) not in (9, 10):
            raise RttmError(
                f"{uri}: line {n}: a SPEAKER line has 10 fields (SPEAKER <file-id> <channel> <onset> "
                f"<duration> <NA> <NA> <speaker> <NA> <NA>), got {len(fields)}: {line.strip()!r}"
            )
        try:
            onset, duration = float(fields[3]), float(fields[4])
            if not (math.isfinite(onset) and math.isfinite(duration)):  # float() reads "nan", "inf"
                raise ValueError(fields[3:5])
        except ValueError:
            raise RttmError(
                f"{uri}: line {n}: onset and duration must be seconds, got {line.strip()!r}"
            ) from None
        recs.append(fields[1])
        fields2.append(fields[2])
        spks.append(fields[7])
        starts.append(onset)
        durs.append(duration)
    start = np.array(starts, np.float64)
    end = start + np.array(durs, np.float64)
    channels = analysed_channels(recs, fields2)
    order = sorted(range(len(recs)), key=lambda i: (recs[i], _or(channels[i], -1), start[i], end[i], spks[i]))
    recs = [recs[i] for i in order]
    spks = [spks[i] for i in order]
    channels = [channels[i] for i in order]
    start, end = start[order] if order else start, end[order] if order else end
    return turns_table(recs, spks, start, end, channels)


def analysed_channels(recordings: list[str], fields: list[str]) -> list[int | None]:
    """The RTTM channel field of each turn -> the 0-based channel it is analysed on, or None for the
    mix (see the module docstring)."""
    named: dict[str, set[str]] = {}
    for r, f in zip(recordings, fields, strict=True):
        named.setdefault(r, set()).add(f)
    base = {}  # recording -> the number of its first channel (0 or 1); absent: the mix
    for r, values in named.items():
        if len(values) > 1 and all(v.isdigit() for v in values):
            base[r] = 0 if any(int(v) == 0 for v in values) else 1
    return [int(f) - base[r] if r in base else None for r, f in zip(recordings, fields, strict=True)]


def _or(value: int | None, default: int) -> int:
    return default if value is None else value


def turns_table(
    recordings: list[str],
    speakers: list[str],
    start: np.ndarray,
    end: np.ndarray,
    channels: list[int | None] | None = None,
) -> pa.Table:
    """Turns given as columns -> the turn table (ids and overlap_s added), rows in the order given.
    `channels`: each turn's 0-based channel, None for the mix (default: all the mix)."""
    ids = [turn_id(r, s, t) for r, s, t in zip(recordings, speakers, start, strict=True)]
    channels = [None] * len(recordings) if channels is None else channels
    return pa.table(
        {
            "id": pa.array(ids, pa.string()),
            "recording_id": pa.array(recordings, pa.string()),
            "speaker": pa.array(speakers, pa.string()),
            "start_s": pa.array(start, pa.float64()),
            "end_s": pa.array(end, pa.float64()),
            "overlap_s": pa.array(overlap_seconds(recordings, speakers, start, end), pa.float64()),
            "channel": pa.array(channels, pa.int32()),
        },
        schema=TURN_SCHEMA,
    )


def turn_id(recording: str, speaker: str, start_s: float) -> str:
    return f"{recording}_{speaker}_{max(0, round(start_s * 1000)):07d}"


def overlap_seconds(
    recordings: list[str], speakers: list[str], start: np.ndarray, end: np.ndarray
) -> np.ndarray:
    """[N] seconds of each turn covered by the union of the other speakers' turns of its recording."""
    out = np.zeros(len(recordings), np.float64)
    spk = np.array(speakers, dtype=object)
    by_recording: dict[str, list[int]] = {}  # one pass: a corpus-wide RTTM has thousands of recordings
    for i, r in enumerate(recordings):
        by_recording.setdefault(r, []).append(i)
    for rows in by_recording.values():
        idx = np.array(rows, np.int64)
        for s in set(spk[idx]):
            mine = idx[spk[idx] == s]
            others = idx[spk[idx] != s]
            if len(others):
                lo, hi = _union(start[others], end[others])
                out[mine] = [_covered(start[i], end[i], lo, hi) for i in mine]
    return out


def _union(start: np.ndarray, end: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Disjoint sorted intervals covering the given ones."""
    order = np.argsort(start, kind="stable")
    lo, hi = [], []
    for a, b in zip(start[order], end[order], strict=True):
        if b <= a:
            continue
        if lo and a <= hi[-1]:
            hi[-1] = max(hi[-1], b)
        else:
            lo.append(a)
            hi.append(b)
    return np.array(lo, np.float64), np.array(hi, np.float64)


def _covered(a: float, b: float, lo: np.ndarray, hi: np.ndarray) -> float:
    """Length of [a, b) inside the disjoint sorted intervals [lo, hi)."""
    return float(np.clip(np.minimum(hi, b) - np.maximum(lo, a), 0.0, None).sum())
