"""The streaming trainer (pipeline/downstream/stream_train.py, reader.py): the in-memory trainer as its
reference, bounded shuffles, corpus splits, bad rows, and resume after kill -9."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import pytest

from pipeline.config import ConfigError
from pipeline.downstream.reader import stream_batches, train_plan
from pipeline.downstream.stream_train import build_catalog
from pipeline.downstream.train import TrainConfig, load_train_config, train
from pipeline.storage import Storage

from .downstream_corpus import LABELS as CORPUS_LABELS
from .downstream_corpus import USABLE, extracted_output
from .downstream_synth import LABELS, write_synthetic

ROOT = Path(__file__).resolve().parent.parent
SYNTH_ROWS = 240


def torch_cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.fixture(scope="module")
def synth(tmp_path_factory):
    return write_synthetic(tmp_path_factory.mktemp("synth") / "out", n=SYNTH_ROWS)


def _independent_rows(out: Path) -> list[dict]:
    """The good rows, read the slow way (pyarrow to_pylist), without the trainer's code."""
    rows = pads.dataset(str(out), format="parquet").to_table(columns=["id", "error", "emotion", "num_frames",
                                                                      "session", "split"]).to_pylist()  # fmt: skip
    return [r for r in rows if r["error"] is None and r["emotion"] in LABELS and r["num_frames"]]


def _same_numbers(a: dict, b: dict) -> None:
    assert a["confusion"] == b["confusion"]
    assert a["folds"] == b["folds"]
    assert a["mean"] == b["mean"]


# -- the reference ----------------------------------------------------------------------------------


def test_stream_equals_in_memory_reference_on_real_output(
    ray_session, tiny_model_dir, tmp_path_factory, tmp_path
):
    """IEMOCAP-shaped output written by the real job; the buffer holds the whole set: the same seed gives
    the same split, init and batch order, so identical confusion matrices, per-fold numbers and losses."""
    features = extracted_output(tmp_path_factory, tiny_model_dir)
    kw = dict(features=str(features), label_column="emotion", fold_column="session",
              label_map={"exc": "hap"}, labels=CORPUS_LABELS, epochs=6)  # fmt: skip
    mem = train(TrainConfig(output=str(tmp_path / "mem"), reader="memory", **kw), log_fn=lambda s: None)
    streamed = train(TrainConfig(output=str(tmp_path / "stream"), **kw), log_fn=lambda s: None)
    _same_numbers(mem, streamed)
    assert np.array(streamed["confusion"]).sum() == USABLE
    assert streamed["skipped"] == {
        "error": 1,
        "no_label": 1,
        "label_not_in_set": 1,
        "no_group": 0,
        "no_frames": 0,
    }
    # per group: leave-one-session-out tests each session once, so its group metrics are its fold's
    assert {g: m["n"] for g, m in streamed["groups"].items()} == {
        str(f["fold"]): f["n"] for f in streamed["folds"]
    }
    assert (tmp_path / "stream" / "confusion.png").stat().st_size > 8_000


def test_stream_equals_reference_on_synthetic_and_skips_bad_rows(synth, tmp_path):
    kw = dict(features=str(synth), label_column="emotion", fold_column="session", labels=LABELS, epochs=3,
              batch_size=32, checkpoint_every=0)  # fmt: skip
    mem = train(TrainConfig(output=str(tmp_path / "m"), reader="memory", **kw), log_fn=lambda s: None)
    got = train(TrainConfig(output=str(tmp_path / "s"), **kw), log_fn=lambda s: None)
    _same_numbers(mem, got)
    good = _independent_rows(synth)
    assert got["rows"] == {"used": len(good), "skipped": 4} and len(good) == SYNTH_ROWS
    assert got["skipped"] == {"error": 1, "no_label": 1, "label_not_in_set": 1, "no_group": 0, "no_frames": 1}
    assert got["mean"]["ua"] > 0.8  # the classes are separable; chance is 0.25


# -- bounded shuffles -------------------------------------------------------------------------------


def test_small_buffer_streams_every_row_once_in_bounded_memory(synth):
    import torch

    cfg = TrainConfig(features=str(synth), label_column="emotion", fold_column="session", output="unused",
                      labels=LABELS)  # fmt: skip
    cat = build_catalog(cfg, Storage())
    rows = np.arange(len(cat))
    row_bytes = cat.row_bytes(rows)
    capacity = int(row_bytes.sum() // 8)  # an eighth of the set
    torch.manual_seed(0)
    plan = train_plan(cat, rows, 16, capacity)
    order = np.concatenate(plan)
    assert sorted(order.tolist()) == rows.tolist()  # every row once
    assert [len(b) for b in plan[:-1]] == [16] * (len(plan) - 1)
    # shuffled across row groups: the first batch draws from several, and not in file order
    assert len(set(cat.unit[plan[0]].tolist())) >= 3
    torch.manual_seed(0)
    assert [b.tolist() for b in train_plan(cat, rows, 16, capacity)] == [b.tolist() for b in plan]  # a seed's
    torch.manual_seed(1)
    assert [b.tolist() for b in train_plan(cat, rows, 16, capacity)] != [b.tolist() for b in plan]

    stats: dict = {}
    seen = []
    ids = np.array(cat.ids)
    frames = {r["id"]: r["frames"] for r in pads.dataset(str(synth), format="parquet").to_table(
        columns=["id", "frames"]).to_pylist()}  # fmt: skip
    for b, (x, mask, y) in zip(
        plan, stream_batches(cat, plan, stats=stats, prefetch=1, read_ahead=1), strict=True
    ):
        seen.extend(b.tolist())
        assert y.tolist() == [LABELS.index(lab) for lab in np.array(cat.label_names)[cat.y[b]]]
        k = int(np.argmax(cat.lengths[b]))  # the longest row: unpadded, equal to what is stored
        want = np.array(frames[ids[b[k]]], np.float32)
        np.testing.assert_array_equal(x[k].numpy(), want)
        short = int(np.argmin(cat.lengths[b]))
        n = int(cat.lengths[b[short]])
        np.testing.assert_array_equal(x[short, :n].numpy(), np.array(frames[ids[b[short]]], np.float32))
        assert not x[short, n:].any() and mask[short, n:].all() and not mask[short, :n].any()
    assert seen == order.tolist()
    # the bound reader.py states: the buffer, plus one row group, plus the batch being built
    largest_group = max(int(row_bytes[cat.unit == u].sum()) for u in set(cat.unit.tolist()))
    largest_batch = max(int(row_bytes[b].sum()) for b in plan)
    bound = capacity + largest_group + largest_batch
    assert 0 < stats["peak_held_bytes"] <= bound, (stats, capacity, largest_group, largest_batch)
    assert stats["peak_held_bytes"] < row_bytes.sum() / 2  # far from the whole set

    # resume: skipping the first k batches yields exactly the rest
    rest = [y.tolist() for _, _, y in stream_batches(cat, plan, skip=5)]
    assert rest == [cat.y[b].tolist() for b in plan[5:]]


def test_small_buffer_training_learns(synth, tmp_path):
    got = train(
        TrainConfig(features=str(synth), label_column="emotion", fold_column="session", output=str(tmp_path),
                    labels=LABELS, epochs=4, batch_size=16, shuffle_buffer_mb=0.02, checkpoint_every=0),
        log_fn=lambda s: None,
    )  # fmt: skip
    assert got["mean"]["ua"] > 0.8 and got["reader"]["peak_held_mb"] < 0.1


# -- splits as corpora ship them ----------------------------------------------------------------------


def test_split_column_train_validation_test(synth, tmp_path):
    out = tmp_path / "split"
    got = train(
        TrainConfig(features=str(synth), label_column="emotion", split_column="split", fold_column="session",
                    output=str(out), labels=LABELS, epochs=4, batch_size=16, checkpoint_every=0),
        log_fn=lambda s: None,
    )  # fmt: skip
    good = _independent_rows(synth)
    by_split = Counter(r["split"] for r in good)
    (fold,) = got["folds"]
    assert got["split"] == "column"
    assert fold["n_train"] == by_split["train"] and fold["n_val"] == by_split["validation"]
    assert (
        got["splits"]["test"]["n"] == by_split["test"]
        and got["splits"]["validation"]["n"] == by_split["validation"]
    )
    test_sessions = Counter(str(r["session"]) for r in good if r["split"] == "test")
    assert {g: m["n"] for g, m in got["groups"].items()} == dict(test_sessions)
    assert got["splits"]["test"]["ua"] > 0.8
    assert json.loads((out / "metrics.json").read_text())["splits"] == got["splits"]
    assert (out / "confusion.png").stat().st_size > 8_000


def test_unknown_split_values_are_named(synth, tmp_path, caplog):
    """MSP-Podcast's `Split_Set` is Train / Development / Test1 / Test2: `Test1` is no split value the
    trainer knows, so its rows are skipped (`no_split`) and, with no test rows left, the run stops. The
    values it skipped are named (the README said MSP-Podcast's column works as shipped; it said nothing
    of `Test1`, and the error only counted rows)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    msp = {"train": "Train", "validation": "Development", "test": "Test1"}
    out = tmp_path / "msp"
    out.mkdir()
    n_test1 = 0
    for f in synth.glob("*.parquet"):
        t = pq.read_table(f)
        split = [None if s is None else msp[s] for s in t["split"].to_pylist()]
        n_test1 += sum(s == "Test1" and e in LABELS and err is None and nf > 0
                       for s, e, err, nf in zip(split, t["emotion"].to_pylist(), t["error"].to_pylist(),
                                                t["num_frames"].to_pylist(), strict=True))  # fmt: skip
        pq.write_table(
            t.set_column(t.schema.get_field_index("split"), "split", pa.array(split)), out / f.name
        )
    cfg = TrainConfig(features=str(out), label_column="emotion", split_column="split", labels=LABELS,
                      output=str(tmp_path / "o"), epochs=1, checkpoint_every=0)  # fmt: skip
    with caplog.at_level("WARNING"), pytest.raises(ValueError, match="needs train and test rows"):
        train(cfg, log_fn=lambda s: None)
    assert f"'Test1' ({n_test1} rows)" in caplog.text and "Development" not in caplog.text


@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_a_single_label_is_refused_not_scored_100(synth, tmp_path, reader):
    """Every usable row has the same label (a constant column, a label_map onto one class): a one-class
    'classifier' scored WA = UA = WF1 = 100 %. `labels` given must name two; the labels seen must too."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out = tmp_path / "one"
    out.mkdir()
    for f in synth.glob("*.parquet"):
        t = pq.read_table(f)
        emo = pa.array([None if e is None else "neu" for e in t["emotion"].to_pylist()], pa.string())
        pq.write_table(t.set_column(t.schema.get_field_index("emotion"), "emotion", emo), out / f.name)
    cfg = TrainConfig(features=str(out), label_column="emotion", fold_column="session", reader=reader,
                      output=str(tmp_path / "o"), epochs=1, checkpoint_every=0)  # fmt: skip
    with pytest.raises(ValueError, match=r"emotion: one label \('neu'\)"):
        train(cfg, log_fn=lambda s: None)
    assert not (tmp_path / "o" / "metrics.json").exists()


def test_config_fold_or_split():
    base = dict(features="f", label_column="l", output="o")
    with pytest.raises(ConfigError, match="fold_column: required key is missing"):
        load_train_config(None, base)
    with pytest.raises(ConfigError, match="split_column: needs reader: stream"):
        load_train_config(None, {**base, "split_column": "split", "reader": "memory"})
    cfg = load_train_config(None, {**base, "split_column": "split", "shuffle_buffer_mb": 64})
    assert cfg.fold_column is None and cfg.reader == "stream" and cfg.shuffle_buffer_mb == 64


# -- checkpoints: kill -9 and resume ------------------------------------------------------------------


def _train_cmd(synth: Path, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "jobs" / "train_downstream.py"), "--features", str(synth),
            "--label-column", "emotion", "--split-column", "split", "--fold-column", "session",
            "--labels", ",".join(LABELS), "--output", str(out), "--epochs", "8", "--batch-size", "8",
            "--checkpoint-every", "5",
            "--shuffle-buffer-mb", "0.05", "--device", "cpu"]  # fmt: skip


@pytest.mark.slow
def test_resume_after_kill_9_gives_the_uninterrupted_result(synth, tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    whole = subprocess.run(_train_cmd(synth, tmp_path / "whole"), env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert whole.returncode == 0, whole.stderr
    want = json.loads((tmp_path / "whole" / "metrics.json").read_text())

    out = tmp_path / "killed"
    ckpt = out / "checkpoints" / "last.pt"
    kills = 0
    for _ in range(2):  # killed twice: early, and again later
        proc = subprocess.Popen(
            _train_cmd(synth, out), env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE
        )
        before = ckpt.stat().st_mtime_ns if ckpt.exists() else 0
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if ckpt.exists() and ckpt.stat().st_mtime_ns != before:
                time.sleep(0.3 * kills)  # the second kill lands somewhere later in training
                break
            time.sleep(0.02)
        assert proc.poll() is None, "finished before it could be killed"
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        proc.stdout.close()
        proc.stderr.close()
        kills += 1
        assert proc.returncode == -signal.SIGKILL and not (out / "metrics.json").exists()
    resumed = subprocess.run(_train_cmd(synth, out), env=env, capture_output=True, text=True, timeout=600)
    assert resumed.returncode == 0, resumed.stderr
    assert "resuming from" in resumed.stderr
    got = json.loads((out / "metrics.json").read_text())
    _same_numbers(want, got)
    assert got["splits"] == want["splits"] and got["groups"] == want["groups"]
    # a finished run's checkpoint holds every fold: running again rewrites the same metrics
    again = subprocess.run(_train_cmd(synth, out), env=env, capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "1 folds done" in again.stderr
    _same_numbers(want, json.loads((out / "metrics.json").read_text()))
    # other settings against the same checkpoint: refused, exit 2
    other = subprocess.run([*_train_cmd(synth, out), "--seed", "7"], env=env, capture_output=True, text=True,
                           timeout=600)  # fmt: skip
    assert other.returncode == 2 and "seed" in other.stderr


def test_checkpoint_of_other_rows_is_refused(synth, tmp_path):
    """The checkpoint holds catalog row numbers (each fold's rows and predictions). When the features'
    usable rows change under the same settings (an extraction rerun redid an error row, which now sorts
    first), resuming read those numbers against other rows: the 'resumed' metrics scored predictions
    against the wrong labels. Refused like other settings (exit 2)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    feats = tmp_path / "feats"
    feats.mkdir()
    for f in synth.glob("*.parquet"):
        (feats / f.name).write_bytes(f.read_bytes())
    kw = dict(features=str(feats), label_column="emotion", fold_column="session", labels=LABELS,
              input="utterance", output=str(tmp_path / "o"), epochs=1, batch_size=32,
              checkpoint_every=3)  # fmt: skip
    train(TrainConfig(**kw), log_fn=lambda s: None)
    assert (tmp_path / "o" / "checkpoints" / "last.pt").exists()
    # the error row comes back ok (its embedding and label are there): one more usable row, sorted first
    for f in feats.glob("*.parquet"):
        t = pq.read_table(f)
        err = [None if i == "bad-error" else e for i, e in zip(t["id"].to_pylist(), t["error"].to_pylist(),
                                                                strict=True)]  # fmt: skip
        pq.write_table(t.set_column(t.schema.get_field_index("error"), "error", pa.array(err, pa.string())),
                       f, row_group_size=16)  # fmt: skip
    with pytest.raises(ConfigError, match="rows"):
        train(TrainConfig(**kw), log_fn=lambda s: None)


@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_output_uri_is_written_where_it_names_by_either_reader(synth, tmp_path, monkeypatch, reader):
    """`output` is a storage URI for both readers (TrainConfig.output); the in-memory reference wrote
    `file:///x` (or `s3://b/x`) to a local directory named `file:` (`s3:`) under the working directory."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    target = tmp_path / "probe"
    got = train(
        TrainConfig(features=str(synth), label_column="emotion", fold_column="session", labels=LABELS,
                    output=f"file://{target}", reader=reader, epochs=1, batch_size=32, checkpoint_every=0),
        log_fn=lambda s: None,
    )  # fmt: skip
    assert list(cwd.iterdir()) == []
    assert json.loads((target / "metrics.json").read_text())["mean"] == got["mean"]
    assert (target / "confusion.png").stat().st_size > 8_000


def test_recipe_keys_are_command_line_flags(synth, tmp_path):
    """TrainConfig: 'YAML keys and CLI flags share these names'; the README names `--val-fraction`. The
    recipe's keys were YAML-only (argparse: unrecognized arguments, exit 2)."""
    from pipeline.cli import train_downstream

    out = tmp_path / "o"
    rc = train_downstream.main([
        "--features", str(synth), "--label-column", "emotion", "--fold-column", "session",
        "--output", str(out), "--epochs", "1", "--checkpoint-every", "0", "--labels", ",".join(LABELS),
        "--val-fraction", "0.5",
        "--lr", "0.001", "--max-lr", "0.002", "--step-size-up", "3", "--momentum", "0.5", "--hidden-dim", "8",
        "--order-by", "path",
    ])  # fmt: skip
    assert rc == 0
    got = json.loads((out / "metrics.json").read_text())
    want = {"val_fraction": 0.5, "lr": 0.001, "max_lr": 0.002, "step_size_up": 3, "momentum": 0.5,
            "hidden_dim": 8, "order_by": "path"}  # fmt: skip
    assert {k: got["config"][k] for k in want} == want
    per_session = Counter(r["session"] for r in _independent_rows(synth))
    for fold in got["folds"]:
        n = sum(v for s, v in per_session.items() if s != fold["fold"])  # the other sessions' rows
        assert (fold["n_train"], fold["n_val"]) == (n // 2, n - n // 2)


@pytest.mark.skipif(torch_cuda_available(), reason="needs a machine without CUDA")
@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_device_cuda_without_cuda_is_a_config_error(synth, tmp_path, capsys, reader):
    """`--device cuda` where torch sees no GPU is a bad setting: exit 2 naming the key (it was a torch
    traceback from the first `model.to`, exit 1)."""
    from pipeline.cli import train_downstream

    rc = train_downstream.main([
        "--features", str(synth), "--label-column", "emotion", "--fold-column", "session",
        "--output", str(tmp_path / "o"), "--epochs", "1", "--reader", reader, "--device", "cuda",
        "--checkpoint-every", "0",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "device: cuda" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.s3
def test_stream_from_s3_with_metrics_and_checkpoints_on_s3(synth, s3_server, s3_bucket, tmp_path):
    """Features read from an object store (real HTTP, moto), metrics, PNG and checkpoint written there;
    the numbers equal the same run on the local copy."""
    client, bucket = s3_bucket
    for f in synth.glob("*.parquet"):
        client.put_object(Bucket=bucket, Key=f"runs/a/{f.name}", Body=f.read_bytes())
    kw = dict(label_column="emotion", split_column="split", labels=LABELS, epochs=2, batch_size=32,
              checkpoint_every=3, shuffle_buffer_mb=0.02)  # fmt: skip
    local = train(TrainConfig(features=str(synth), output=str(tmp_path / "l"), **kw), log_fn=lambda s: None)
    remote = train(
        TrainConfig(features=f"s3://{bucket}/runs/a", output=f"s3://{bucket}/probe",
                    storage={"endpoint_url": s3_server}, **kw),
        log_fn=lambda s: None,
    )  # fmt: skip
    _same_numbers(local, remote)
    keys = {o["Key"] for o in client.list_objects_v2(Bucket=bucket, Prefix="probe/")["Contents"]}
    assert keys == {"probe/metrics.json", "probe/confusion.png", "probe/checkpoints/last.pt"}
    body = client.get_object(Bucket=bucket, Key="probe/metrics.json")["Body"].read()
    assert json.loads(body)["splits"] == remote["splits"]


# -- settings and corpora the recipe cannot use -----------------------------------------------------


def _copy_synth(synth: Path, out: Path, edit) -> Path:
    """The synthetic output's files, each table passed through `edit` (pyarrow Table -> Table)."""
    import pyarrow.parquet as pq

    out.mkdir()
    for f in synth.glob("*.parquet"):
        pq.write_table(edit(pq.read_table(f)), out / f.name, row_group_size=16)
    return out


def _set_by_id(t, column: str, values: dict):
    """Column `column` with the rows whose id is a key of `values` set to that value."""
    import pyarrow as pa

    at = t.schema.get_field_index(column)
    col = [values.get(i, v) for i, v in zip(t["id"].to_pylist(), t[column].to_pylist(), strict=True)]
    return t.set_column(at, t.schema.field(column), pa.array(col, t.schema.field(column).type))


def test_misspelled_order_by_is_a_config_error(synth, tmp_path, capsys):
    """`--order-by sesion` (no such column) trained ordered by id, silently: another split than the one
    asked for. A bad setting is exit 2 naming the key and the column, as a misspelled label column is."""
    from pipeline.cli import train_downstream

    rc = train_downstream.main([
        "--features", str(synth), "--label-column", "emotion", "--fold-column", "session",
        "--output", str(tmp_path / "o"), "--epochs", "1", "--checkpoint-every", "0", "--order-by", "sesion",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "order_by" in err and "'sesion'" in err and "Traceback" not in err
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_no_training_rows_after_the_validation_split_names_the_fold(synth, tmp_path, capsys, reader):
    """A validation share that leaves no training row (a tiny corpus, a high --val-fraction) stopped
    with torch's 'num_samples should be a positive integer value'; the error names the fold and counts."""
    from pipeline.cli import train_downstream

    outside = len([r for r in _independent_rows(synth) if r["session"] != 1])  # fold 1's train+val rows
    assert int((1 - 0.999) * outside) == 0
    rc = train_downstream.main([
        "--features", str(synth), "--label-column", "emotion", "--fold-column", "session",
        "--labels", ",".join(LABELS), "--output", str(tmp_path / "o"), "--epochs", "1",
        "--checkpoint-every", "0", "--reader", reader, "--val-fraction", "0.999",
    ])  # fmt: skip
    err = capsys.readouterr().err
    assert rc == 2 and "num_samples" not in err, err
    assert "fold 1" in err and f"{outside} rows" in err and "val_fraction" in err, err
    assert not (tmp_path / "o" / "metrics.json").exists()


@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_features_without_an_error_column_have_no_error_rows(synth, tmp_path, reader):
    """Features written by another tool may have no `error` column: every row is then an ok row (as the
    summary reads them). The streaming reader crashed (KeyError: 'error'), the in-memory one exited 2
    with Arrow's 'No match for FieldRef.Name(error)'."""
    bad_error_row = "bad-error"
    out = _copy_synth(synth, tmp_path / "f", lambda t: t.filter(
        pc.not_equal(t["id"], bad_error_row)).drop_columns(["error"]))  # fmt: skip
    got = train(TrainConfig(features=str(out), label_column="emotion", fold_column="session", labels=LABELS,
                            output=str(tmp_path / "o"), epochs=1, checkpoint_every=0, reader=reader),
                log_fn=lambda s: None)  # fmt: skip
    assert got["rows"]["used"] == len(_independent_rows(synth)) == SYNTH_ROWS
    assert got["skipped"]["error"] == 0 and got["skipped"]["no_frames"] == 1


@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_label_set_comes_from_the_usable_rows(synth, tmp_path, reader):
    """Without `labels`, a label seen only on rows that are skipped anyway (no group, no frames) became a
    class that no row trains or tests: a wider model and confusion matrix, a dead output."""
    edit = {"bad-noframes": "exc", "bad-fru": "fru"}  # bad-fru keeps its frames but loses its session
    out = _copy_synth(synth, tmp_path / "f", lambda t: _set_by_id(
        _set_by_id(t, "emotion", edit), "session", {"bad-fru": None}))  # fmt: skip
    rows = pads.dataset(str(out), format="parquet").to_table(
        columns=["error", "emotion", "num_frames", "session"]).to_pylist()  # fmt: skip
    usable = sorted({r["emotion"] for r in rows if r["error"] is None and r["emotion"] is not None
                     and r["num_frames"] and r["session"] is not None})  # fmt: skip
    assert usable == LABELS
    got = train(TrainConfig(features=str(out), label_column="emotion", fold_column="session",
                            output=str(tmp_path / "o"), epochs=1, checkpoint_every=0, reader=reader),
                log_fn=lambda s: None)  # fmt: skip
    assert got["labels"] == usable and np.array(got["confusion"]).shape == (len(usable), len(usable))
    assert got["rows"]["used"] == SYNTH_ROWS


@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_features_without_num_frames_count_the_frames_themselves(synth, tmp_path, reader):
    """Frames written by another tool may have no `num_frames` column: both readers stopped with a
    traceback (KeyError: 'Field "num_frames" does not exist in schema'). The frame counts come from the
    frames column then, and a row with null frames is a `no_frames` row as before."""
    out = _copy_synth(synth, tmp_path / "f", lambda t: t.drop_columns(["num_frames", "error"]))
    cfg = dict(label_column="emotion", fold_column="session", labels=LABELS, epochs=1, checkpoint_every=0,
               reader=reader)  # fmt: skip
    got = train(TrainConfig(features=str(out), output=str(tmp_path / "o"), **cfg), log_fn=lambda s: None)
    ref = train(TrainConfig(features=str(synth), output=str(tmp_path / "r"), **cfg), log_fn=lambda s: None)
    # the error row (no error column now) has null frames: a no_frames row, as the row without frames
    assert got["skipped"]["no_frames"] == 2 and got["rows"]["used"] == SYNTH_ROWS
    _same_numbers(got, ref)


@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_null_frames_under_a_positive_num_frames_are_refused_not_trained_as_nan(synth, tmp_path, reader):
    """A row whose num_frames says 5 but whose frames are null (features pieced together by hand: the job
    writes both or neither) was padded to an all-padding row: 0/0 in the masked mean, NaN losses, a NaN
    model and chance-level metrics, with no word. It is an error naming the row now."""
    good = _independent_rows(synth)[0]["id"]
    out = _copy_synth(synth, tmp_path / "f", lambda t: _set_by_id(t, "frames", {good: None}))
    cfg = TrainConfig(features=str(out), label_column="emotion", fold_column="session", labels=LABELS,
                      output=str(tmp_path / "o"), epochs=1, checkpoint_every=0, reader=reader)  # fmt: skip
    with pytest.raises(ValueError, match=f"{good}.*num_frames"):
        train(cfg, log_fn=lambda s: None)


@pytest.mark.parametrize("reader", ["memory", "stream"])
def test_rows_without_a_group_are_counted_as_such_not_as_labels_outside_the_set(synth, tmp_path, reader):
    """Without `labels`, the label set comes from the usable rows; a fold column that is null on every
    row (`--fold-column speaker` where the job found no speakers) left the set empty, and the error
    counted every labelled row as `label_not_in_set` and none as `no_group`, pointing at the labels."""
    out = _copy_synth(synth, tmp_path / "f", lambda t: t.set_column(
        t.schema.get_field_index("session"), "session", pa.nulls(t.num_rows, t.schema.field("session").type)))  # fmt: skip
    cfg = TrainConfig(features=str(out), label_column="emotion", fold_column="session",
                      output=str(tmp_path / "o"), epochs=1, checkpoint_every=0, reader=reader)  # fmt: skip
    with pytest.raises(ValueError, match="no usable rows") as e:
        train(cfg, log_fn=lambda s: None)
    assert "'label_not_in_set': 0" in str(e.value) and f"'no_group': {SYNTH_ROWS + 2}" in str(e.value)
