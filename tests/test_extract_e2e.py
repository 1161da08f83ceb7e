"""The extraction job end to end through jobs/extract.py on real generated speech."""

import json
import subprocess
import sys
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as pads
import pytest
import soundfile as sf
import torch
import torchaudio

from pipeline.cli import extract
from pipeline.model import load_bundle

from .conftest import cpu_runs_natively

ROOT = Path(__file__).resolve().parent.parent

# (file, sample rate, channels, wav encoding)
CLIPS = [
    ("calm/a.wav", 16000, 1, "pcm16"),
    ("calm/b.wav", 44100, 2, "pcm24"),
    ("loud/c.wav", 8000, 1, "float32"),
    ("loud/d.flac", 22050, 1, None),
    ("e.ogg", 48000, 2, None),
    ("e.mp3", 16000, 1, None),
    ("f.opus", 48000, 1, None),
    ("g.wav", 32000, 1, "pcm32"),
]
TEXTS = [
    "I am so happy today",
    "leave me alone",
    "what a surprise this is",
    "the weather is fine",
    "no no no",
]


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from pipeline.testing.samples import synthesize

    d = tmp_path_factory.mktemp("corpus")
    rows = []
    for i, (name, sr, ch, enc) in enumerate(CLIPS):
        synthesize(
            TEXTS[i % len(TEXTS)],
            d / name,
            pitch=30 + 7 * i,
            speed=140 + 5 * i,
            sample_rate=sr,
            channels=ch,
            encoding=enc,
        )
        rows.append((f"utt{i:02d}", name, TEXTS[i % len(TEXTS)], f"spk{i % 3}", i * 1.5))
    lines = ["utt_id,audio_filepath,text,speaker,weight"] + [f"{a},{b},{c},{d},{e}" for a, b, c, d, e in rows]
    (d / "manifest.csv").write_text("\n".join(lines) + "\n")
    return d


def write_config(tmp_path, manifest, model_dir, out, extra=""):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n"
        f"model:\n  source: {model_dir}\n  device: cpu\n  dtype: float32\n  batch_seconds: 8\n"
        f"audio:\n  resampler: torchaudio\n"  # reference_clip resamples as FunASR does
        f"output:\n  path: {out}\n  frames: true\n" + extra
    )
    return cfg


def reference_clip(path: Path) -> np.ndarray:
    """Independent decode: soundfile -> mean over channels -> torchaudio resample (FunASR's recipe)."""
    x, sr = sf.read(str(path), dtype="float32", always_2d=True)
    x = torch.from_numpy(x.mean(axis=1))
    if sr != 16000:
        x = torchaudio.functional.resample(x, sr, 16000)
    return x.numpy()


def test_mixed_corpus_every_row_once_and_equal_to_single_inference(
    ray_session, corpus, tiny_model_dir, tmp_path
):
    out = tmp_path / "out"
    cfg = write_config(tmp_path, corpus / "manifest.csv", tiny_model_dir, out)
    assert extract.main(["--config", str(cfg)]) == 0

    con = duckdb.connect()
    rows = con.sql(f"SELECT * FROM read_parquet('{out}/**/*.parquet') ORDER BY id").fetchall()
    cols = [d[0] for d in con.sql(f"SELECT * FROM read_parquet('{out}/**/*.parquet') LIMIT 0").description]
    table = [dict(zip(cols, r, strict=True)) for r in rows]
    assert [r["id"] for r in table] == [f"utt{i:02d}" for i in range(len(CLIPS))]
    assert all(r["error"] is None for r in table), [r["error"] for r in table]
    for i, r in enumerate(table):
        name, sr, ch, _ = CLIPS[i]
        assert (r["sample_rate"], r["channels"]) == (sr, ch)
        assert r["path"] == str(corpus / name)
        assert (r["text"], r["speaker"], r["weight"]) == (TEXTS[i % len(TEXTS)], f"spk{i % 3}", i * 1.5)
        n = round(r["duration_s"] * 16000)
        assert r["num_frames"] == (n - 400) // 320 + 1 == len(r["frames"])

    bundle = load_bundle(tiny_model_dir)
    ds = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    for r in ds:
        i = int(r["id"][3:])
        clip = reference_clip(corpus / CLIPS[i][0])
        with torch.no_grad():
            ref = bundle.model(torch.from_numpy(clip)[None])
        assert r["num_frames"] == ref.frames.shape[1]
        np.testing.assert_allclose(np.array(r["embedding"]), ref.embedding[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(np.array(r["scores"]), ref.scores[0].numpy(), atol=1e-4)
        np.testing.assert_allclose(
            np.array(r["frames"], dtype=np.float32),
            ref.frames[0].numpy(),
            atol=2e-3 * float(ref.frames.abs().max()),
        )
        assert r["label"] == bundle.labels[int(ref.scores[0].argmax())]

    run = json.loads((out / "_run.json").read_text())
    assert run["rows"] == {"input": len(CLIPS), "ok": len(CLIPS), "error": 0, "skipped": 0}
    assert run["model"]["weights_sha256"] == bundle.weights_sha256
    assert run["audio_hours"] > 0 and run["throughput"]["rows_per_s"] > 0
    assert sum(run["rows_per_model_node"].values()) == len(CLIPS)
    md = pads.dataset(str(out), format="parquet").schema.metadata[b"emotion2vec_pipeline"]
    meta = json.loads(md)
    assert meta["embed_dim"] == 48 and meta["frame_rate"] == 50 and meta["labels"][0] == "angry"
    assert "torchaudio" in meta["resampler"]


def test_cli_embedded_ray_resume_and_summary(corpus, tiny_model_dir, tmp_path):
    """The real command line, with no cluster: it starts its own Ray; a rerun skips finished ids."""
    out = tmp_path / "out"
    cfg = write_config(tmp_path, corpus / "manifest.csv", tiny_model_dir, out, "ray:\n  num_cpus: 2\n")
    cmd = [
        sys.executable,
        str(ROOT / "jobs" / "extract.py"),
        "--config",
        str(cfg),
        "--set",
        "output.frames=false",
    ]
    # bfloat16 runs only where the CPU has hardware for it; elsewhere the job warns and runs float32
    first = subprocess.run(
        [*cmd, "--set", "model.dtype=bfloat16"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert first.returncode == 0, first.stderr[-3000:]
    assert f"{len(CLIPS)}/{len(CLIPS)} rows" in first.stderr and "done in" in first.stderr
    ran = "bfloat16" if cpu_runs_natively(torch.bfloat16) else "float32"
    run = json.loads((out / "_run.json").read_text())
    assert run["rows_per_model_runtime"] == {f"cpu {ran}": len(CLIPS)} and run["model"]["dtype"] == ran
    assert ("model.dtype bfloat16: this CPU has no native bfloat16" in first.stderr) == (ran == "float32")
    # a resume must run the dtype that ran first: the fingerprint holds it (bfloat16 on a CPU with
    # bf16 hardware, float32 elsewhere), and an output is never a mix of the two
    if ran == "bfloat16":
        mixed = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
        assert mixed.returncode == 2 and "dtype" in mixed.stderr, mixed.stderr[-3000:]
    second = subprocess.run(
        [*cmd, "--set", f"model.dtype={ran}"], capture_output=True, text=True, timeout=300, cwd=tmp_path
    )
    assert second.returncode == 0, second.stderr[-3000:]
    run = json.loads((out / "_run.json").read_text())
    assert run["rows"]["skipped"] == len(CLIPS) and run["rows"]["ok"] == 0
    n = duckdb.sql(f"SELECT count(*), count(DISTINCT id) FROM read_parquet('{out}/**/*.parquet')").fetchall()[
        0
    ]
    assert n == (len(CLIPS), len(CLIPS))


def test_bad_config_and_duplicate_ids_exit_nonzero_naming_the_problem(
    corpus, tiny_model_dir, tmp_path, capsys
):
    cfg = write_config(tmp_path, corpus / "manifest.csv", tiny_model_dir, tmp_path / "o", "  colour: blue\n")
    assert extract.main(["--config", str(cfg)]) == 2
    assert "output.colour: unknown key" in capsys.readouterr().err

    dup = tmp_path / "dup.csv"
    dup.write_text("id,path\nx1,a.wav\nx2,b.wav\nx1,c.wav\n")
    cfg = write_config(tmp_path, dup, tiny_model_dir, tmp_path / "o")
    assert extract.main(["--config", str(cfg)]) == 2
    assert "duplicate ids" in capsys.readouterr().err and not (tmp_path / "o").exists()

    cfg = write_config(tmp_path, corpus / "manifest.csv", tmp_path / "no-model", tmp_path / "o")
    assert extract.main(["--config", str(cfg)]) == 2
    assert "model.source" in capsys.readouterr().err
