"""The CPU stage on its own (no Ray, but for the poison guard): spans, segment ids and the span columns,
with a segmenter whose answer is fixed so that every expected value below is worked out by hand."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest
import soundfile as sf

from pipeline import prepare
from pipeline.prepare import prepare_block
from pipeline.schema import SPAN_END, WAVEFORM
from pipeline.storage import Storage


def fixed_segments(samples: np.ndarray) -> list[tuple[int, int]]:
    """Speech at samples [8000, 24000) and [40000, 72000) of anything long enough; silence has none."""
    if not samples.any():
        return []
    return [(a, b) for a, b in ((8000, 24000), (40000, 72000)) if b <= len(samples)]


def test_segments_get_kaldi_style_ids_and_the_manifest_span_stays_in_offset_s(tmp_path):
    rng = np.random.default_rng(0)
    speech = (0.1 * rng.standard_normal(5 * 16000)).astype(np.float32)  # 5 s at 16 kHz
    sf.write(str(tmp_path / "talk.wav"), speech, 16000, subtype="FLOAT")
    sf.write(str(tmp_path / "quiet.wav"), np.zeros(16000, np.float32), 16000, subtype="FLOAT")
    talk, quiet = str(tmp_path / "talk.wav"), str(tmp_path / "quiet.wav")
    block = pa.table(
        {
            "id": ["call", "span", "quiet"],
            "path": [talk, talk, quiet],
            "recording_id": [None, "talk", None],
            "offset_s": pa.array([None, 1.0, None], pa.float64()),  # "span" is [1.0, 4.0) of talk.wav
            SPAN_END: pa.array([None, 4.0, None], pa.float64()),
        }
    )
    (out,) = prepare_block(block, storage=Storage(), segmenter=fixed_segments)
    rows = out.to_pylist()
    got = [(r["id"], r["recording_id"], r["offset_s"], r["start_s"], r["end_s"]) for r in rows]
    assert got == [
        ("call-0000050-0000150", "call", None, 0.5, 1.5),  # 8000 / 16000 s = 50 cs
        ("call-0000250-0000450", "call", None, 2.5, 4.5),
        # the span's own samples [16000, 64000): segments 1.0 + 0.5 .. 1.0 + 1.5 s, the second too long
        ("span-0000150-0000250", "span", 1.0, 1.5, 2.5),
        ("quiet", "quiet", None, None, None),  # no speech: one row, nothing to run
    ]
    assert all(r["error"] is None for r in rows)
    np.testing.assert_array_equal(rows[0][WAVEFORM], speech[8000:24000])
    np.testing.assert_array_equal(rows[2][WAVEFORM], speech[24000:40000])
    assert rows[3][WAVEFORM] is None and rows[3]["duration_s"] == 1.0


def test_a_span_without_speech_has_the_duration_of_the_span_not_of_its_file(tmp_path):
    """README: `duration_s` is the decoded duration "of the span, for spans". A manifest span in which
    the VAD finds no speech is still one row; its duration (and the run's audio hours) is the span's."""
    sf.write(str(tmp_path / "quiet.wav"), np.zeros(60 * 16000, np.float32), 16000, subtype="FLOAT")
    block = pa.table(
        {
            "id": ["span"],
            "path": [str(tmp_path / "quiet.wav")],
            "offset_s": pa.array([10.0], pa.float64()),  # [10.0, 12.5) of a 60 s file
            SPAN_END: pa.array([12.5], pa.float64()),
        }
    )
    (out,) = prepare_block(block, storage=Storage(), segmenter=fixed_segments)
    (row,) = out.to_pylist()
    assert (row["id"], row["error"], row["offset_s"], row["start_s"]) == ("span", None, 10.0, None)
    assert row[WAVEFORM] is None and row["duration_s"] == 2.5


def test_a_span_that_cannot_be_cut_reports_what_of_it_lies_in_the_audio_not_the_files_duration(tmp_path):
    """An error row of a span (a diariser turn shorter than 25 ms, a span past the end of a truncated
    file) has the decoded duration of the span (README), not its file's: 60 s for each such row of a
    60 s file also went into the run's audio hours."""
    sf.write(str(tmp_path / "call.wav"), np.full(60 * 16000, 0.1, np.float32), 16000, subtype="FLOAT")
    block = pa.table(
        {
            "id": ["short", "past", "tail"],
            "path": [str(tmp_path / "call.wav")] * 3,
            "offset_s": pa.array([5.0, 61.0, 59.99], pa.float64()),
            SPAN_END: pa.array([5.02, 62.0, None], pa.float64()),
        }
    )
    (out,) = prepare_block(block, storage=Storage())
    rows = out.to_pylist()
    assert all("AudioError" in r["error"] for r in rows), [r["error"] for r in rows]
    assert [r["sample_rate"] for r in rows] == [16000] * 3  # the file's, as for any row of it
    # 320 samples of [5.0, 5.02); nothing of [61, 62); the last 160 samples of the file
    assert [r["duration_s"] for r in rows] == [np.float32(0.02), 0.0, np.float32(0.01)]


def test_without_segmentation_offset_and_start_are_the_manifest_span(tmp_path):
    x = np.linspace(-0.5, 0.5, 3 * 16000, dtype=np.float32)
    sf.write(str(tmp_path / "a.wav"), x, 16000, subtype="FLOAT")
    block = pa.table(
        {
            "id": ["whole", "part"],
            "path": [str(tmp_path / "a.wav")] * 2,
            "offset_s": pa.array([None, 0.25], pa.float64()),
            SPAN_END: pa.array([None, 2.0], pa.float64()),
        }
    )
    (out,) = prepare_block(block, storage=Storage())
    rows = out.to_pylist()
    assert [(r["offset_s"], r["start_s"], r["end_s"]) for r in rows] == [
        (None, None, None),
        (0.25, 0.25, 2.0),
    ]
    np.testing.assert_array_equal(rows[1][WAVEFORM], x[4000:32000])


def test_blocks_are_cut_by_decoded_size_and_keep_every_sample(tmp_path):
    """block_mb 0.1 holds 26,214 float32 samples (1.64 s at 16 kHz): a block is emitted as soon as it
    reaches that. A 70 s recording is longer than a block's buffer and its slack (60 s): it still
    arrives whole. Expected samples are what soundfile reads from the 16 kHz float files."""
    rng = np.random.default_rng(1)
    lengths = {"a": 32_000, "long": 70 * 16_000, "c": 16_000, "d": 8_000}
    written = {}
    for name, n in lengths.items():
        x = (0.1 * rng.standard_normal(n)).astype(np.float32)
        sf.write(str(tmp_path / f"{name}.wav"), x, 16000, subtype="FLOAT")
        written[name], _ = sf.read(str(tmp_path / f"{name}.wav"), dtype="float32")
    ids = ["a", "long", "c", "missing", "d"]
    block = pa.table({"id": ids, "path": [str(tmp_path / f"{i}.wav") for i in ids], "recording_id": ids})
    blocks = list(prepare_block(block, storage=Storage(), block_mb=0.1))
    # a (32,000) fills the first; long the second; c + the error row + d (24,000) stay under a block
    assert [b["id"].to_pylist() for b in blocks] == [["a"], ["long"], ["c", "missing", "d"]]
    rows = {r["id"]: r for b in blocks for r in b.to_pylist()}
    for name in lengths:
        np.testing.assert_array_equal(np.asarray(rows[name][WAVEFORM], np.float32), written[name])
        assert rows[name]["duration_s"] == lengths[name] / 16000
    assert rows["missing"][WAVEFORM] is None and rows["missing"]["error"].startswith("fetch: ")


def _values_address(table: pa.Table) -> int:
    return table[WAVEFORM].chunk(0).values.buffers()[1].address


def test_a_block_buffer_is_written_again_only_after_arrow_released_it(tmp_path, monkeypatch):
    """Block buffers come from a per-process pool (a fresh one costs the kernel's zeroing of its
    pages). A block still held (by Ray before it has stored it, or by a caller) keeps its samples
    while later blocks are made, and its buffer stays out of the pool; once Arrow released it, the
    buffer is back in the pool and the next block is made in it. Expected samples are what soundfile
    reads from the files."""
    pool = prepare._Pool(keep=2)
    monkeypatch.setattr(prepare, "_POOL", pool)
    rng = np.random.default_rng(2)
    ids = [f"c{i}" for i in range(5)]
    written = {}
    for i in ids:
        x = (0.1 * rng.standard_normal(16_000)).astype(np.float32)
        sf.write(str(tmp_path / f"{i}.wav"), x, 16000, subtype="FLOAT")
        written[i], _ = sf.read(str(tmp_path / f"{i}.wav"), dtype="float32")
    block = pa.table({"id": ids, "path": [str(tmp_path / f"{i}.wav") for i in ids], "recording_id": ids})

    def check(table: pa.Table) -> None:
        for row in table.to_pylist():
            np.testing.assert_array_equal(np.asarray(row[WAVEFORM], np.float32), written[row["id"]])

    def pooled() -> set[int]:
        return {b.ctypes.data for b in pool.free}

    held = list(prepare_block(block, storage=Storage(), block_mb=0.05))  # 13,107 samples: one file each
    assert [t["id"].to_pylist() for t in held] == [[i] for i in ids]
    for t in held:  # every block intact after the later ones were made
        check(t)
    assert not pooled() & {_values_address(t) for t in held}
    last = [_values_address(t) for t in held[-2:]]
    del t
    while held:
        held.pop()  # c4 and c3 are released first: the pool keeps those two and frees the others
    assert pooled() == set(last)

    for t in prepare_block(block, storage=Storage(), block_mb=0.05):
        check(t)
        assert _values_address(t) in set(last)
        assert _values_address(t) not in pooled()
        del t  # released before the next block is made


def test_a_buffer_outgrown_by_a_long_recording_goes_back_to_the_pool(monkeypatch):
    """A recording longer than a block's slack grows the buffer; the one it replaced was never
    exported, so it is kept for the next block instead of freed. The samples survive the growth."""
    pool = prepare._Pool(keep=2)
    monkeypatch.setattr(prepare, "_POOL", pool)
    samples = prepare._Samples(budget=100)
    small = samples.add(np.ones(50, np.float32))
    outgrown = samples._buf.ctypes.data
    long = np.arange(prepare._Samples.SLACK + 200, dtype=np.float32)
    samples.add(long)
    assert [b.ctypes.data for b in pool.free] == [outgrown]
    values = samples.take().to_numpy()
    np.testing.assert_array_equal(values[:small], np.ones(50, np.float32))
    np.testing.assert_array_equal(values[small:], long)


@pytest.mark.slow
def test_a_row_that_killed_its_decode_worker_keeps_the_span_the_manifest_gave(tmp_path, ray_session):
    """A row in flight when a decode attempt died becomes an error row on the retry (poison.py). Like
    every other error row of a span (a fetch or cut failure) it keeps `offset_s`, `start_s`, `end_s`
    as the manifest gave them (README, Output): a diariser turn's error row said nothing of when."""
    from pipeline.poison import Guard, forget

    sf.write(str(tmp_path / "call.wav"), np.full(4 * 16000, 0.1, np.float32), 16000, subtype="FLOAT")
    block = pa.table(
        {
            "id": ["ok", "turn"],
            "path": [str(tmp_path / "call.wav")] * 2,
            "recording_id": ["call", "call"],
            "offset_s": pa.array([0.5, 1.25], pa.float64()),
            SPAN_END: pa.array([1.0, 2.5], pa.float64()),
        }
    )
    ns = "test-prepare-poisoned-span"
    Guard("decode", ["ok", "turn"], ns)  # a first attempt ...
    Guard("decode", ["ok", "turn"], ns).before("turn")  # ... and a retry that died on "turn"
    try:
        (out,) = prepare_block(block, storage=Storage(), poison_scope=ns)
    finally:
        forget(ns)
    rows = out.to_pylist()
    error = rows[1]["error"]
    assert rows[0]["error"] is None and error.startswith("decode: WorkerCrashed: "), error
    assert [(r["recording_id"], r["offset_s"], r["start_s"], r["end_s"]) for r in rows] == [
        ("call", 0.5, 0.5, 1.0),
        ("call", 1.25, 1.25, 2.5),
    ]


def test_audio_bytes_are_not_copied_once_per_speech_segment(tmp_path):
    """Audio carried in the manifest (a Hugging Face Parquet shard) split by voice activity: the rows
    of a block were taken, one per segment, before the private audio bytes were dropped, so the
    recording's bytes were copied once per segment (an hour with 500 segments: tens of GB, and the
    decode worker killed). Run in a fresh process for a clean peak of Arrow's memory pool."""
    import subprocess
    import sys
    import textwrap
    from pathlib import Path

    code = textwrap.dedent(
        """
        import io

        import numpy as np
        import pyarrow as pa
        import soundfile as sf

        from pipeline.prepare import prepare_block
        from pipeline.schema import AUDIO_BYTES
        from pipeline.storage import Storage

        x = (0.1 * np.random.default_rng(0).standard_normal(60 * 16000)).astype(np.float32)
        buf = io.BytesIO()
        sf.write(buf, x, 16000, format="WAV", subtype="PCM_16")  # 1.9 MB
        block = pa.table(
            {"id": ["rec"], "path": pa.array([None], pa.string()), AUDIO_BYTES: [buf.getvalue()]}
        )
        pool = pa.default_memory_pool()
        before = pool.max_memory()
        segments = lambda s: [(k * 9600, k * 9600 + 8000) for k in range(100)]  # 100 of 0.5 s
        (out,) = prepare_block(block, storage=Storage(), segmenter=segments)
        assert out.num_rows == 100 and AUDIO_BYTES not in out.column_names
        print((pool.max_memory() - before) / 2**20)
        """
    )
    root = Path(__file__).resolve().parents[1]
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, cwd=root)
    assert done.returncode == 0, done.stderr
    peak_mb = float(done.stdout.split()[-1])
    # the block's own samples (100 x 8000 float32: 3 MB) and columns; 100 copies of the bytes: 190 MB
    assert peak_mb < 40, f"Arrow's pool grew by {peak_mb:.0f} MB for a 1.9 MB recording"
