"""The write stage and the commits of pipeline/writer.py on a local output, outside Ray."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads
import pyarrow.parquet as pq
import pytest

from pipeline.prepare import Span, _segment
from pipeline.schema import MANIFEST_ID, SEGMENT_TOTAL, UNIT, UNIT_ROWS, output_schema
from pipeline.storage import Storage
from pipeline.writer import Output, OutputError, Pending, write_parts

D = 4
SR = 16_000


def segment_rows(spans: list[Span], errors: list[str | None], unit: str, unit_rows: int) -> pa.Table:
    """What reaches the write stage for VAD segments (prepare, then the model): a recording's spans,
    each with the manifest id and the count of segments on its recording's first one."""
    n = len(spans)
    totals = [0] * n
    for s in spans:
        totals[next(j for j in range(n) if spans[j].recording_id == s.recording_id)] += 1
    ok = [e is None for e in errors]
    return pa.table(
        {
            "id": [s.id for s in spans],
            "path": ["long.flac"] * n,
            "error": errors,
            "recording_id": [s.recording_id for s in spans],
            "offset_s": [s.offset_s for s in spans],
            "start_s": [s.start_s for s in spans],
            "end_s": [s.end_s for s in spans],
            "duration_s": pa.array([(s.end_s - s.start_s) for s in spans], pa.float32()),
            "num_frames": pa.array([4 if k else None for k in ok], pa.int32()),
            "embedding": pa.array([[0.5] * D if k else None for k in ok], pa.list_(pa.float32(), D)),
            MANIFEST_ID: [s.recording_id for s in spans],
            UNIT: [unit] * n,
            UNIT_ROWS: [unit_rows] * n,
            SEGMENT_TOTAL: totals,
        }
    )


def stage_and_commit(output: Output, path: str, schema: pa.Schema, rows: pa.Table, unit: str) -> None:
    summaries = write_parts(
        rows,
        output=path,
        schema=schema,
        storage=Storage(),
        compression="zstd",
        max_file_mb=256,
        rows_per_file=2000,
    )
    seen = Pending()
    for s in summaries.to_pylist():
        seen.add(s)
    assert seen.complete
    output.commit(unit, seen)


def test_redoing_a_failed_vad_segment_of_a_span_past_27_hours_replaces_every_segment(tmp_path):
    """A manifest span that starts 100,000 s into a long recording (audio.max_duration_s raised or
    null): its VAD segment ids carry 8-digit centiseconds. A rerun redoes the recording whole when one
    of its segments failed; its earlier segment rows must all go, or the output holds them twice."""
    whole = Span(0, "rec", samples=np.zeros(2 * SR, np.float32), start_s=100_000.0, offset_s=100_000.0)
    spans = _segment(whole, lambda samples: [(0, SR), (SR, 2 * SR)])
    assert [s.id for s in spans] == ["rec-10000000-10000100", "rec-10000100-10000200"]
    # another manifest row of the unit, in the same file: a short clip, one segment
    other = _segment(Span(1, "clip", samples=np.zeros(SR, np.float32)), lambda samples: [(0, SR)])
    unit, path = "a-000000", str(tmp_path / "out")
    schema = output_schema(D, 9, False, pa.schema([]))

    first = Output(Storage(), path)
    first.open("resume", {"schema": 3})
    failed = segment_rows(spans + other, [None, "model: RuntimeError: boom", None], unit, 2)
    stage_and_commit(first, path, schema, failed, unit)

    rerun = Output(Storage(), path)
    rerun.open("resume", {"schema": 3})
    assert rerun.skip().redo(unit) == {"rec"}  # the recording is redone whole
    stage_and_commit(rerun, path, schema, segment_rows(spans, [None, None], unit, 1), unit)

    table = pads.dataset(path, format="parquet").to_table()
    assert sorted(table["id"].to_pylist()) == sorted(s.id for s in spans + other)
    assert table["error"].null_count == table.num_rows
    assert (rerun.totals()["rows"], rerun.totals()["error"]) == (3, 0)


def test_a_truncated_result_file_is_set_aside_also_when_the_fingerprint_is_read_from_it(tmp_path):
    """Without `_run.json` (the run that wrote the output was killed before its end), the output's
    fingerprint is read from a result file. A truncated copy of that file must be set aside and its
    rows redone, as any damaged file is (README), not end the rerun on the file's read error."""
    clips = [
        _segment(Span(i, f"clip{i}", samples=np.zeros(SR, np.float32)), lambda s: [(0, SR)]) for i in range(2)
    ]
    path = str(tmp_path / "out")
    schema = output_schema(D, 9, False, pa.schema([]), {"schema": 3})
    first = Output(Storage(), path)
    first.open("resume", {"schema": 3})
    for i, spans in enumerate(clips):
        unit = f"a-{i:06d}"
        stage_and_commit(first, path, schema, segment_rows(spans, [None], unit, 1), unit)
    assert not (tmp_path / "out" / "_run.json").exists()
    damaged = sorted((tmp_path / "out").glob("part-*.parquet"))[0]
    damaged.write_bytes(damaged.read_bytes()[:100])

    rerun = Output(Storage(), path)
    rerun.open("resume", {"schema": 3})
    assert rerun.corrupt == [damaged.name]
    assert (tmp_path / "out" / "_corrupt" / f"{damaged.name}.set-aside").exists()
    assert len(rerun.skip().units) == 1  # the other unit stays committed; this one is redone
    kept = [s.id for i, spans in enumerate(clips) for s in spans if f"a-{i:06d}" not in damaged.name]
    assert pads.dataset(path, format="parquet").to_table()["id"].to_pylist() == kept


def test_a_unit_whose_manifest_ids_changed_with_its_count_is_not_done(tmp_path):
    """A row inserted before a unit shifts other rows into it, its count unchanged: the digest of its
    ids (run.unit_digests) recorded at the commit tells the rerun that it is not done. A marker
    written before digests existed is compared by its count alone."""
    spans = _segment(Span(0, "clip0", samples=np.zeros(SR, np.float32)), lambda s: [(0, SR)])
    path, unit = str(tmp_path / "out"), "a-000000"
    schema = output_schema(D, 9, False, pa.schema([]), {"schema": 3})
    first = Output(Storage(), path)
    first.open("resume", {"schema": 3})
    first.align({unit: 1}, {unit: "0123456789abcdef"})
    stage_and_commit(first, path, schema, segment_rows(spans, [None], unit, 1), unit)
    assert first.markers[unit].ids == "0123456789abcdef"

    rerun = Output(Storage(), path)
    rerun.open("resume", {"schema": 3})
    rerun.align({unit: 1}, {unit: "0123456789abcdef"})
    assert rerun.skip().done(unit, 1)
    rerun.align({unit: 1}, {unit: "fedcba9876543210"})
    assert not rerun.skip().done(unit, 1) and rerun.skip().redo(unit) is None  # redone whole
    rerun.markers[unit].ids = ""  # as a marker from before digests reads
    rerun.align({unit: 1}, {unit: "fedcba9876543210"})
    assert rerun.skip().done(unit, 1)


def test_units_past_the_end_of_a_source_are_set_aside_unless_input_limit_cut_it(tmp_path):
    """Files removed from a folder of audio end its source before its last committed units, whose rows
    are now in the units before them (redone: other ids) or gone: they are set aside, or those rows
    would be there twice. A source cut by input.limit (not read whole) keeps them, unless its rows
    shifted (a unit of the same count with other ids)."""
    units = ["a-000000", "a-000001", "a-000002"]
    schema = output_schema(D, 9, False, pa.schema([]), {"schema": 3})

    def committed(name):  # three units of one row each, with their digests
        path = str(tmp_path / name)
        out = Output(Storage(), path)
        out.open("resume", {"schema": 3})
        out.align(dict.fromkeys(units, 1), {u: f"digest-{u}" for u in units}, ["a"])
        for k, unit in enumerate(units):
            spans = _segment(Span(0, f"clip{k}", samples=np.zeros(SR, np.float32)), lambda s: [(0, SR)])
            stage_and_commit(out, path, schema, segment_rows(spans, [None], unit, 1), unit)
        return path, {u: out.markers[u].files for u in units}

    def rerun(path, sizes, ids, whole, uncut=None):
        out = Output(Storage(), path)
        out.open("resume", {"schema": 3})
        out.align(sizes, ids, whole, uncut)
        return out

    path, _ = committed("limited")  # input.limit 1: the same first row
    out = rerun(path, {units[0]: 1}, {units[0]: f"digest-{units[0]}"}, [])
    assert set(out.markers) == set(units) and not out.orphans and out.skip().done(units[0], 1)

    path, files = committed("shifted")  # input.limit 1 after the first file was removed
    out = rerun(path, {units[0]: 1}, {units[0]: f"digest-{units[1]}"}, [])
    assert set(out.markers) == {units[0]} and not out.skip().done(units[0], 1)
    assert out.orphans == files[units[1]] + files[units[2]]
    assert not (tmp_path / "shifted" / "_units" / f"{units[1]}.json").exists()
    assert sorted(p.name for p in (tmp_path / "shifted").glob("part-*.parquet")) == files[units[0]]
    assert (tmp_path / "shifted" / "_orphans" / f"{files[units[2]][0]}.set-aside").exists()

    # unit 0 of another count: past the end of a source read whole, set aside
    path, files = committed("whole")
    out = rerun(path, {units[0]: 2}, {units[0]: "other"}, ["a"])
    assert set(out.markers) == {units[0]} and out.orphans == files[units[1]] + files[units[2]]
    # and past input.limit's cut: unit 0 holds other rows even without the limit (a larger
    # rows_per_unit: those of unit 1 too), so the units past it are set aside, or unit 1's row would
    # be in the output twice
    path, files = committed("cut")
    out = rerun(path, {units[0]: 2}, {units[0]: "other"}, [], {units[0]: "other"})
    assert set(out.markers) == {units[0]} and out.orphans == files[units[1]] + files[units[2]]
    # a lower input.limit cutting inside unit 0 (committed with 2 rows; its rows without the limit are
    # the committed ones): the units past it keep their results
    path, files = committed("lower")
    out = Output(Storage(), path)
    out.open("resume", {"schema": 3})
    out.markers[units[0]].sources = 2  # as if committed with 2 rows
    out.align({units[0]: 1}, {units[0]: "first row"}, [], {units[0]: f"digest-{units[0]}"})
    assert set(out.markers) == set(units) and not out.orphans and not out.skip().done(units[0], 1)
    # a shard renamed (source "a" is gone, "b" has its first unit's ids in order): that unit's rows are
    # set aside, as "b" redoes them; units of "a" whose ids no unit has keep their results (a run on
    # a chosen subset of shards)
    path, files = committed("renamed")
    out = rerun(path, {"b-000000": 1}, {"b-000000": f"digest-{units[0]}"}, ["b"])
    assert set(out.markers) == {units[1], units[2]} and out.orphans == files[units[0]]
    assert not out.skip().done("b-000000", 1)


def test_overwrite_deletes_the_outputs_own_files_only(tmp_path):
    """`output.mode: overwrite` replaces this job's output: its result files, markers, staged files and
    `_run.json`. Parquet files of anything else under output.path (the corpus's own manifest when the
    features are written beside it, another run's output in a subfolder) are not this job's to delete."""
    out = tmp_path / "out"
    (out / "earlier-run").mkdir(parents=True)
    manifest = pa.table({"id": ["x"], "path": ["x.wav"]})
    pq.write_table(manifest, out / "manifest.parquet")
    pq.write_table(manifest, out / "earlier-run" / "part-0.parquet")
    spans = _segment(Span(0, "clip", samples=np.zeros(SR, np.float32)), lambda s: [(0, SR)])
    first = Output(Storage(), str(out))
    first.open("resume", {"schema": 3})
    schema = output_schema(D, 9, False, pa.schema([]), {"schema": 3})
    stage_and_commit(first, str(out), schema, segment_rows(spans, [None], "a-000000", 1), "a-000000")
    (out / "_run.json").write_text("{}")
    ours = sorted(p.name for p in out.glob("part-*.parquet"))
    assert len(ours) == 1

    Output(Storage(), str(out)).open("overwrite", {"schema": 3})
    assert not list(out.glob("part-*.parquet")) and not (out / "_run.json").exists()
    assert not list((out / "_units").glob("*.json"))
    assert (out / "manifest.parquet").exists() and (out / "earlier-run" / "part-0.parquet").exists()


def test_the_fingerprint_check_reads_a_result_file_not_a_foreign_parquet_file_beside_it(tmp_path):
    """Without `_run.json` the fingerprint of the output is read from its files: a Parquet file that is
    not the job's (a manifest beside the results, sorted first) has none, and must not make a resume
    with another model pass unchecked."""
    out = tmp_path / "out"
    out.mkdir()
    pq.write_table(pa.table({"id": ["x"], "path": ["x.wav"]}), out / "manifest.parquet")
    written = {"schema": 3, "weights_sha256": "aaaa"}
    spans = _segment(Span(0, "clip", samples=np.zeros(SR, np.float32)), lambda s: [(0, SR)])
    first = Output(Storage(), str(out))
    first.open("resume", written)
    schema = output_schema(D, 9, False, pa.schema([]), written)
    stage_and_commit(first, str(out), schema, segment_rows(spans, [None], "a-000000", 1), "a-000000")
    assert not (out / "_run.json").exists()

    with pytest.raises(OutputError, match="weights_sha256"):
        Output(Storage(), str(out)).open("resume", {"schema": 3, "weights_sha256": "bbbb"})


def test_commits_and_recovery_leave_no_empty_staging_folders(tmp_path):
    """A committed unit's staged files move out of `_staging/<unit>/`; the emptied folder goes with
    them (a run over 100,000 units left as many empty folders). A unit not committed keeps its staged
    files until the next run discards them, and then `_staging/` itself is gone."""
    out = tmp_path / "out"
    schema = output_schema(D, 9, False, pa.schema([]), {"schema": 3})
    first = Output(Storage(), str(out))
    first.open("resume", {"schema": 3})
    rows = {}
    for unit, name in (("a-000000", "clip-a"), ("b-000000", "clip-b")):
        spans = _segment(Span(0, name, samples=np.zeros(SR, np.float32)), lambda s: [(0, SR)])
        rows[unit] = segment_rows(spans, [None], unit, 1)
    stage_and_commit(first, str(out), schema, rows["a-000000"], "a-000000")
    write_parts(
        rows["b-000000"],
        output=str(out),
        schema=schema,
        storage=Storage(),
        compression="zstd",
        max_file_mb=256,
        rows_per_file=2000,
    )  # staged, never committed: the run died here
    first.write_run_json({})
    assert sorted(p.name for p in (out / "_staging").iterdir()) == ["b-000000"]
    assert len(list(out.glob("part-a-000000-*.parquet"))) == 1

    Output(Storage(), str(out)).open("resume", {"schema": 3})
    assert not (out / "_staging").exists()
    assert len(list(out.glob("part-*.parquet"))) == 1


def _write(rows: pa.Table, path: str, schema: pa.Schema, storage: Storage, rows_per_file: int) -> pa.Table:
    """The write stage on `rows` -> its summaries (the files staged)."""
    return write_parts(
        rows,
        output=path,
        schema=schema,
        storage=storage,
        compression="zstd",
        max_file_mb=256,
        rows_per_file=rows_per_file,
    )


def _stage(rows: pa.Table, path: str, schema: pa.Schema, storage: Storage, rows_per_file: int) -> Pending:
    seen = Pending()
    for s in _write(rows, path, schema, storage, rows_per_file).to_pylist():
        seen.add(s)
    assert seen.complete
    return seen


def _second_copy_fails():
    """A fault proxy's rule: the second PUT of an output file into place (S3's copy) fails, so a commit
    fails after its marker and one moved file."""
    copies = []

    def fail_if(method: str, path: str) -> bool:
        if method == "PUT" and "/out/part-" in path:
            copies.append(path)
            return len(copies) >= 2
        return False

    return fail_if


def _four_rows(unit: str) -> tuple[pa.Schema, pa.Table]:
    """The output schema and four one-second rows of `unit`."""
    schema = output_schema(D, 9, False, pa.schema([]), {"schema": 3})
    spans = [
        s
        for i in range(4)
        for s in _segment(Span(0, f"clip-{i}", samples=np.zeros(SR, np.float32)), lambda s: [(0, SR)])
    ]
    return schema, pa.concat_tables([segment_rows([s], [None], unit, 4) for s in spans])


@pytest.mark.s3
def test_a_commit_that_fails_after_its_marker_is_finished_by_the_restart_not_duplicated(s3_server, s3_bucket):
    """S3 fails (through every retry) while a commit moves its files into place, after the marker
    (the commit point) was written and one file was moved. The restart (`reopen`) took the unit for
    uncommitted: it deleted the staged files the marker names and redid the unit, whose rows came
    back cut into other files, so the file moved before the failure stayed beside them: its rows
    twice in the output."""
    from .test_storage import FaultProxy

    _, bucket = s3_bucket
    second_copy_fails = _second_copy_fails()
    unit = "u-000000"
    schema, rows = _four_rows(unit)
    with FaultProxy(s3_server, fail_if=second_copy_fails) as proxy:
        storage = Storage(endpoint_url=proxy.url, retry_backoff_s=0.01, retry_backoff_max_s=0.02)
        path = f"s3://{bucket}/out"
        out = Output(storage, path)
        out.open("resume", {"schema": 3})
        seen = _stage(rows, path, schema, storage, rows_per_file=2)  # two files
        with pytest.raises(OSError):
            out.commit(unit, seen)
        proxy.fail_if = None  # storage is back
        out.reopen()  # the restart on what is left
        if not out.skip().done(unit, 4):  # the next attempt redoes the unit: its rows in one file
            out.commit(unit, _stage(rows, path, schema, storage, rows_per_file=4))
        fs, root = storage.resolve(path)
        ids = pads.dataset(root, filesystem=fs, format="parquet").to_table(columns=["id"])["id"].to_pylist()
    assert sorted(ids) == sorted(rows["id"].to_pylist())  # every row once
    assert out.totals()["rows"] == 4


@pytest.mark.s3
@pytest.mark.slow
def test_a_unit_committed_by_a_commit_that_then_failed_counts_for_the_run(
    ray_session, s3_server, s3_bucket, tmp_path
):
    """The driver's loop (`run._execute`) over the write stage's summaries: the commit's marker
    lands, then a move fails through every retry. The unit is committed (the restart finishes its
    moves and does not redo it), so this run's counts in _run.json, and the restart loop's measure
    of progress, must include it: they left it out (its rows counted as skipped)."""
    import io

    import ray

    from pipeline.interrupt import Stop
    from pipeline.lease import acquire
    from pipeline.progress import Progress
    from pipeline.run import RunFailed, Tally, _execute

    from .test_storage import FaultProxy

    _, bucket = s3_bucket
    second_copy_fails = _second_copy_fails()
    unit = "u-000000"
    schema, rows = _four_rows(unit)
    lease = acquire(Storage(), str(tmp_path / "lease"), ttl_s=60)
    with FaultProxy(s3_server, fail_if=second_copy_fails) as proxy:
        storage = Storage(endpoint_url=proxy.url, retry_backoff_s=0.01, retry_backoff_max_s=0.02)
        path = f"s3://{bucket}/out"
        out = Output(storage, path)
        out.open("resume", {"schema": 3})
        summaries = _write(rows, path, schema, storage, rows_per_file=2)
        tally, stream = Tally(), io.StringIO()
        progress = Progress(4, 60, stream)
        with pytest.raises(RunFailed):
            _execute(ray.data.from_arrow(summaries), out, tally, progress, lease, Stop(), set(), stream)
        proxy.fail_if = None
        out.reopen()
    lease.release()
    assert out.skip().done(unit, 4)  # committed: the restart leaves it alone
    assert (tally.units, tally["ok"], tally["sources"]) == (1, 4, 4)
    assert (progress.rows, progress.ok) == (4, 4)


def _committed_output(tmp_path) -> tuple[str, str]:
    """An output with one committed unit; returns its path and the unit's marker file."""
    spans = _segment(Span(0, "clip0", samples=np.zeros(SR, np.float32)), lambda s: [(0, SR)])
    path, unit = str(tmp_path / "out"), "a-000000"
    schema = output_schema(D, 9, False, pa.schema([]), {"schema": 3})
    first = Output(Storage(), path)
    first.open("resume", {"schema": 3})
    first.align({unit: 1}, {unit: "0123456789abcdef"})
    stage_and_commit(first, path, schema, segment_rows(spans, [None], unit, 1), unit)
    return path, str(tmp_path / "out" / "_units" / f"{unit}.json")


def test_a_marker_with_a_field_this_version_does_not_know_is_read(tmp_path):
    """A newer version may add fields to the markers (as `ids` was added): an older version resuming
    the output reads the fields it knows and ignores the others, instead of failing the resume."""
    import json
    from pathlib import Path

    path, marker = _committed_output(tmp_path)
    data = json.loads(Path(marker).read_text())
    data["added_later"] = {"anything": [1, 2]}
    Path(marker).write_text(json.dumps(data))

    rerun = Output(Storage(), path)
    rerun.open("resume", {"schema": 3})
    rerun.align({"a-000000": 1}, {"a-000000": "0123456789abcdef"})
    assert rerun.markers["a-000000"].rows == data["rows"] == 1
    assert rerun.skip().done("a-000000", 1)


@pytest.mark.parametrize(
    "damage",
    [
        lambda text: text[: len(text) // 2],  # truncated
        lambda text: "\x00\x17garbage",
        lambda text: "[1, 2]",  # JSON, not an object
        lambda text: text.replace('"rows":1', '"rows":"1"'),  # a known field of another type
        lambda text: text.replace('"files":', '"other_files":'),  # a required field missing
    ],
    ids=["truncated", "garbage", "not-an-object", "wrong-type", "missing-field"],
)
def test_a_damaged_marker_is_an_unusable_output_naming_the_marker(tmp_path, damage):
    """Markers are written atomically: a damaged one was damaged outside the job (a partial copy);
    the rerun refuses the output naming the marker file rather than guess what the unit holds."""
    from pathlib import Path

    path, marker = _committed_output(tmp_path)
    text = Path(marker).read_text()
    assert '"rows":1' in text and '"files":' in text  # the replacements above apply
    Path(marker).write_text(damage(text))
    with pytest.raises(OutputError, match=r"_units/a-000000\.json"):
        Output(Storage(), path).open("resume", {"schema": 3})
