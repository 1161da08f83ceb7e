"""Diariser output: RTTM files (pyannote, NeMo, dscore), and NeMo diarisation manifests -> one row per
speaker turn. Read whole by one task per file.

An `.rttm` file may hold many recordings (see pipeline/rttm.py for the line format). The audio of
`<file-id>` is found through a Kaldi `wav.scp` beside the RTTM when there is one (`<file-id> <path>`,
or a decoder pipe read as the file it names: wav_scp.py),
else anywhere under `input.audio_root` (default: the RTTM's folder), in any audio format the job
decodes: the file named `<file-id>.<ext>`, else the one named `<file-id>.<anything>.<ext>` (AMI's
`ES2002a.Mix-Headset.wav`). The root is listed once (an index, not a walk per recording). A turn
whose audio cannot be found, or is ambiguous (two candidates, both named), is an error row saying so,
as is a turn of negative duration.

With `input.format: rttm` (or `auto`, when the first line names an RTTM: sources.py), a JSON-lines
file is a NeMo diarisation manifest: one line per recording with `audio_filepath` and `rttm_filepath`
(relative paths resolve against `input.audio_root`, else the manifest's folder), and optional
`offset` / `duration`: only the turns inside that window are kept, cut to it. Turn times are seconds
in the audio file.

Rows come out grouped by recording in time order (one decode per recording; per channel where the
RTTM tells channels apart, the channel travelling as the private `schema.CHANNEL` column), with
`recording_id`, `speaker`, the span, and `overlap_s`; ids are `<file-id>_<speaker>_<onset ms>`. Units
hold whole recordings (`count`).
"""

from __future__ import annotations

import dataclasses
import json
import math
import posixpath
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...config import InputConfig
from ...rttm import RttmError, parse_rttm, turns_table
from ...schema import CHANNEL, INPUT_ERROR
from ...storage import Storage, join
from ..columns import Columns, file_name, normalise
from ..errors import ManifestError
from .base import Count, Format, count_whole, read_bytes, runs, text, two_columns, utf8, whole_groups
from .wav_scp import Entry, read_entry

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece

COLUMNS = Columns(
    "id",
    "path",
    False,
    start="start_s",
    end="end_s",
    recording="recording_id",
    speaker="speaker",
    overlap="overlap_s",
)
# a NeMo diarisation manifest is JSON lines, each name also gzipped (as sources.py finds them: a `.json.gz`
# read as RTTM text held no SPEAKER line, so no turn)
NEMO_SUFFIXES = tuple(s + gz for s in (".json", ".jsonl", ".ndjson") for gz in ("", ".gz"))
WAV_SCP = "wav.scp"


def detect(name: str) -> str | None:
    return "rttm" if name.endswith(".rttm") else None


def read(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    if file_name(source.uri).lower().endswith(NEMO_SUFFIXES):
        table = _nemo(source, storage)
    else:
        turns = _parse(read_bytes(source.uri, storage), source.uri)
        table = _with_audio(turns, _Locator(source, storage))
    table = _reversed(table)
    # the channel to analyse travels as a private column (schema.CHANNEL), never into the output
    table = table.rename_columns([CHANNEL if c == "channel" else c for c in table.column_names])
    first = 0 if piece is None else piece.first_row  # a piece of whole recordings (Plan.pieces)
    yield normalise(table.slice(first + skip_rows), COLUMNS, source.root)


def count(source: Source, cfg: InputConfig, storage: Storage) -> Count:
    """Read whole; units hold whole recordings (a reader of one recording touches one unit, and a
    resumed run decodes a recording once): see base.whole_groups for the bound. The recordings' row
    counts let the driver cut decode blocks of whole recordings (Plan.pieces)."""
    tables = list(read(source, cfg, storage))
    found = count_whole(tables, source.uri, rows=False)  # turns are sorted by time: no line to name
    recordings = [r for t in tables for r in t["recording_id"].to_pylist()]
    return dataclasses.replace(
        found, units=whole_groups(recordings, cfg.rows_per_unit), groups=runs(recordings)
    )


def _parse(data: bytes, uri: str) -> pa.Table:
    try:
        return parse_rttm(text(data).decode("utf-8"), uri)
    except (RttmError, UnicodeDecodeError) as e:
        raise ManifestError(str(e) if isinstance(e, RttmError) else f"{uri}: not UTF-8 text: {e}") from None


def _with_audio(turns: pa.Table, find: Callable[[str], Entry]) -> pa.Table:
    """Turns + the audio path of their recording, or why there is none (an input error). Where the
    recording's audio is one channel of its file (a wav.scp pipe: `sph2pipe -c 2 ... |`) or the mix,
    a turn is analysed on that; the RTTM's channels then count within it: a turn on another than
    its first is an error row."""
    where = {rec: find(rec) for rec in pc.unique(turns["recording_id"]).to_pylist()}
    paths, errors, channels = [], [], []
    for rec, channel in zip(turns["recording_id"].to_pylist(), turns["channel"].to_pylist(), strict=True):
        entry = where[rec]
        path, error = entry.path, entry.error
        if not entry.whole and error is None:
            if channel:
                path, error = (
                    None,
                    (
                        f"RTTM turn on channel {channel + 1} of {rec!r}, whose {WAV_SCP} entry gives "
                        f"one channel of its file"
                    ),
                )
            channel = entry.channel
        paths.append(path)
        errors.append(error)
        channels.append(channel)
    turns = turns.set_column(
        turns.schema.get_field_index("channel"), "channel", pa.array(channels, pa.int32())
    )
    turns = turns.append_column("path", pa.array(paths, pa.string()))
    return turns.append_column(INPUT_ERROR, pa.array(errors, pa.string()))


def _reversed(table: pa.Table) -> pa.Table:
    """A turn whose duration is negative is an error row saying so: its end, below 0 when the onset is
    small, would reach the span code as Kaldi's -1 ("to the end of the file") and run the rest of the
    recording as the turn."""
    start, end = table["start_s"].to_pylist(), table["end_s"].to_pylist()
    bad = [
        f"RTTM turn at {a:.3f} s has a negative duration ({b - a:.3f} s)" if b < a else None
        for a, b in zip(start, end, strict=True)
    ]
    if not any(bad):
        return table
    at = table.schema.get_field_index(INPUT_ERROR)
    return table.set_column(at, INPUT_ERROR, pc.coalesce(table[INPUT_ERROR], pa.array(bad, pa.string())))


class _Locator:
    """Finds a recording's audio: through wav.scp beside the RTTM, else by name under the root."""

    def __init__(self, source: Source, storage: Storage):
        self.source, self.storage = source, storage
        scp = join(_folder(source.uri), WAV_SCP)
        self.scp: dict[str, str] | None = None
        if storage.exists(scp):
            keys, values = two_columns(read_bytes(scp, storage), scp, "<recording-id> <path>")
            self.scp = dict(zip(keys.to_pylist(), values.to_pylist(), strict=True))
        self.index: _AudioIndex | None = None

    def __call__(self, rec: str) -> Entry:
        if self.scp is not None:
            value = self.scp.get(rec)
            if value is None:
                return Entry(
                    None, error=f"RTTM recording {rec!r} is not in {WAV_SCP} beside {self.source.uri}"
                )
            return read_entry(rec, value, WAV_SCP)  # a path, or a decoder pipe read as its file
        if self.index is None:
            self.index = _audio_index(self.storage, self.source.root)
        paths = self.index.find(rec)
        if not paths:
            return Entry(
                None,
                error=f"RTTM recording {rec!r}: no audio file {rec}.* (nor {rec}.<name>.*) under "
                f"{self.source.root}",
            )
        if len(paths) > 1:
            names = " and ".join(_under(p, self.source.root) for p in paths)
            return Entry(
                None,
                error=f"RTTM recording {rec!r}: several audio files match under {self.source.root} "
                f"({names}); keep one, or name each recording's file in a {WAV_SCP} beside the RTTM",
            )
        return Entry(paths[0])


@dataclass
class _AudioIndex:
    """Audio files anywhere under a root, by name: `exact` by the name without its extension
    (`ES2002a.wav` -> `ES2002a`), `qualified` by every leading part of that name up to a dot
    (`ES2002a.Mix-Headset.wav` -> `ES2002a`; `a.b.c.wav` -> `a`, `a.b`)."""

    exact: dict[str, list[str]] = field(default_factory=dict)
    qualified: dict[str, list[str]] = field(default_factory=dict)

    def add(self, uri: str) -> None:
        stem = posixpath.splitext(uri.rsplit("/", 1)[-1])[0]
        self.exact.setdefault(stem, []).append(uri)
        parts = stem.split(".")
        for k in range(1, len(parts)):
            self.qualified.setdefault(".".join(parts[:k]), []).append(uri)

    def find(self, rec: str) -> list[str]:
        """The files of recording `rec`: those named `<rec>.<ext>`, else those named `<rec>.<anything>.<ext>`."""
        return self.exact.get(rec) or self.qualified.get(rec, [])


_INDEXES: dict[str, _AudioIndex] = {}  # audio root -> its index, per process
_MAX_INDEXES = 8


def _audio_index(storage: Storage, root: str) -> _AudioIndex:
    """Audio files anywhere under `root` (one recursive listing, local or any store), indexed by name.
    Listed once per process and root: the count pass and every RTTM of a glob look in the same tree."""
    if root in _INDEXES:
        return _INDEXES[root]
    from ..sources import AUDIO_SUFFIXES

    index = _AudioIndex()
    for f in storage.list_files(root):
        if posixpath.splitext(f)[1].lower() in AUDIO_SUFFIXES:
            index.add(f)
    if len(_INDEXES) >= _MAX_INDEXES:
        _INDEXES.clear()
    _INDEXES[root] = index
    return index


def _under(uri: str, root: str) -> str:
    """`uri` relative to `root` where it lies under it (for messages)."""
    prefix = root.rstrip("/") + "/"
    return uri[len(prefix) :] if uri.startswith(prefix) else uri


def _folder(uri: str) -> str:
    from ..sources import parent

    return parent(uri)


# -- NeMo diarisation manifests ---------------------------------------------------------------------


def is_diarisation_manifest(head: bytes) -> bool:
    """Whether a JSON-lines manifest, from its first bytes (decompressed), is a NeMo diarisation
    manifest: its first line is an object with a non-empty `rttm_filepath`."""
    line = text(head).lstrip().split(b"\n", 1)[0]
    try:
        entry = json.loads(line)
    except ValueError:
        return False
    return isinstance(entry, dict) and bool(entry.get("rttm_filepath"))


def _nemo(source: Source, storage: Storage) -> pa.Table:
    tables = []
    data = read_bytes(source.uri, storage)
    for n, line in enumerate(utf8(text(data), source.uri).splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as e:
            raise ManifestError(f"{source.uri}: line {n}: not JSON: {e}") from None
        if not isinstance(entry, dict):
            raise ManifestError(
                f"{source.uri}: line {n}: a NeMo diarisation manifest holds one JSON object per line"
            )
        missing = [k for k in ("audio_filepath", "rttm_filepath") if not entry.get(k)]
        if missing:
            raise ManifestError(
                f"{source.uri}: line {n}: a NeMo diarisation manifest line needs {missing[0]!r}"
            )
        rttm = join(source.root, str(entry["rttm_filepath"]))
        where = f"{source.uri}: line {n}"
        offset, duration = (_seconds(entry.get(k), k, where) for k in ("offset", "duration"))
        # a missing RTTM is this line's (its path resolved against the root), not input.manifest's
        named_by = f"{where}: rttm_filepath {str(entry['rttm_filepath'])!r}"
        turns = _window(_parse(read_bytes(rttm, storage, named_by=named_by), rttm), offset, duration)
        path = pa.array([str(entry["audio_filepath"])] * turns.num_rows, pa.string())
        tables.append(
            turns.append_column("path", path).append_column(
                INPUT_ERROR, pa.nulls(turns.num_rows, pa.string())
            )
        )
    if not tables:
        return _with_audio(parse_rttm(""), lambda rec: Entry(None))
    return pa.concat_tables(tables)


def _seconds(value: object, key: str, where: str) -> float | None:
    """A line's `offset` / `duration`: None, or seconds (a finite number >= 0). Anything else is a bad
    manifest naming the line, not a bare float() error (or a NaN window that keeps no turn)."""
    if value is None:
        return None
    try:
        seconds = float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        seconds = math.nan
    if isinstance(value, bool) or not (math.isfinite(seconds) and seconds >= 0):
        raise ManifestError(f"{where}: {key!r} must be seconds (a number >= 0, or null), got {value!r}")
    return seconds


def _window(turns: pa.Table, offset: float | None, duration: float | None) -> pa.Table:
    """The turns inside [offset, offset + duration) (None: the whole file), cut to it."""
    if not offset and duration is None:
        return turns
    lo = float(offset or 0.0)
    hi = np.inf if duration is None else lo + float(duration)
    onset, ends = turns["start_s"].to_numpy(), turns["end_s"].to_numpy()
    start, end = np.maximum(onset, lo), np.minimum(ends, hi)
    # a turn of negative (or zero) duration whose onset lies in the window is kept as it is, to be the
    # error row that says so (`_reversed`; the decode: "the end is not after the start"), as without a
    # window; cut to the window it had end <= start and was dropped without a word
    empty_inside = (ends <= onset) & (onset >= lo) & (onset < hi)
    start, end = np.where(empty_inside, onset, start), np.where(empty_inside, ends, end)
    keep = (end > start) | empty_inside
    recs, spks, chans = (
        pc.filter(turns[c], pa.array(keep)).to_pylist() for c in ("recording_id", "speaker", "channel")
    )
    return turns_table(recs, spks, start[keep], end[keep], chans)


FORMAT = Format(("rttm",), detect, read, count, companions=frozenset({WAV_SCP}))
