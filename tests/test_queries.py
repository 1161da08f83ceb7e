"""docs/queries.md stays true: every recipe block runs against a real output of the job and its answer
is checked against the same numbers computed independently with pyarrow and numpy."""

from __future__ import annotations

import re
from collections import Counter
from pathlib import Path

import duckdb
import numpy as np
import pyarrow.dataset as pads
import pytest

from pipeline.schema import read_metadata

from .downstream_corpus import SKIP_IDS, extracted_output

DOC = Path(__file__).resolve().parent.parent / "docs" / "queries.md"
BLOCK = re.compile(r"<!-- query: (\w+) -->\s*```(sql|python)\n(.*?)```", re.S)
DOC_PATH = "outputs/iemocap"  # placeholders the doc tells readers to replace
DOC_ID = "Ses01F_impro01_F000"
QUERY_ID = "Ses02M_angry_003"
D = 48  # the tiny test model's embedding size


def doc_blocks() -> dict[str, tuple[str, str]]:
    blocks = {}
    for name, lang, code in BLOCK.findall(DOC.read_text(encoding="utf-8")):
        assert name not in blocks, f"two blocks named {name}"
        blocks[name] = (lang, code)
    return blocks


BLOCKS = doc_blocks()


@pytest.fixture(scope="module")
def out(ray_session, tiny_model_dir, tmp_path_factory):
    return extracted_output(tmp_path_factory, tiny_model_dir)


@pytest.fixture(scope="module")
def rows(out):
    """Every row, read independently of the docs (pyarrow)."""
    return pads.dataset(str(out), format="parquet").to_table().to_pylist()


@pytest.fixture(scope="module")
def ok(rows):
    return sorted((r for r in rows if r["error"] is None), key=lambda r: r["id"])


def code(name: str, out: Path, lang: str) -> str:
    got_lang, text = BLOCKS[name]
    assert got_lang == lang
    assert DOC_PATH in text
    text = text.replace(DOC_PATH, str(out)).replace(DOC_ID, QUERY_ID)
    return text.replace("FLOAT[768]", f"FLOAT[{D}]")


def sql(name: str, out: Path) -> list[dict]:
    rel = duckdb.connect().sql(code(name, out, "sql"))
    cols = rel.columns
    return [dict(zip(cols, r, strict=True)) for r in rel.fetchall()]


def run_python(name: str, out: Path) -> dict:
    ns: dict = {"__name__": f"queries_md_{name}"}
    exec(compile(code(name, out, "python"), f"{DOC}:{name}", "exec"), ns)
    return ns


TESTED = {
    "label_counts",
    "errors",
    "speaker_profile",
    "speaker_pivot",
    "speaker_scores",
    "neighbours_list",
    "neighbours_array",
    "polars_numpy",
    "frames_dataset",
    # the emotion-over-time blocks need a segment-per-row output: tests/test_timeline.py runs them
    "recording_timeline",
    "time_share_recording",
    "time_share_speaker",
    # the conversation blocks need an output of speaker turns: tests/test_conversations.py runs them
    "speaker_turns",
    "speaker_time_share",
    "emotion_changes",
    "polars_speaker_share",
}


def test_every_doc_block_has_a_test():
    assert set(BLOCKS) == TESTED
    assert "array_cosine_similarity" in BLOCKS["neighbours_array"][1]
    assert "list_cosine_similarity" in BLOCKS["neighbours_list"][1]


def test_label_counts(out, ok):
    got = sql("label_counts", out)
    want = Counter(r["label"] for r in ok)
    assert {r["label"]: r["n"] for r in got} == want
    assert [r["n"] for r in got] == sorted(want.values(), reverse=True)


def test_errors(out, rows):
    got = sql("errors", out)
    assert [r["id"] for r in got] == [SKIP_IDS["error"]]
    assert got[0]["error"].startswith("fetch: ") and "does_not_exist.wav" in got[0]["error"]
    assert got[0]["path"].endswith("does_not_exist.wav")


def test_speaker_profile(out, ok):
    got = sql("speaker_profile", out)
    want = Counter((r["speaker"], r["label"]) for r in ok)
    per_speaker = Counter(r["speaker"] for r in ok)
    assert {(r["speaker"], r["label"]): r["n"] for r in got} == want
    for r in got:
        assert r["share"] == pytest.approx(r["n"] / per_speaker[r["speaker"]])
    for s in per_speaker:
        assert sum(r["share"] for r in got if r["speaker"] == s) == pytest.approx(1.0)


def test_speaker_pivot(out, ok):
    got = sql("speaker_pivot", out)
    gold = sorted({r["emotion"] for r in ok if r["emotion"] is not None})
    assert set(got[0]) == {"speaker", *gold}
    assert [r["speaker"] for r in got] == sorted({r["speaker"] for r in ok})
    want = Counter((r["speaker"], r["emotion"]) for r in ok if r["emotion"] is not None)
    for r in got:
        for g in gold:
            assert r[g] == want[(r["speaker"], g)]


def test_speaker_scores(out, ok):
    meta = read_metadata(pads.dataset(str(out), format="parquet").schema)
    labels = meta["labels"]  # the doc's 1-based indices must name these classes
    idx = {name: labels.index(name) for name in ("angry", "happy", "neutral", "sad")}
    assert idx == {"angry": 0, "happy": 3, "neutral": 4, "sad": 6}
    got = sql("speaker_scores", out)
    for r in got:
        scores = np.array([x["scores"] for x in ok if x["speaker"] == r["speaker"]], np.float64)
        assert r["n"] == len(scores)
        for name, i in idx.items():
            assert r[name] == pytest.approx(scores[:, i].mean(), rel=1e-5)


@pytest.mark.parametrize("name", ["neighbours_list", "neighbours_array"])
def test_nearest_neighbours(out, ok, name):
    got = sql(name, out)
    emb = np.array([r["embedding"] for r in ok], np.float64)
    ids = [r["id"] for r in ok]
    q = emb[ids.index(QUERY_ID)]
    cos = emb @ q / (np.linalg.norm(emb, axis=1) * np.linalg.norm(q))
    order = [i for i in np.argsort(-cos) if ids[i] != QUERY_ID][:5]
    assert [r["id"] for r in got] == [ids[i] for i in order]
    np.testing.assert_allclose([r["cosine"] for r in got], cos[order], rtol=1e-5)
    assert len(got) == 5 and QUERY_ID not in {r["id"] for r in got}


def test_polars_to_numpy(out, ok):
    ns = run_python("polars_numpy", out)
    X, ids = ns["X"], ns["ids"]
    assert X.dtype == np.float32 and X.shape == (len(ok), D)
    assert ids == [r["id"] for r in ok]
    np.testing.assert_array_equal(X, np.array([r["embedding"] for r in ok], np.float32))
    np.testing.assert_allclose(np.diag(ns["similarity"]), 1.0, rtol=1e-5)


def test_frames_dataset(out, ok):
    ns = run_python("frames_dataset", out)
    want = [r for r in ok if r["speaker"] == "Ses01F" and r["emotion"] in ("ang", "sad")]
    assert ns["ids"] == [r["id"] for r in want] and len(want) == 12
    ds = ns["dataset"]
    assert len(ds) == len(want)
    for i, r in enumerate(want):
        feats, label = ds[i]
        assert label == r["emotion"]
        assert tuple(feats.shape) == (r["num_frames"], D)
        np.testing.assert_array_equal(feats.numpy(), np.array(r["frames"], np.float16).astype(np.float32))
    x, lengths, labels = ns["x"], ns["lengths"], ns["labels"]
    assert x.shape[0] == len(labels) == len(lengths) == 8 and x.shape[2] == D
    assert x.shape[1] == int(lengths.max())
    for b in range(8):
        assert not x[b, int(lengths[b]) :].any()  # zero padding
    # ids not in the output (or error rows) are left out, order follows the ids given
    sub = ns["FramesDataset"](str(out), [want[3]["id"], SKIP_IDS["error"], "no-such-id", want[0]["id"]])
    assert len(sub) == 2
    np.testing.assert_array_equal(sub[0][0].numpy(), np.array(want[3]["frames"], np.float32))
