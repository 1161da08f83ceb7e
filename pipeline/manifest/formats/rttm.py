"""Diariser output: RTTM files (pyannote, NeMo, dscore), and NeMo diarisation manifests -> one row per
speaker turn. Read whole by one task per file.

An `.rttm` file may hold many recordings (see pipeline/rttm.py for the line format). The audio of
`<file-id>` is found through a Kaldi `wav.scp` beside the RTTM when there is one (`<file-id> <path>`),
else as the file directly under `input.audio_root` (default: the RTTM's folder) whose name without
its extension is the file id, in any audio format the job decodes. A turn whose audio cannot be
found, or is ambiguous, is an error row saying so.

With `input.format: rttm`, a JSON-lines file is a NeMo diarisation manifest: one line per recording
with `audio_filepath` and `rttm_filepath` (relative paths resolve against `input.audio_root`, else the
manifest's folder), and optional `offset` / `duration`: only the turns inside that window are kept,
cut to it. Turn times are seconds in the audio file.

Rows come out grouped by recording in time order (one decode per recording), with `recording_id`,
`speaker`, the span, and `overlap_s`; ids are `<file-id>_<speaker>_<onset ms>`.
"""

from __future__ import annotations

import json
import posixpath
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ...config import InputConfig
from ...rttm import RttmError, parse_rttm, turns_table
from ...schema import INPUT_ERROR
from ...storage import Storage, join
from ..columns import Columns, normalise
from ..errors import ManifestError
from .base import Format, read_bytes, text, two_columns

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
NEMO_SUFFIXES = (".json", ".jsonl", ".jsonl.gz", ".ndjson")
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
    if source.uri.lower().endswith(NEMO_SUFFIXES):
        table = _nemo(source, storage)
    else:
        turns = _parse(read_bytes(source.uri, storage), source.uri)
        table = _with_audio(turns, _Locator(source, storage))
    yield normalise(table.slice(skip_rows), COLUMNS, source.root)


def _parse(data: bytes, uri: str) -> pa.Table:
    try:
        return parse_rttm(text(data).decode("utf-8"), uri)
    except (RttmError, UnicodeDecodeError) as e:
        raise ManifestError(str(e) if isinstance(e, RttmError) else f"{uri}: not UTF-8 text: {e}") from None


def _with_audio(turns: pa.Table, find: Callable[[str], tuple[str | None, str | None]]) -> pa.Table:
    """Turns + the audio path of their recording, or why there is none (an input error)."""
    where = {rec: find(rec) for rec in pc.unique(turns["recording_id"]).to_pylist()}
    found = [where[r] for r in turns["recording_id"].to_pylist()]
    turns = turns.append_column("path", pa.array([p for p, _ in found], pa.string()))
    return turns.append_column(INPUT_ERROR, pa.array([e for _, e in found], pa.string()))


class _Locator:
    """Finds a recording's audio: through wav.scp beside the RTTM, else by name under the root."""

    def __init__(self, source: Source, storage: Storage):
        self.source, self.storage = source, storage
        scp = join(_folder(source.uri), WAV_SCP)
        self.scp: dict[str, str] | None = None
        if storage.exists(scp):
            keys, values = two_columns(read_bytes(scp, storage), scp, "<recording-id> <path>")
            self.scp = dict(zip(keys.to_pylist(), values.to_pylist(), strict=True))
        self.index: dict[str, list[str]] | None = None

    def __call__(self, rec: str) -> tuple[str | None, str | None]:
        if self.scp is not None:
            path = self.scp.get(rec)
            if path is None:
                return None, f"RTTM recording {rec!r} is not in {WAV_SCP} beside {self.source.uri}"
            if path.rstrip().endswith("|"):
                return (
                    None,
                    f"{WAV_SCP}: {rec!r} is a pipe command ({path.strip()!r}); give a file path instead",
                )
            return path, None
        if self.index is None:
            self.index = _audio_index(self.storage, self.source.root)
        paths = self.index.get(rec, [])
        if not paths:
            return None, f"RTTM recording {rec!r}: no audio file {rec}.* under {self.source.root}"
        if len(paths) > 1:
            names = ", ".join(p.rsplit("/", 1)[-1] for p in paths)
            return None, f"RTTM recording {rec!r}: several audio files match ({names}); keep one"
        return paths[0], None


_INDEXES: dict[str, dict[str, list[str]]] = {}  # audio root -> its index, per process
_MAX_INDEXES = 8


def _audio_index(storage: Storage, root: str) -> dict[str, list[str]]:
    """Audio files directly under `root`, by name without extension. Listed once per process and
    root: the count pass and every RTTM of a glob look in the same folder."""
    if root in _INDEXES:
        return _INDEXES[root]
    from ..sources import AUDIO_SUFFIXES

    index: dict[str, list[str]] = {}
    prefix = root.rstrip("/") + "/"
    for f in storage.list_files(root):
        rel = f[len(prefix) :] if f.startswith(prefix) else f.rsplit("/", 1)[-1]
        stem, suffix = posixpath.splitext(rel)
        if "/" not in rel and suffix.lower() in AUDIO_SUFFIXES:
            index.setdefault(stem, []).append(f)
    if len(_INDEXES) >= _MAX_INDEXES:
        _INDEXES.clear()
    _INDEXES[root] = index
    return index


def _folder(uri: str) -> str:
    from ..sources import parent

    return parent(uri)


# -- NeMo diarisation manifests ---------------------------------------------------------------------


def _nemo(source: Source, storage: Storage) -> pa.Table:
    tables = []
    data = read_bytes(source.uri, storage)
    for n, line in enumerate(text(data).decode("utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except ValueError as e:
            raise ManifestError(f"{source.uri}: line {n}: not JSON: {e}") from None
        missing = [k for k in ("audio_filepath", "rttm_filepath") if not entry.get(k)]
        if missing:
            raise ManifestError(
                f"{source.uri}: line {n}: a NeMo diarisation manifest line needs {missing[0]!r}"
            )
        rttm = join(source.root, str(entry["rttm_filepath"]))
        turns = _window(_parse(read_bytes(rttm, storage), rttm), entry.get("offset"), entry.get("duration"))
        path = pa.array([str(entry["audio_filepath"])] * turns.num_rows, pa.string())
        tables.append(
            turns.append_column("path", path).append_column(
                INPUT_ERROR, pa.nulls(turns.num_rows, pa.string())
            )
        )
    if not tables:
        return _with_audio(parse_rttm(""), lambda rec: (None, None))
    return pa.concat_tables(tables)


def _window(turns: pa.Table, offset: float | None, duration: float | None) -> pa.Table:
    """The turns inside [offset, offset + duration) (None: the whole file), cut to it."""
    if not offset and duration is None:
        return turns
    lo = float(offset or 0.0)
    hi = np.inf if duration is None else lo + float(duration)
    start = np.maximum(turns["start_s"].to_numpy(), lo)
    end = np.minimum(turns["end_s"].to_numpy(), hi)
    keep = end > start
    recs = pc.filter(turns["recording_id"], pa.array(keep)).to_pylist()
    spks = pc.filter(turns["speaker"], pa.array(keep)).to_pylist()
    return turns_table(recs, spks, start[keep], end[keep])


FORMAT = Format(("rttm",), detect, read, companions=frozenset({WAV_SCP}))
