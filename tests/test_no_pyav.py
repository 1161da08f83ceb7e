"""A node without PyAV: wav / flac / ogg / mp3 still decode (libsndfile), a container becomes an error
row naming the missing package, and nothing fails at import. Real files (espeak-ng speech, the ffmpeg
CLI); the decode stage runs in a child process whose importer refuses `av`, as on a node without it."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from pipeline.testing.samples import synthesize

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("ffmpeg") is None, reason="needs the ffmpeg CLI (make sysdeps)")

CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    class NoPyAV(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name == "av" or name.startswith("av."):
                raise ModuleNotFoundError("No module named 'av'", name="av")
            return None

    sys.meta_path.insert(0, NoPyAV())
    import pyarrow as pa
    from pipeline.prepare import prepare_block
    from pipeline.storage import Storage

    paths = sys.argv[1:]
    block = pa.table({"id": [p.rsplit("/", 1)[-1] for p in paths], "path": paths})
    (out,) = prepare_block(block, storage=Storage())
    rows = [{k: r[k] for k in ("id", "error", "duration_s", "sample_rate")} for r in out.to_pylist()]
    print(json.dumps({"rows": rows, "av_imported": "av" in sys.modules}))
    """
)


def ffmpeg(*args: str | Path) -> None:
    subprocess.run(["ffmpeg", "-nostdin", "-v", "error", "-y", *map(str, args)], check=True)


def test_without_pyav_sndfile_formats_decode_and_a_container_is_an_error_row(tmp_path):
    wav = synthesize("testing one two three", tmp_path / "speech.wav", sample_rate=16000)
    ffmpeg("-i", wav, "-c:a", "flac", tmp_path / "speech.flac")
    ffmpeg("-i", wav, "-ar", "48000", "-c:a", "libvorbis", tmp_path / "speech.ogg")
    ffmpeg("-i", wav, "-ar", "48000", "-c:a", "libmp3lame", tmp_path / "speech.mp3")
    ffmpeg("-i", wav, "-ar", "48000", "-c:a", "aac", tmp_path / "speech.mp4")
    names = ["speech.wav", "speech.flac", "speech.ogg", "speech.mp3", "speech.mp4"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    child = subprocess.run(
        [sys.executable, "-c", CHILD, *(str(tmp_path / n) for n in names)],
        capture_output=True,
        text=True,
        env=env,
        timeout=120,
    )
    assert child.returncode == 0, child.stderr[-3000:]
    got = json.loads(child.stdout.strip().splitlines()[-1])
    rows = {r["id"]: r for r in got["rows"]}
    assert got["av_imported"] is False
    for name in names[:4]:
        assert rows[name]["error"] is None, rows[name]
        assert 0.5 < rows[name]["duration_s"] < 5, rows[name]
    assert rows["speech.ogg"]["sample_rate"] == rows["speech.mp3"]["sample_rate"] == 48000
    error = rows["speech.mp4"]["error"]
    assert error.startswith("decode: AudioError: ") and str(tmp_path / "speech.mp4") in error, error
    assert "PyAV is not installed" in error and "pip install av" in error, error
    assert rows["speech.mp4"]["duration_s"] is None
