"""Parquet output with exactly-once commits per unit of work, resume, and `_run.json`.

Layout of `output.path`:
    part-<unit>-<hash>.parquet   committed result rows (the dataset users read)
    _units/<unit>.json           the commit marker of a unit: its files and sizes, row counts, error ids
    _staging/<unit>/...          files written for a unit that is not committed yet (invisible:
                                 hidden folder, names not ending in .parquet)
    _run.json                    the run summary
    _corrupt/, _orphans/         files a resumed run found damaged or unowned, set aside (not deleted)

Write tasks put each block's rows, grouped by unit, into `_staging/<unit>/`, under names derived from
the ids they hold (a task that Ray retries rewrites the same file). The driver counts what arrives
per unit; when all of a unit's rows are there it commits: marker first (the commit point, one atomic
write), then the staged files are moved into place. A run that dies leaves at most staged files and
moves that the next run finishes (the marker says which files belong) or discards (no marker). So a
rerun never reads result files to find what is done: it lists the markers. Ids are unique across the
output because each id belongs to one unit and a unit's files are replaced only through its marker.
"""

from __future__ import annotations

import hashlib
import io
import json
import logging
import math
import re
import time
from collections.abc import Callable, Collection, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import MISSING, asdict, dataclass, field, fields
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

from .manifest.resume import Committed, Resume
from .redact import redact, redact_column, redact_data
from .schema import (
    DECODE_TIME,
    MANIFEST_ID,
    MODEL_NODE,
    MODEL_RUNTIME,
    MODEL_TIME,
    SEGMENT_TOTAL,
    STORAGE_RETRIES,
    UNIT,
    UNIT_ROWS,
    read_metadata,
)
from .storage import Storage, join

log = logging.getLogger(__name__)

RUN_FILE = "_run.json"
UNITS_DIR = "_units"
STAGING_DIR = "_staging"
STAGED_SUFFIX = ".staged"
CORRUPT_DIR = "_corrupt"
ORPHANS_DIR = "_orphans"
# Local writes go through hidden `.inprogress` temp files that a killed writer leaves behind. The run
# holds the lease when it opens the output and its own writers have not started, so a temp file older
# than this has no writer left; a younger one may be another run's attempt at the lease, mid-write.
STALE_TEMP_S = 60.0


def part_name(unit: str, ids: Iterable[str]) -> str:
    h = hashlib.sha1("\n".join(sorted(ids)).encode("utf-8")).hexdigest()[:16]
    return f"part-{unit}-{h}.parquet"


# Row groups are the unit a streaming reader fetches and decodes (e2v-train, Ray Data, DuckDB): at most
# 1024 rows, and about ROW_GROUP_MB of data. Small rows change nothing; frames rows (~150 KB for 2 s of
# D 768) get row groups of ~200 rows instead of ~150 MB ones (bench/RESULTS.md, streaming training).
ROW_GROUP_MB = 32


def encode_parquet(table: pa.Table, compression: str) -> bytes:
    sink = io.BytesIO()
    by_bytes = table.num_rows * ROW_GROUP_MB * 2**20 // max(table.nbytes, 1)
    pq.write_table(
        table,
        sink,
        compression=None if compression == "none" else compression,
        row_group_size=max(1, min(table.num_rows, 1024, by_bytes)),
    )
    return sink.getvalue()


# -- the write stage (Ray tasks) ----------------------------------------------------------------------


def write_parts(
    batch: pa.Table,
    *,
    output: str,
    schema: pa.Schema,
    storage: Storage,
    compression: str,
    max_file_mb: float,
    rows_per_file: int,
) -> pa.Table:
    """Stage one block of result rows, one or more files per unit; -> one summary row per file."""
    t0 = time.perf_counter()
    retried = sum(storage.retries.values())  # the Storage object outlives this call in a worker
    summaries: list[dict[str, Any]] = []
    for unit in pc.unique(batch[UNIT]).to_pylist():
        rows = batch.filter(pc.equal(batch[UNIT], unit))
        table = _redacted(conform(rows, schema))
        parts = max(
            1, math.ceil(table.nbytes / (max_file_mb * 2**20)), math.ceil(table.num_rows / rows_per_file)
        )
        step = math.ceil(table.num_rows / parts)
        for start in range(0, table.num_rows, step):
            part = table.slice(start, step)
            name = part_name(unit, part["id"].to_pylist())
            storage.write_bytes_atomic(staged_uri(output, unit, name), encode_parquet(part, compression))
            summaries.append(_summary(unit, name, rows.slice(start, step)))
    seconds = time.perf_counter() - t0
    total = max(batch.num_rows, 1)
    for s in summaries:
        s["write_s"] = seconds * s["rows"] / total
    if summaries:  # this task's own write retries, on its first file
        summaries[0]["retries"] += sum(storage.retries.values()) - retried
    return pa.Table.from_pylist(summaries)


def conform(rows: pa.Table, schema: pa.Schema) -> pa.Table:
    """Rows -> exactly `schema` (a manifest shard may lack a passthrough column the first one had)."""
    columns = [
        rows[f.name].cast(f.type) if f.name in rows.column_names else pa.nulls(rows.num_rows, f.type)
        for f in schema
    ]
    return pa.Table.from_arrays(columns, schema=schema)


def _redacted(table: pa.Table) -> pa.Table:
    """Error rows quote the paths they failed on, and paths may be presigned URLs: what reaches the
    output goes through the redaction boundary (the id is the key to join on, not the path)."""
    return redact_column(redact_column(table, "error"), "path")


def staged_uri(output: str, unit: str, name: str) -> str:
    return join(output, f"{STAGING_DIR}/{unit}/{name}{STAGED_SUFFIX}")


def _summary(unit: str, name: str, rows: pa.Table) -> dict[str, Any]:
    errors = int(pc.sum(pc.is_valid(rows["error"])).as_py() or 0)
    totals = rows[SEGMENT_TOTAL]
    return {
        "unit": unit,
        "unit_rows": int(rows[UNIT_ROWS][0].as_py()),
        "file": name,
        "rows": rows.num_rows,
        "ok": rows.num_rows - errors,
        "error": errors,
        "sources": int(pc.sum(pc.greater(totals, 0)).as_py() or 0),  # manifest rows that start here
        "expected": int(pc.sum(totals).as_py() or 0),  # rows those manifest rows became
        "audio_s": float(pc.sum(rows["duration_s"]).as_py() or 0.0),
        "decode_s": _sum(rows, DECODE_TIME),
        "model_s": _sum(rows, MODEL_TIME),
        "retries": int(_sum(rows, STORAGE_RETRIES)),
        "model_nodes": json.dumps(_counts(rows, MODEL_NODE)),
        "model_runtimes": json.dumps(_counts(rows, MODEL_RUNTIME)),
        "error_rows": json.dumps(_error_rows(rows)),
    }


def _error_rows(rows: pa.Table) -> dict[str, list[str]]:
    """Manifest id -> the ids of its error rows (a VAD segment's id is not its manifest row's)."""
    bad = rows.filter(pc.is_valid(rows["error"]))
    sources = bad[MANIFEST_ID] if MANIFEST_ID in bad.column_names else bad["id"]
    out: dict[str, list[str]] = {}
    for source, row in zip(sources.to_pylist(), bad["id"].to_pylist(), strict=True):
        out.setdefault(source, []).append(row)
    return out


def _sum(rows: pa.Table, column: str) -> float:
    return float(pc.sum(rows[column]).as_py() or 0.0) if column in rows.column_names else 0.0


def _counts(rows: pa.Table, column: str) -> dict[str, int]:
    if column not in rows.column_names:
        return {}
    return {r["values"]: r["counts"] for r in pc.value_counts(rows[column]).to_pylist() if r["values"]}


# -- commit markers -------------------------------------------------------------------------------------


@dataclass
class Marker:
    """A committed unit: which files hold its rows, and how many are ok or errors."""

    unit: str
    files: list[str]
    rows: int
    ok: int
    error: int
    audio_s: float
    error_ids: list[str] = field(default_factory=list)  # output ids of its error rows
    sizes: dict[str, int] = field(default_factory=dict)  # file -> bytes: a truncated copy shows at a listing
    sources: int = 0  # manifest rows of the unit (rows counts output rows: segments, with VAD)
    error_rows: dict[str, list[str]] = field(default_factory=dict)  # manifest id -> its error row ids
    ids: str = ""  # digest of the unit's manifest ids, in order (run.unit_digests; "": not known)

    def errors_by_manifest_id(self) -> dict[str, list[str]]:
        """`error_rows`; a marker written before it existed had one output row per manifest row."""
        return self.error_rows or {i: [i] for i in self.error_ids}

    def encode(self) -> bytes:
        return json.dumps(asdict(self), separators=(",", ":")).encode()

    @classmethod
    def decode(cls, data: bytes) -> Marker:
        """Raises ValueError naming the field for a marker that is not one (truncated, garbage, a known
        field missing or of another type). Fields it does not know are ignored: a newer version may
        add some (as `ids` was added), and an older one resuming its output reads what it knows."""
        try:
            raw = json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ValueError(f"not JSON ({e})") from None
        if not isinstance(raw, dict):
            raise ValueError(f"not a JSON object but {type(raw).__name__}")
        known: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in raw:
                if f.default is MISSING and f.default_factory is MISSING:
                    raise ValueError(f"field {f.name!r} missing")
                continue  # a marker written before the field existed
            if not _MARKER_TYPES[f.name](raw[f.name]):
                raise ValueError(f"field {f.name!r} is not of the expected type: {raw[f.name]!r:.80}")
            known[f.name] = raw[f.name]
        return cls(**known)


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_strs(v: Any) -> bool:
    return isinstance(v, list) and all(isinstance(x, str) for x in v)


# Marker field -> its check (`Marker.decode`); a field added to Marker must be added here
_MARKER_TYPES: dict[str, Callable[[Any], bool]] = {
    "unit": lambda v: isinstance(v, str),
    "files": _is_strs,
    "rows": _is_int,
    "ok": _is_int,
    "error": _is_int,
    "audio_s": lambda v: _is_int(v) or isinstance(v, float),
    "error_ids": _is_strs,
    "sizes": lambda v: isinstance(v, dict) and all(_is_int(n) for n in v.values()),
    "sources": _is_int,
    "error_rows": lambda v: isinstance(v, dict) and all(_is_strs(ids) for ids in v.values()),
    "ids": lambda v: isinstance(v, str),
}


COUNTS = (
    "sources",
    "expected",
    "rows",
    "ok",
    "error",
    "audio_s",
    "decode_s",
    "model_s",
    "write_s",
    "retries",
)


@dataclass
class Pending:
    """What the driver has seen of a unit in flight: its files and summed summaries."""

    unit_rows: int = 0
    files: set[str] = field(default_factory=set)
    counts: dict[str, float] = field(default_factory=lambda: dict.fromkeys(COUNTS, 0))
    per_node: dict[str, int] = field(default_factory=dict)
    per_runtime: dict[str, int] = field(default_factory=dict)
    error_rows: dict[str, list[str]] = field(default_factory=dict)  # manifest id -> its error row ids

    def add(self, s: dict[str, Any]) -> None:
        self.unit_rows = s["unit_rows"]
        self.files.add(s["file"])
        for k in COUNTS:
            self.counts[k] += s[k]
        for column, acc in (("model_nodes", self.per_node), ("model_runtimes", self.per_runtime)):
            for key, n in json.loads(s[column]).items():
                acc[key] = acc.get(key, 0) + n
        for source, ids in json.loads(s["error_rows"]).items():
            self.error_rows.setdefault(source, []).extend(ids)

    @property
    def complete(self) -> bool:
        """Every manifest row of the unit started here, and every row they became arrived."""
        c = self.counts
        return c["sources"] == self.unit_rows and c["rows"] == c["expected"]


class OutputError(RuntimeError):
    """The output cannot be used as asked (exists, or was written by something else)."""


class Output:
    """The driver's view of `output.path`: mode, fingerprint check, what is done, commits, totals.

    `fence` is the lease's check (`Lease.check`): every write to the output (markers, result files,
    the staging area's clean-up, `_run.json`) runs right after it, and within the deadline it returns.
    It raises `LeaseLost` once this run may no longer write (paused past its lease, cut off from
    storage, taken over), so a run that wakes up late writes nothing more."""

    def __init__(self, storage: Storage, path: str, fence: Callable[[], float] | None = None):
        self.storage, self.path = storage, path
        self.fence = fence
        self.markers: dict[str, Marker] = {}
        self.replaced = 0  # error rows replaced by a later result
        self.recovered = 0  # units whose interrupted commit this run finished or discarded
        self.corrupt: list[str] = []  # committed files found damaged, moved to _corrupt/
        self.orphans: list[str] = []  # result files no marker names, moved to _orphans/
        self._resume = Resume()
        self._committed_now: set[str] = set()  # units this run committed (not redone on a restart)
        self._sizes: dict[str, int] = {}  # unit -> its manifest rows in this run (`align`)
        self._ids: dict[str, str] = {}  # unit -> the digest of its manifest ids in this run (`align`)

    @contextmanager
    def _fenced(self) -> Iterator[None]:
        """Around each write to the output: the lease's check, then its deadline for the writes
        inside (a local write has no deadline of its own: hence one check per write)."""
        with self.storage.deadline(self.fence() if self.fence else None):
            yield

    # -- opening ----------------------------------------------------------------------------------

    def open(self, mode: str, fingerprint: dict[str, Any]) -> None:
        """Call while holding the output's lease (see STALE_TEMP_S)."""
        with self._fenced():
            self.storage.remove_stale_temp_files(self.path, min_age_s=STALE_TEMP_S)
        files = self.storage.list_files(self.path, ".parquet")
        units = self._marker_uris()
        if (files or units) and mode == "error_if_exists":
            raise OutputError(
                f"output.path {self.path} already holds results ({len(files)} Parquet files) and "
                f"output.mode is error_if_exists"
            )
        if mode == "overwrite":
            self._clear()
            return
        if files or units:
            self._check_fingerprint(fingerprint)
        self.markers = self._read_markers(units)
        self.reopen()  # finishes interrupted commits, then checks the committed files

    def _check_files(self) -> None:
        """Compare the committed files with one listing: a unit with a file missing or of another size
        than committed (a truncated copy, a full disk) is moved aside to `_corrupt/` and redone; a
        result file no marker names (left by a run that died while replacing a unit) goes to
        `_orphans/`. Nothing is deleted: the user can look at what was set aside (renamed `.set-aside`, so
        that `**/*.parquet` globs no longer read them)."""
        listed = self._listing()
        owned: set[str] = set()
        for unit, m in list(self.markers.items()):
            owned |= set(m.files)
            bad = [f for f in m.files if f not in listed or listed[f] != m.sizes.get(f, listed[f])]
            if bad:
                log.warning("unit %s: %s missing or damaged; its rows will be redone", unit, ", ".join(bad))
                self.corrupt += [f for f in bad if f in listed]
                for f in m.files:
                    if f in listed:
                        self._move(join(self.path, f), join(self.path, f"{CORRUPT_DIR}/{f}.set-aside"))
                self._delete(self._marker_uri(unit))
                del self.markers[unit]
        for f in sorted(set(listed) - owned):
            self._move(join(self.path, f), join(self.path, f"{ORPHANS_DIR}/{f}.set-aside"))
            self.orphans.append(f)
        self._resume = self._record()

    def _listing(self) -> dict[str, int]:
        """Result files at the top of the output -> their sizes, from one listing."""
        import pyarrow.fs as pafs

        fs, path = self.storage.resolve(self.path)
        infos = fs.get_file_info(pafs.FileSelector(path, recursive=False, allow_not_found=True))
        return {
            i.base_name: int(i.size)
            for i in infos
            if i.type == pafs.FileType.File
            and i.base_name.startswith("part-")
            and i.base_name.endswith(".parquet")
        }

    def reopen(self) -> None:
        """After a failed attempt: discard what it staged and never committed; keep the commits. The
        next attempt finishes what is left: the error rows this run committed are final for this run
        (a rerun redoes them), or a restart would process them, and count them, twice."""
        self._recover()
        # a commit that failed after its marker may have left the replaced files of its unit, which no
        # marker names now: set aside (`_orphans/`) as the next run would, not read beside the new ones
        self._check_files()
        self._resume = self._record(final=self._committed_now)

    def skip(self) -> Resume:
        """What is done, for the planner: the resume record of the committed units."""
        return self._resume

    def align(
        self,
        sizes: dict[str, int],
        ids: dict[str, str] | None = None,
        whole: Collection[str] = (),
        uncut: dict[str, str] | None = None,
    ) -> None:
        """The manifest rows of each unit in this run (the plan's), a digest of their ids where known,
        the sources read whole (keys; not cut by `input.limit`), and the digest of each unit's ids as
        the source gives them without `input.limit` (`uncut`: differs for the unit the limit cuts). A
        committed unit with another count, or other ids (a row inserted or removed before it shifts
        rows across units without changing their counts: a file added to a folder of audio), is redone
        whole, error rows or not: redoing only its error rows would miss the rows the manifest gained
        and keep those it lost."""
        self._sizes = sizes
        self._ids = ids or {}
        self._set_aside_past_the_end(set(whole), uncut or {})
        self._resume = self._record(final=self._committed_now)

    def _set_aside_past_the_end(self, whole: set[str], uncut: dict[str, str]) -> None:
        """Committed units of a source that now ends before them (files removed from a folder of
        audio), where their ids are known: every row the source still has is in a unit of this plan,
        skipped only where its ids are the committed ones, so these hold rows that are redone in other
        units, or rows gone from the manifest. They are set aside (`_orphans/`), or those rows would be
        in the output twice. Past the end of a source cut by `input.limit` they keep their results,
        unless a unit of this plan holds other rows than committed, even without the limit's cut (rows
        shifted, or a larger `rows_per_unit` gave unit 0 the rows of unit 1): the units past the end
        may then hold rows this plan holds too."""
        # a unit whose count alone changed is no proof: the limit's cut of a unit (a lower limit) is
        # told from rows that moved by its digest without the cut, which is the committed one
        shifted = {
            _source_of(u)
            for u, m in self.markers.items()
            if u in self._ids and m.ids and m.ids not in (self._ids[u], uncut.get(u))
        }
        digested = {_source_of(u) for u in self._ids}
        # and a unit of a source gone from the manifest whose ids a unit of this plan has, in the same
        # order (a shard renamed, or copied under another name and the old one removed): the same rows
        planned = set(self._ids.values())
        stale = sorted(
            u
            for u, m in self.markers.items()
            if u not in self._sizes
            and m.ids
            and (_source_of(u) in (whole & digested) | shifted or m.ids in planned)
        )
        for unit in stale:
            m = self.markers.pop(unit)
            log.warning(
                "unit %s: no longer in the manifest's units, its rows are in this run's units or gone "
                "from the manifest; its %d rows are set aside (%s/)", unit, m.sources, ORPHANS_DIR
            )  # fmt: skip
            self._delete(self._marker_uri(unit))  # first: a crash here leaves files no marker names
            for f in m.files:
                self._move(join(self.path, f), join(self.path, f"{ORPHANS_DIR}/{f}.set-aside"))
                self.orphans.append(f)

    def _changed(self, u: str, m: Marker) -> bool:
        """Whether the manifest now gives committed unit `u` other rows than it was committed with."""
        if self._sizes.get(u, m.sources) != m.sources:
            return True
        now = self._ids.get(u)
        return bool(m.ids and now and m.ids != now)  # a marker written before digests: counts alone

    def _record(self, final: set[str] = frozenset()) -> Resume:
        def committed(u: str, m: Marker) -> Committed:
            if u in final:
                return Committed(m.sources)  # final for this run
            if self._changed(u, m):
                return Committed(-1)  # not done (no count matches): redone whole
            return Committed(m.sources, frozenset(m.errors_by_manifest_id()))

        return Resume({u: committed(u, m) for u, m in self.markers.items()})

    def _marker_uris(self) -> list[str]:
        return self.storage.list_files(join(self.path, UNITS_DIR), ".json")

    def _read_markers(self, uris: list[str]) -> dict[str, Marker]:
        def read(uri: str) -> Marker:
            data = self.storage.read_bytes(uri)
            try:
                return Marker.decode(data)
            except ValueError as e:
                # written atomically by the job: damaged outside it (a partial copy); which rows the
                # unit committed is unknown, so the output is refused rather than guessed at
                raise OutputError(
                    f"commit marker {redact(uri)} is damaged ({e}); restore it from where the output "
                    f"was copied, or rerun with output.mode: overwrite"
                ) from None

        with ThreadPoolExecutor(16) as pool:
            markers = list(pool.map(read, uris))
        return {m.unit: m for m in markers}

    def _clear(self) -> None:
        """Delete this output's own files: result files (`part-*.parquet` at the top, as `_listing`
        sees them), markers, staged files, `_run.json`; never other Parquet files under the path (a
        manifest beside the output, another run's output in a subfolder)."""
        results = [join(self.path, name) for name in sorted(self._listing())]
        for uri in results + self._marker_uris() + self._staged():
            self._delete(uri)
        if self.storage.exists(join(self.path, RUN_FILE)):
            self._delete(join(self.path, RUN_FILE))

    def _staged(self) -> list[str]:
        return [u for u in self.storage.list_files(join(self.path, STAGING_DIR)) if u.endswith(STAGED_SUFFIX)]

    def _check_fingerprint(self, fingerprint: dict[str, Any]) -> None:
        previous = self.existing_metadata()
        if previous is None:
            return
        ignored = {"source", "revision", "pipeline_version"}  # naming a model, not changing its numbers
        keys = sorted((set(previous) | set(fingerprint)) - ignored, key=lambda k: (k != "weights_sha256", k))
        mismatched = [k for k in keys if previous.get(k) != fingerprint.get(k)]
        if mismatched:
            raise OutputError(
                f"output.path {self.path} was written with a different {', '.join(mismatched)} "
                f"(model {previous.get('source')}, sha256 {str(previous.get('weights_sha256'))[:12]}); "
                f"set output.mode: overwrite or choose another output.path"
            )

    def existing_metadata(self) -> dict[str, Any] | None:
        """Pipeline metadata of the output already there: `_run.json` if present, else a file's."""
        run = join(self.path, RUN_FILE)
        if self.storage.exists(run):
            try:
                return json.loads(self.storage.read_bytes(run)).get("output_metadata")
            except (ValueError, OSError):
                pass
        for uri in self.storage.list_files(self.path, ".parquet"):
            fs, path = self.storage.resolve(uri)
            try:
                found = read_metadata(pq.read_schema(path, filesystem=fs))
            except (pa.ArrowInvalid, OSError):
                continue  # a damaged file (a truncated copy): set aside by _check_files, its rows redone
            if found is not None:  # else not the job's file (a manifest beside the results)
                return found
        return None

    def _recover(self) -> None:
        """Finish the commits a dead run left half done (its marker is written) and discard the
        staged files of units it never committed."""
        staged: dict[str, list[str]] = {}
        for uri in self._staged():
            unit = uri.rsplit("/", 2)[-2]
            staged.setdefault(unit, []).append(uri)
        for unit, uris in staged.items():
            marker = self.markers.get(unit)
            if marker is None:
                for uri in uris:
                    self._delete(uri)
            else:
                self._publish(marker, uris)
            self.recovered += 1
        self.storage.remove_empty_dirs(join(self.path, STAGING_DIR))

    # -- committing -------------------------------------------------------------------------------

    def commit(self, unit: str, seen: Pending) -> Marker:
        """Make a complete unit visible: marker first, then the files; an earlier commit of the unit
        (whose error rows this run redid, or whose manifest rows changed) is replaced. The lease's
        check runs right before the marker, the commit point, and before each move after it: a
        commit cut short there is finished by the next run (the marker names its files)."""
        staged = [staged_uri(self.path, unit, name) for name in sorted(seen.files)]
        old = self.markers.get(unit)
        redo = self._resume.redo(unit)
        kept: list[str] = []
        ok, error, audio_s = int(seen.counts["ok"]), int(seen.counts["error"]), seen.counts["audio_s"]
        sources = int(seen.counts["sources"])
        error_rows = {k: sorted(v) for k, v in seen.error_rows.items()}
        # the read task redid only the error rows' manifest rows (fewer than the unit has), or the
        # whole unit (its rows changed: Resume.todo), which replaces every old row
        partial = redo is not None and seen.unit_rows != self._sizes.get(unit)
        if old is not None and not partial:
            self.replaced += old.error
        if old is not None and partial:
            kept, rewritten, gone = self._without(old, redo, unit)
            staged += rewritten
            self.replaced += gone["error"]
            ok, error = ok + old.ok - gone["ok"], error + old.error - gone["error"]
            audio_s += old.audio_s - gone["audio_s"]
            sources = old.sources
            error_rows.update({k: v for k, v in old.errors_by_manifest_id().items() if k not in redo})
        error_ids = sorted(i for ids in error_rows.values() for i in ids)
        sizes = {name: old.sizes[name] for name in kept if old and name in old.sizes}
        sizes.update({_final_name(u): self._size(u) for u in staged})
        names = sorted(set(kept) | {_final_name(u) for u in staged})
        marker = Marker(
            unit,
            names,
            ok + error,
            ok,
            error,
            round(audio_s, 3),
            error_ids,
            sizes,
            sources,
            error_rows,
            self._ids.get(unit, ""),
        )
        with self._fenced():
            self.storage.write_bytes_atomic(self._marker_uri(unit), marker.encode())
        # the commit point: from here the unit is committed, also if a move below fails (storage down
        # through its retries): the restart's `reopen` then finishes the moves, as the next run would
        self.markers[unit] = marker
        self._committed_now.add(unit)
        self._publish(marker, staged)
        self.storage.remove_empty_dirs(join(self.path, f"{STAGING_DIR}/{unit}"))
        if old is not None:
            for name in set(old.files) - set(names):
                self._delete_if_exists(join(self.path, name))
        return marker

    def _without(
        self, old: Marker, ids: frozenset[str], unit: str
    ) -> tuple[list[str], list[str], dict[str, float]]:
        """Old files of a unit minus the rows of the manifest rows being redone (`ids`: manifest ids;
        with VAD, every segment of such a row) -> (names kept as they are, staged rewrites, what was
        dropped: ok and error rows, audio seconds)."""
        kept, rewritten = [], []
        gone = {"ok": 0, "error": 0, "audio_s": 0.0}
        for name in old.files:
            fs, path = self.storage.resolve(join(self.path, name))
            table = pq.read_table(path, filesystem=fs)
            mask = _of_manifest_rows(table, ids)
            if not pc.any(mask).as_py():
                kept.append(name)
                continue
            dropped = table.filter(mask)
            errors = int(pc.sum(pc.is_valid(dropped["error"])).as_py() or 0)
            gone["error"] += errors
            gone["ok"] += dropped.num_rows - errors
            gone["audio_s"] += float(pc.sum(dropped["duration_s"]).as_py() or 0.0)
            rest = table.filter(pc.invert(mask))
            if rest.num_rows:
                new = part_name(unit, rest["id"].to_pylist())
                uri = staged_uri(self.path, unit, new)
                data = encode_parquet(rest, _compression(path, fs))
                with self._fenced():
                    self.storage.write_bytes_atomic(uri, data)
                rewritten.append(uri)
        return kept, rewritten, gone

    def _size(self, uri: str) -> int:
        fs, path = self.storage.resolve(uri)
        return int(fs.get_file_info(path).size)

    def _publish(self, marker: Marker, staged: list[str]) -> None:
        for uri in staged:
            name = _final_name(uri)
            if name in marker.files:
                self._move(uri, join(self.path, name))
            else:
                self._delete(uri)

    def _delete_if_exists(self, uri: str) -> None:
        if self.storage.exists(uri):
            self._delete(uri)

    def _move(self, src: str, dst: str) -> None:
        with self._fenced():
            self.storage.move(src, dst)

    def _delete(self, uri: str) -> None:
        with self._fenced():
            self.storage.delete(uri)

    def _marker_uri(self, unit: str) -> str:
        return join(self.path, f"{UNITS_DIR}/{unit}.json")

    # -- totals -----------------------------------------------------------------------------------

    def totals(self) -> dict[str, Any]:
        """Rows over the whole output (every committed unit, from their markers)."""
        ok = sum(m.ok for m in self.markers.values())
        error = sum(m.error for m in self.markers.values())
        return {
            "rows": ok + error,
            "ok": ok,
            "error": error,
            "units": len(self.markers),
            "files": sum(len(m.files) for m in self.markers.values()),
            "replaced": self.replaced,
            "recovered_units": self.recovered,
            "corrupt_files_moved": self.corrupt,
            "orphan_files_moved": self.orphans,
        }

    def write_run_json(self, info: dict[str, Any]) -> None:
        self.storage.remove_empty_dirs(join(self.path, STAGING_DIR))  # what commits emptied
        text = json.dumps(redact_data(info), indent=2)
        with self._fenced():
            self.storage.write_bytes_atomic(join(self.path, RUN_FILE), text.encode())


def _of_manifest_rows(table: pa.Table, ids: frozenset[str]) -> pa.ChunkedArray:
    """Which output rows came from the manifest rows `ids`: the row of that id, and the VAD segments
    of it (recording_id is the manifest row's id, the id `<id>-<start cs>-<end cs>`, see prepare.py)."""
    value_set = pa.array(sorted(ids), pa.string())
    mask = pc.is_in(table["id"], value_set=value_set)
    maybe = pc.fill_null(pc.is_in(table["recording_id"], value_set=value_set), False)
    if not pc.any(maybe).as_py():
        return mask
    segment = [
        bool(m) and re.fullmatch(re.escape(r) + r"-\d{7,}-\d{7,}", i) is not None  # 7+: past 27.7 h, 8
        for m, r, i in zip(
            maybe.to_pylist(), table["recording_id"].to_pylist(), table["id"].to_pylist(), strict=True
        )
    ]
    return pc.or_(mask, pa.array(segment))


def _source_of(unit: str) -> str:
    """The source key of a unit's name (manifest.units.unit_name: `<key>-<index>`)."""
    return unit.rsplit("-", 1)[0]


def _final_name(staged: str) -> str:
    return staged.rsplit("/", 1)[-1][: -len(STAGED_SUFFIX)]


def _compression(path: str, fs: Any) -> str:
    """The codec an existing file was written with, so a rewrite keeps it."""
    meta = pq.ParquetFile(path, filesystem=fs).metadata
    if meta.num_row_groups == 0 or meta.num_columns == 0:
        return "zstd"
    codec = meta.row_group(0).column(0).compression.lower()
    return "none" if codec == "uncompressed" else codec
