"""How work is cut: units (what the writer commits as a whole) and pieces (what one read task reads).

Each source is cut into units: runs of `input.rows_per_unit` consecutive rows, named by `unit_name`;
a source whose rows come in groups that must stay together (a recording's diariser turns) gives the
rows of each unit instead (`Count.units`, see formats.base.whole_groups). The count pass notes where
each unit starts (a byte offset in a line manifest, a row in Parquet). The
driver turns the units not yet committed into pieces: a unit done whole becomes one piece per decode
block, so a single 10M-row manifest is read in parallel and a rerun of a finished job reads nothing;
a unit that redoes only its error rows is one piece; a source that cannot be read by ranges is one
piece, re-cut into decode blocks by Ray. A source of groups (`Count.groups`: an RTTM's recordings) is
read whole by each of its pieces, once per process (`_whole`), and cut into blocks of whole groups, so
that a recording is decoded once for all its turns (a block of rows cut anywhere would decode it once
per block it reaches). Blocks are cut at `block_rows` (one formula, here), each tagged with its unit.
"""

from __future__ import annotations

import bisect
import dataclasses
import itertools
import math
import uuid
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field

import pyarrow as pa

from ..config import InputConfig
from ..schema import UNIT, UNIT_ROWS
from ..storage import Storage
from .formats import Count, tables
from .resume import NOTHING, Resume
from .sources import Source

ROW_STARTS = ("parquet", "arrow")  # formats whose units start at a row (the others: at a byte)
MAX_BLOCK_BYTES = 64 << 20  # embedded audio bytes per block handed to the decode stage


def unit_name(key: str, index: int) -> str:
    """The name of a source's `index`-th unit: in commit markers, staged files and result file names."""
    return f"{key}-{index:06d}"


def block_rows(most: int, row_bytes: float) -> int:
    """Rows per block handed to a decode task: at most `most`, and about MAX_BLOCK_BYTES."""
    return max(1, min(most, int(MAX_BLOCK_BYTES // max(row_bytes, 1.0))))


@dataclass(frozen=True)
class Piece:
    """What one read task reads: whole units of one source (units first_unit.., rows first_row.. of
    the source, `rows` of them), from byte `start` to `end` of a line manifest (None: from the top, or
    by row for Parquet). A unit done whole by this run is cut into `parts` pieces of one decode block
    each: this task yields block `part`, so decoding spreads over tasks without a repartition."""

    source: int
    first_unit: int
    units: int
    first_row: int
    rows: int
    start: int | None = None
    end: int | None = None
    part: int = 0
    parts: int = 1
    # a block of whole groups: its first row inside the unit, and its rows (-1: blocks of block_rows)
    block_start: int = -1
    block_len: int = -1

    def item(self) -> dict[str, int]:
        """As a row of the read stage's input (None as -1: Arrow columns stay int64)."""
        d = dataclasses.asdict(self)
        return {k: -1 if v is None else v for k, v in d.items()}

    @classmethod
    def from_item(cls, d: dict[str, int]) -> Piece:
        return cls(**{k: None if k in ("start", "end") and v == -1 else v for k, v in d.items()})


@dataclass
class Plan:
    """What the driver knows about the manifest: its sources and their row counts, never the rows."""

    where: str
    sources: list[Source]
    counts: list[int] = field(default_factory=list)  # rows per source, after input.limit
    passthrough: pa.Schema = field(default_factory=lambda: pa.schema([]))  # manifest columns carried through
    row_bytes: float = 0.0  # the largest bytes per row of a source (audio inside the manifest)
    details: list[Count] = field(default_factory=list)  # per source, from the count pass
    token: str = field(default_factory=lambda: uuid.uuid4().hex)  # this plan's (`_whole`'s cache key)

    def pieces(self, size: int, resume: Resume | None = None, block_rows: int = 0) -> list[Piece]:
        """The read tasks' work, leaving out the units `resume` says are done, so a finished job
        reads nothing again. A source that can be read by ranges gives a piece per unit, or, with
        `block_rows`, a piece per decode block of a unit done whole; any other source is one piece."""
        resume = resume or NOTHING
        out = []
        for i, (source, n) in enumerate(zip(self.sources, self.counts, strict=True)):
            count = self.details[i] if i < len(self.details) else None
            starts = count.starts if count is not None else None
            sizes = self.unit_rows(i, size)
            todo = [u for u, rows in enumerate(sizes) if not resume.done(unit_name(source.key, u), rows)]
            if not todo:
                continue
            if count is not None and count.groups is not None and block_rows:
                out += _group_pieces(i, sizes, todo, count.groups, block_rows, resume, source.key)
                continue
            if not starts or source.format == "audio":
                out.append(Piece(i, 0, len(sizes), 0, n))
                continue
            for u in todo:  # units of a source read by ranges are all `size` rows (the last: fewer)
                rows = sizes[u]
                start = None if source.format in ROW_STARTS else starts[u]
                end = starts[u + 1] if start is not None and u + 1 < len(starts) else None
                parts = 1
                if block_rows and resume.redo(unit_name(source.key, u)) is None:
                    parts = math.ceil(rows / block_rows)
                out += [Piece(i, u, 1, u * size, rows, start, end, k, parts) for k in range(parts)]
        return out

    def unit_rows(self, source: int, size: int) -> list[int]:
        """Rows of each unit of a source: `size` each (the last: the rest), or what its count pass gave
        (`Count.units`), cut at its count (input.limit)."""
        n = self.counts[source]
        given = self.details[source].units if source < len(self.details) else None
        if given is None:
            return [min(size, n - u * size) for u in range(math.ceil(n / size))]
        out, left = [], n
        for rows in given:
            if left <= 0:
                break
            out.append(min(rows, left))
            left -= out[-1]
        return out

    def needs_recut(self, pieces: list[Piece], block_rows: int) -> bool:
        """Whether a read task may yield more than one decode block (Ray merges what a task yields
        into one block: it must then be re-cut for decoding to run in parallel). Never for a source of
        groups: its pieces are blocks of whole recordings, or a unit that redoes its error rows (a few
        rows, at most one unit), and a re-cut by row counts would split the recordings of the other
        blocks again (each then decoded once per block it reached)."""
        return any(p.parts == 1 and p.rows > block_rows and not self._grouped(p) for p in pieces)

    def _grouped(self, piece: Piece) -> bool:
        """A piece of one unit of a source of groups (`_group_pieces`)."""
        details = self.details[piece.source] if piece.source < len(self.details) else None
        return piece.units == 1 and details is not None and details.groups is not None

    def block_rows(self, most: int) -> int:
        """Rows per block handed to a decode task (see `block_rows`)."""
        return block_rows(most, self.row_bytes)

    @property
    def rows(self) -> int:
        return sum(self.counts)


def _group_pieces(
    source: int,
    sizes: list[int],
    todo: list[int],
    groups: Sequence[int],
    most: int,
    resume: Resume,
    key: str,
) -> list[Piece]:
    """The pieces of a source of groups: per unit done whole, one per block of whole groups (as many
    as fit in `most` rows; a longer group is a block of its own); a unit that redoes its error rows
    is one piece. A group cut between units (base.whole_groups: past its bound) is cut there too."""
    firsts = list(itertools.accumulate(sizes, initial=0))
    edges = list(itertools.accumulate(groups, initial=0))  # rows where a group starts, ascending
    out = []
    for u in todo:
        lo, rows = firsts[u], sizes[u]
        if resume.redo(unit_name(key, u)) is not None:
            out.append(Piece(source, u, 1, lo, rows))
            continue
        inside = edges[bisect.bisect_right(edges, lo) : bisect.bisect_left(edges, lo + rows)]
        cuts = [0, *(e - lo for e in inside), rows]
        blocks: list[tuple[int, int]] = []  # (start in the unit, rows)
        for a, b in itertools.pairwise(cuts):
            if blocks and blocks[-1][1] + (b - a) <= most:
                blocks[-1] = (blocks[-1][0], blocks[-1][1] + (b - a))
            else:
                blocks.append((a, b - a))
        out += [
            Piece(source, u, 1, lo, rows, None, None, k, len(blocks), a, n) for k, (a, n) in enumerate(blocks)
        ]
    return out


# A source of groups read whole, per process: its pieces are read by the same few worker processes
# (Ray reuses them), so each parses the source (and lists its audio root) once, not once per block.
_WHOLE: dict[tuple[str, int], pa.Table] = {}


def _whole(plan: Plan, index: int, cfg: InputConfig, storage: Storage) -> pa.Table:
    key = (plan.token, index)
    if key not in _WHOLE:
        _WHOLE.clear()  # one source held at a time
        parts = tables(plan.sources[index], cfg, storage, None, plan.details[index].raw_schema)
        _WHOLE[key] = pa.concat_tables(list(parts), promote_options="permissive")
    return _WHOLE[key]


def read_units(
    source: Source,
    cfg: InputConfig,
    storage: Storage,
    *,
    piece: Piece,
    skip: Resume | None,
    block_rows: int,
    raw_schema: pa.Schema | None = None,
    unit_rows: Sequence[int] | None = None,
) -> Iterator[pa.Table]:
    """Stream one piece of a source as normalised blocks tagged with their unit, leaving out what
    `skip` (the resume record) says is done. Each block holds rows of one unit; `UNIT_ROWS` is the
    number of that unit's rows this run processes, so the writer knows when the unit is complete.
    `unit_rows`: the rows of each of the piece's units (Plan.unit_rows; None: input.rows_per_unit)."""
    resume = skip or NOTHING
    if piece.parts > 1:  # one block of a unit done whole
        lo = piece.part * block_rows
        rows = min(block_rows, piece.rows - lo)
        parts = tables(source, cfg, storage, piece, raw_schema, skip_rows=lo)
        block = pa.concat_tables(list(_unit_tables(parts, rows, rows)), promote_options="permissive")
        yield _tag(block, unit_name(source.key, piece.first_unit), piece.rows)
        return
    sizes = cfg.rows_per_unit if unit_rows is None else unit_rows
    parts = tables(source, cfg, storage, piece, raw_schema)
    for k, unit_table in enumerate(_unit_tables(parts, sizes, piece.rows)):
        unit = unit_name(source.key, piece.first_unit + k)
        todo = resume.todo(unit, unit_table)
        if todo.num_rows:
            yield from _blocks(_tag(todo, unit, todo.num_rows), block_rows)


def read_pieces(batch: pa.Table, *, plan: Plan, **kwargs) -> Iterator[pa.Table]:
    """A read task: the pieces in `batch` (rows of Piece.item())."""
    for d in batch.to_pylist():
        p = Piece.from_item(d)
        if p.block_start >= 0:  # a block of whole groups
            whole = _whole(plan, p.source, kwargs["cfg"], kwargs["storage"])
            block = whole.slice(p.first_row + p.block_start, p.block_len)
            yield _tag(block, unit_name(plan.sources[p.source].key, p.first_unit), p.rows)
            continue
        raw_schema = plan.details[p.source].raw_schema if plan.details else None
        sizes = None  # units of input.rows_per_unit rows
        if plan.details and plan.details[p.source].units is not None:  # units of whole recordings
            sizes = plan.unit_rows(p.source, kwargs["cfg"].rows_per_unit)[
                p.first_unit : p.first_unit + p.units
            ]
        yield from read_units(
            plan.sources[p.source], piece=p, raw_schema=raw_schema, unit_rows=sizes, **kwargs
        )


def _tag(table: pa.Table, unit: str, unit_rows: int) -> pa.Table:
    table = table.append_column(UNIT, pa.array([unit] * table.num_rows, pa.string()))
    return table.append_column(UNIT_ROWS, pa.array([unit_rows] * table.num_rows, pa.int64()))


def _unit_tables(
    tables: Iterable[pa.Table], sizes: int | Iterable[int], limit: int | None
) -> Iterator[pa.Table]:
    """Re-cut a stream of tables into tables of exactly `sizes` rows each (an int: all of that size;
    the last may be shorter)."""
    want = itertools.repeat(sizes) if isinstance(sizes, int) else iter(sizes)
    size = next(want, None)
    pending: list[pa.Table] = []
    have = 0
    left = limit if limit is not None else -1
    for t in tables:
        if left == 0:
            break
        if left > 0:
            t = t.slice(0, left)
            left -= t.num_rows
        pending.append(t)
        have += t.num_rows
        while size is not None and have >= size:
            whole = pa.concat_tables(pending, promote_options="permissive")
            yield whole.slice(0, size)
            rest = whole.slice(size)
            pending, have = [rest], rest.num_rows
            size = next(want, None)
    if have:
        yield pa.concat_tables(pending, promote_options="permissive")


def _blocks(table: pa.Table, most: int) -> Iterator[pa.Table]:
    """Split a unit into blocks of at most `most` rows and about MAX_BLOCK_BYTES."""
    step = block_rows(most, table.nbytes / max(table.num_rows, 1))
    for start in range(0, table.num_rows, step):
        yield table.slice(start, step)
