"""Kaldi data directories: `wav.scp`, optional `segments`, `utt2spk`, `text` and other `utt2*` files
-> one row per utterance (a segment, or a whole recording without `segments`). Read whole by one task.

`reco2file_and_channel` (`<recording> <file> <side>`, as Switchboard, Fisher and CALLHOME dirs ship it)
says which side of a stereo call a recording is: where one file's recordings name two or more sides,
each recording is analysed on its own channel (the private `schema.CHANNEL` column, as for RTTM turns),
else the two sides of a call would both be analysed on the mix and come out the same.

A `wav.scp` entry may be a decoder pipe as the recipes write them (`flac -c -d -s a.flac |`,
`sph2pipe -f wav -p -c 1 a.sph |`): read as the file it names, on the channel it picks (wav_scp.py);
one whose output the pipeline does not reproduce is an error row saying why.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING

import pyarrow as pa

from ...config import InputConfig
from ...schema import CHANNEL, INPUT_ERROR
from ...storage import Storage, join
from ..columns import Columns, normalise
from ..errors import ManifestError
from .base import Format, never, read_bytes, text, two_columns, utf8
from .wav_scp import Entry, read_entry

if TYPE_CHECKING:
    from ..sources import Source
    from ..units import Piece

COLUMNS = Columns("id", "path", False, start="offset", end="end", recording="recording_id", speaker="speaker")


def read(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    piece: Piece | None = None,
    raw_schema: pa.Schema | None = None,
    skip_rows: int = 0,
) -> Iterator[pa.Table]:
    d = source.uri

    def file(name: str) -> bytes | None:
        uri = join(d, name)
        return text(read_bytes(uri, storage)) if storage.exists(uri) else None

    rec_ids, rec_paths = two_columns(file("wav.scp") or b"", join(d, "wav.scp"), "<recording-id> <path>")
    where = {r: read_entry(r, v) for r, v in zip(rec_ids.to_pylist(), rec_paths.to_pylist(), strict=True)}
    segments = file("segments")
    if segments is None:
        ids, recs = rec_ids, pa.nulls(len(rec_ids), pa.string())
        start = end = pa.nulls(len(rec_ids), pa.float64())
    else:
        ids, recs, start, end = _segments(segments, join(d, "segments"))
    sides = file("reco2file_and_channel")
    side = _sides(sides, join(d, "reco2file_and_channel")) if sides is not None else {}
    paths, errors, channels = [], [], []
    for utt, rec in zip(ids.to_pylist(), (recs if segments is not None else ids).to_pylist(), strict=True):
        entry = where.get(rec)
        if entry is None:
            entry = Entry(None, error=f"segments: recording {rec!r} of {utt!r} is not in wav.scp")
        # a pipe that picks a channel (`sph2pipe -c 2`) or mixes them is the recording's audio, as Kaldi
        # reads it; a side named in reco2file_and_channel picks one of a file passed whole
        channels.append(side.get(rec) if entry.whole else entry.channel)
        paths.append(entry.path)
        errors.append(entry.error)
    table = pa.table(
        {
            "id": ids,
            "path": pa.array(paths, pa.string()),
            "recording_id": recs,
            "offset": start,
            "end": end,
            INPUT_ERROR: pa.array(errors, pa.string()),
            CHANNEL: pa.array(channels, pa.int32()),
        }
    )
    for name in _extras(storage, d):
        table = _join_per_utterance(table, file(name) or b"", join(d, name), _column(name))
    yield normalise(table.slice(skip_rows), COLUMNS, source.root)


def _segments(data: bytes, uri: str) -> tuple[pa.Array, pa.Array, pa.Array, pa.Array]:
    utts, recs, starts, ends = [], [], [], []
    for n, line in enumerate(utf8(data, uri).splitlines(), 1):
        parts = line.split()
        if not parts:
            continue
        if len(parts) != 4:
            raise ManifestError(f"{uri}: line {n}: expected '<utt> <recording> <start> <end>', got {line!r}")
        try:
            s, e = float(parts[2]), float(parts[3])
        except ValueError:
            raise ManifestError(f"{uri}: line {n}: start and end must be seconds, got {line!r}") from None
        utts.append(parts[0])
        recs.append(parts[1])
        starts.append(s)
        ends.append(e)
    return (
        pa.array(utts, pa.string()),
        pa.array(recs, pa.string()),
        pa.array(starts, pa.float64()),
        pa.array(ends, pa.float64()),
    )


def _sides(data: bytes, uri: str) -> dict[str, int]:
    """`reco2file_and_channel` -> recording -> 0-based channel, for the recordings of the files whose
    recordings name two or more sides (a file whose recordings all say `A`, as many recipes write for
    mono audio, is analysed on its mix). Sides are letters (`A` the first channel) or numbers counted
    from 1, from 0 where a file's recordings use 0 (as for RTTM channels); another side: the mix."""
    recs, rest = two_columns(data, uri, "<recording> <file> <channel>")
    per_file: dict[str, dict[str, str]] = {}
    for n, (rec, line) in enumerate(zip(recs.to_pylist(), rest.to_pylist(), strict=True), 1):
        parts = line.split()
        if len(parts) != 2:
            raise ManifestError(
                f"{uri}: entry {n}: expected '<recording> <file> <channel>', got {rec} {line!r}"
            )
        per_file.setdefault(parts[0], {})[rec] = parts[1]
    out: dict[str, int] = {}
    for named in per_file.values():
        if len(set(named.values())) < 2:
            continue
        base = 0 if "0" in named.values() else 1
        for rec, c in named.items():
            if len(c) == 1 and c.isalpha():
                out[rec] = ord(c.upper()) - ord("A")
            elif c.isdigit() and int(c) >= base:
                out[rec] = int(c) - base
    return out


def _extras(storage: Storage, d: str) -> list[str]:
    names = {f.rsplit("/", 1)[-1] for f in storage.list_files(d)}
    wanted = (n for n in names if n == "text" or (n.startswith("utt2") and "." not in n))
    # the dir's own files only: utils/split_data.sh leaves split<N>/<k>/ copies of them inside it
    return sorted(n for n in wanted if storage.exists(join(d, n)))


def _column(name: str) -> str:
    return {"utt2spk": "speaker", "text": "text"}.get(
        name, name[len("utt2") :] if name.startswith("utt2") else name
    )


def _join_per_utterance(table: pa.Table, data: bytes, uri: str, column: str) -> pa.Table:
    keys, values = two_columns(data, uri, "<utt> <value>", empty=column == "text")
    lookup = dict(zip(keys.to_pylist(), values.to_pylist(), strict=True))
    return table.append_column(
        column, pa.array([lookup.get(i) for i in table["id"].to_pylist()], pa.string())
    )


FORMAT = Format(("kaldi",), never, read)
