"""Lhotse CutSets (`cuts.jsonl[.gz]`): one row per supervision (a cut without supervisions is one
row, named by the cut). Read whole by one task, in batches."""

from __future__ import annotations

import io
import json
from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from ...config import InputConfig
from ...schema import INPUT_ERROR
from ...storage import Storage
from ..columns import Columns, normalise
from ..errors import ManifestError
from .base import Format, read_bytes, text

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece

BATCH_ROWS = 4096
COLUMNS = Columns("id", "path", False, start="offset", end="end", recording="recording_id", speaker="speaker")
NAMES = ["id", "path", "recording_id", "offset", "end", INPUT_ERROR, "speaker", "language", "text", "custom"]
TYPES = [pa.string()] * 3 + [pa.float64()] * 2 + [pa.string()] * 5


def detect(name: str) -> str | None:
    return "lhotse" if name.endswith((".jsonl", ".jsonl.gz")) and "cuts" in name else None


def read(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    data = text(read_bytes(source.uri, storage))
    rows: list[dict] = []
    for n, line in enumerate(io.BytesIO(data), 1):
        if not line.strip():
            continue
        try:
            cut = json.loads(line)
        except ValueError as e:
            raise ManifestError(f"{source.uri}: line {n}: not JSON: {e}") from None
        rows.extend(_cut_rows(cut, source, n))
        if len(rows) >= BATCH_ROWS:
            yield _table(rows, source)
            rows = []
    if rows:
        yield _table(rows, source)


def _cut_rows(cut: dict, source: Source, line: int) -> list[dict]:
    if "id" not in cut:
        raise ManifestError(f"{source.uri}: line {line}: a cut without an 'id'")
    rec = cut.get("recording") or {}
    path, error = _recording_path(rec)
    if cut.get("type") == "MixedCut" or "tracks" in cut:
        path, error = None, f"Lhotse cut {cut['id']!r} is a MixedCut; only single-recording cuts are read"
    base = {"path": path, "recording_id": rec.get("id"), INPUT_ERROR: error}
    start = float(cut.get("start", 0.0))
    sups = cut.get("supervisions") or []
    if not sups:
        dur = cut.get("duration")
        return [
            {**base, "id": cut["id"], "offset": start, "end": None if dur is None else start + float(dur)}
        ]
    out = []
    for s in sups:
        if "id" not in s:
            raise ManifestError(f"{source.uri}: line {line}: a supervision of cut {cut['id']!r} has no 'id'")
        begin = start + float(s.get("start", 0.0))  # supervision times are relative to the cut
        custom = s.get("custom")
        out.append(
            {
                **base,
                "id": s["id"],
                "offset": begin,
                "end": begin + float(s["duration"]) if s.get("duration") is not None else None,
                "speaker": s.get("speaker"),
                "language": s.get("language"),
                "text": s.get("text"),
                "custom": None if custom is None else json.dumps(custom, sort_keys=True),
            }
        )
    return out


def _recording_path(rec: dict) -> tuple[str | None, str | None]:
    sources = rec.get("sources") or []
    if not sources:
        return None, f"Lhotse recording {rec.get('id')!r} has no sources"
    src = sources[0]
    if src.get("type") in ("file", "url"):
        return src.get("source"), None
    return (
        None,
        f"Lhotse recording {rec.get('id')!r}: source type {src.get('type')!r} is not supported (file, url)",
    )


def _table(rows: list[dict], source: Source) -> pa.Table:
    table = pa.table({n: pa.array([r.get(n) for r in rows], t) for n, t in zip(NAMES, TYPES, strict=True)})
    return normalise(table, COLUMNS, source.root)


FORMAT = Format(("lhotse",), detect, read)
