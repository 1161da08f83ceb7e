"""Corpora as users really have them, through jobs/extract.py: every manifest row in the output
exactly once, or a clear exit 2 naming the files. (TSV transcripts with leading quotes, one stem in
two formats, Windows text files, HF shards without ids, VAD segments that fail in the model.)"""

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.dataset as pads
import pytest
import soundfile as sf

from pipeline.cli import extract
from pipeline.model import load_bundle

from .test_corpora import assert_model_equal, decoded_ref

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def speech(tmp_path_factory):
    """Three spoken sentences, s0.wav .. s2.wav (espeak-ng + sox)."""
    from pipeline.testing.samples import synthesize

    d = tmp_path_factory.mktemp("speech")
    for i, text in enumerate(["oh no not again", "fine thanks", "he said stop twice"]):
        synthesize(text, d / f"s{i}.wav", pitch=40 + 10 * i, sample_rate=22050)
    return d


def job(tmp_path, manifest, model_dir, extra="", name="out"):
    out = tmp_path / name
    cfg = tmp_path / f"{name}.yaml"
    cfg.write_text(
        f"input:\n  manifest: {manifest}\n"
        f"model:\n  source: {model_dir}\n  device: cpu\n  dtype: float32\n"
        f"output:\n  path: {out}\n  max_error_fraction: 1.0\n"
        # the references resample as FunASR does (torchaudio), not with the job's default (soxr)
        f"audio:\n  resampler: torchaudio\n" + extra
    )
    return cfg, out


def rows_once(out) -> dict[str, dict]:
    rows = pads.dataset(str(out), format="parquet").to_table().to_pylist()
    by_id = {r["id"]: r for r in rows}
    assert len(by_id) == len(rows), "an id occurs twice in the output"
    return by_id


def test_tsv_transcripts_with_leading_quotes_keep_every_row(ray_session, tiny_model_dir, speech, tmp_path):
    texts = ['"Oh no, not again', "fine, thanks", 'he said "stop" twice', '"', "the end"]
    lines = ["id\tpath\ttext"] + [f"u{i}\t{speech / f's{i % 3}.wav'}\t{t}" for i, t in enumerate(texts)]
    (tmp_path / "dialogue.tsv").write_text("\n".join(lines) + "\n")
    cfg, out = job(tmp_path, tmp_path / "dialogue.tsv", tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    rows = rows_once(out)
    assert sorted(rows) == [f"u{i}" for i in range(len(texts))]
    assert [rows[f"u{i}"]["text"] for i in range(len(texts))] == texts
    assert all(r["error"] is None for r in rows.values())


def test_tsv_whose_rows_disagree_with_its_lines_exits_2_naming_the_file(
    ray_session,
    tiny_model_dir,
    speech,
    tmp_path,
    capsys,
):
    # an old Mac line end (CR) inside the file: the parser sees a row the line count does not
    data = f"id\tpath\nu0\t{speech / 's0.wav'}\ru1\t{speech / 's1.wav'}\n".encode()
    (tmp_path / "mixed.tsv").write_bytes(data)
    cfg, out = job(tmp_path, tmp_path / "mixed.tsv", tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "mixed.tsv: 2 rows parsed from 1 data lines" in err


def test_same_stem_in_an_audio_folder_and_duplicates_across_shards(
    ray_session,
    tiny_model_dir,
    speech,
    tmp_path,
    capsys,
):
    folder = tmp_path / "takes"
    folder.mkdir()
    x, sr = sf.read(str(speech / "s0.wav"), dtype="float32")
    sf.write(str(folder / "take1.wav"), x, sr)
    sf.write(str(folder / "take1.flac"), x[: len(x) // 2], sr)
    shutil.copy(speech / "s1.wav", folder / "take2.wav")
    cfg, out = job(tmp_path, folder, tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    rows = rows_once(out)
    assert sorted(rows) == ["take1.flac", "take1.wav", "take2"]
    assert rows["take1.flac"]["duration_s"] == pytest.approx(rows["take1.wav"]["duration_s"] / 2, abs=1e-3)

    shards = tmp_path / "shards"
    shards.mkdir()
    for k, ids in enumerate((["a", "b", "dup"], ["c", "dup"])):
        text = "".join(json.dumps({"id": i, "path": str(speech / "s0.wav")}) + "\n" for i in ids)
        (shards / f"part-{k}.jsonl").write_text(text)
    cfg, out = job(tmp_path, shards, tiny_model_dir, name="dups")
    assert extract.main(["--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "row 3 of" in err and "part-0.jsonl" in err and "row 2 of" in err and "part-1.jsonl" in err
    assert not out.exists() or not list(out.glob("*.parquet"))


def test_wav_scp_saved_with_a_bom_and_crlf(ray_session, tiny_model_dir, speech, tmp_path):
    lines = [f"utt{i} {speech / f's{i}.wav'}" for i in range(3)]
    (tmp_path / "wav.scp").write_bytes(b"\xef\xbb\xbf" + "\r\n".join(lines).encode() + b"\r\n")
    cfg, out = job(tmp_path, tmp_path / "wav.scp", tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    rows = rows_once(out)
    assert sorted(rows) == ["utt0", "utt1", "utt2"]
    assert all(r["error"] is None for r in rows.values()), [r["error"] for r in rows.values()]


def test_hugging_face_shard_in_the_common_voice_layout_without_column_settings(
    ray_session,
    tiny_model_dir,
    speech,
    tmp_path,
):
    datasets = pytest.importorskip("datasets")
    from datasets.table import embed_table_storage

    clips = tmp_path / "clips"
    clips.mkdir()
    files = [shutil.copy(speech / f"s{i}.wav", clips / f"common_voice_en_{i}.wav") for i in range(3)]
    ds = datasets.Dataset.from_dict(
        {
            "client_id": ["c0", "c1", "c2"],
            "path": [f"common_voice_en_{i}.mp3" for i in range(3)],  # names a file that exists nowhere
            "audio": [str(f) for f in files],
            "sentence": ["one", "two", "three"],
        }
    ).cast_column("audio", datasets.Audio())
    ds = datasets.Dataset(embed_table_storage(ds.data.table), info=ds.info)
    shard = tmp_path / "cv" / "train-00000-of-00001.parquet"
    ds.to_parquet(str(shard))
    refs = {f.name: decoded_ref(f) for f in map(Path, files)}
    shutil.rmtree(clips)  # only the bytes inside the shard are left
    cfg, out = job(tmp_path, shard.parent, tiny_model_dir)
    assert extract.main(["--config", str(cfg)]) == 0
    rows = rows_once(out)
    assert sorted(rows) == sorted(refs)  # the default id: the Audio struct's path
    bundle = load_bundle(tiny_model_dir)
    for name, ref in refs.items():
        assert_model_equal(bundle, rows[name], ref)
    assert sorted(r["manifest_path"] for r in rows.values()) == [f"common_voice_en_{i}.mp3" for i in range(3)]
    # a rerun finds every row committed under the same ids
    assert extract.main(["--config", str(cfg)]) == 0
    assert json.loads((out / "_run.json").read_text())["rows"]["skipped"] == 3


@pytest.mark.slow
def test_a_vad_segment_that_fails_in_the_model_is_redone_by_the_rerun(tiny_model_dir, tmp_path):
    pytest.importorskip("silero_vad")
    from .speech import encode, long_recording, sentence_clips

    clips = sentence_clips(3)
    (tmp_path / "calm.wav").write_bytes(encode(long_recording(clips[:2], [1.0, 1.5, 1.0]), "WAV"))
    (tmp_path / "poison.wav").write_bytes(encode(long_recording(clips[2:], [1.0, 1.0]), "WAV"))
    rows = [{"id": "calm", "path": "calm.wav"}, {"id": "victim", "path": "poison.wav"}]
    (tmp_path / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    extra = "  segmentation: vad\nray:\n  num_cpus: 2\n"  # the default restart budget
    cfg, out = job(tmp_path, tmp_path / "m.jsonl", tiny_model_dir, extra)
    cmd = [sys.executable, str(ROOT / "jobs" / "extract.py"), "--config", str(cfg)]
    env = {**os.environ, "E2V_INJECT_CRASH": "model:poison.wav"}
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)
    assert first.returncode == 0, first.stderr[-3000:]
    failed = [r for r in rows_once(out).values() if r["error"]]
    # the error rows are segments: their ids are not the manifest row's
    assert failed and {r["recording_id"] for r in failed} == {"victim"}
    assert all(r["id"] != "victim" and "WorkerCrashed" in r["error"] for r in failed)
    # the poison segments were in flight together: one restart runs each alone
    assert json.loads((out / "_run.json").read_text())["ray"]["restarts"] == 1, first.stderr[-3000:]
    again = subprocess.run(cmd, capture_output=True, text=True, timeout=900, cwd=tmp_path)
    assert again.returncode == 0, again.stderr[-3000:]
    after = rows_once(out)
    assert all(r["error"] is None for r in after.values()), {k: r["error"] for k, r in after.items()}
    assert {r["recording_id"] for r in after.values()} == {"calm", "victim"}
    starts = sorted((r["recording_id"], r["start_s"]) for r in after.values())
    assert len(starts) == len(set(starts))  # no segment twice
    run = json.loads((out / "_run.json").read_text())
    assert run["output_totals"]["error"] == 0 and run["output_totals"]["rows"] == len(after)
