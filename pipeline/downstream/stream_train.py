"""The streaming trainer: the recipes of train.py over batches read from the output as training goes
(reader.py), with checkpoints and resume.

Splits. Leave-one-group-out over `fold_column` as the in-memory trainer does it, or, with `split_column`,
the corpus's own train / validation / test split (a corpus without validation rows gets the random
`val_fraction` split of its train rows). The global RNG is drawn from in the in-memory trainer's order
(split, model init, each epoch's loader, each evaluation's loader), so with a shuffle buffer that holds
the training rows the two give identical results with the same seed.

Checkpoints. Every `checkpoint_every` optimizer steps, and at the end of each fold, the whole state goes
to OUTPUT/checkpoints/last.pt in one atomic write: folds done, this fold's rows, model, optimizer,
scheduler, best checkpoint so far, losses, the step within the epoch, and the global RNG state as the
epoch began. A run that finds one (made with the same settings on the same rows) resumes: it restores
the RNG, rebuilds the epoch's plan (the same draws give the same order), skips the batches done and
goes on, so the result equals an uninterrupted run's. A finished run's last checkpoint holds every
fold; running again only rewrites the metrics.
"""

from __future__ import annotations

import copy
import hashlib
import io
import json
import logging
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa

from ..config import ConfigError
from ..storage import Storage, join
from .reader import Catalog, eval_plan, read_light, stream_batches, train_plan
from .train import (
    SPLITS,
    TrainConfig,
    _json_value,
    check_train_split,
    confusion_matrix,
    frame_model,
    linear_probe,
    make_optimizer,
    metrics_from_confusion,
    pick_device,
    plot_confusion,
    resolve_input,
    select_rows,
)

log = logging.getLogger(__name__)

CHECKPOINT = "checkpoints/last.pt"
# settings that do not change the numbers: a checkpoint made under other values of these still resumes
_NOT_IN_FINGERPRINT = ("output", "device", "prefetch_batches", "read_ahead", "checkpoint_every", "storage")


def build_catalog(cfg: TrainConfig, storage: Storage) -> Catalog:
    """Pass 1: the small columns of every file -> the usable rows, their labels, groups, splits, frame
    counts and row groups. Errors name the missing column."""
    kind, feature_col, order_col = resolve_input(cfg, set(_schema_names(storage, cfg.features)))
    cols = ["id", "error", cfg.label_column, cfg.fold_column, cfg.split_column, order_col]
    if kind == "frames":
        cols.append("num_frames")
    light, fs, paths, metas = read_light(storage, cfg.features, [c for c in dict.fromkeys(cols) if c])
    kept, y, label_names, skipped = select_rows(light, cfg, kind)
    if kept.num_rows == 0:
        raise ValueError(f"no usable rows in {cfg.features} (skipped: {skipped})")
    if len(set(kept["id"].to_pylist())) != kept.num_rows:
        raise ValueError(f"ids are not unique in {cfg.features}")
    # row groups, numbered in file order
    rg_counts = [m.num_row_groups for m in metas]
    first = np.concatenate([[0], np.cumsum(rg_counts)[:-1]]).astype(np.int64)
    units = [(f, g) for f, n in enumerate(rg_counts) for g in range(n)]
    file_idx = kept["_file"].to_numpy()
    unit = first[file_idx] + kept["_rg"].to_numpy()
    n = kept.num_rows
    groups = (
        np.array(kept[cfg.fold_column].to_pylist(), dtype=object)
        if cfg.fold_column
        else np.full(n, None, object)
    )
    splits = np.full(n, None, object)
    if cfg.split_column:
        splits = np.array(
            [SPLITS[v.strip().lower()] for v in kept[cfg.split_column].cast(pa.string()).to_pylist()], object
        )
    if kind == "frames":
        lengths = kept["num_frames"].to_numpy().astype(np.int64)
        dim = metas[0].schema.to_arrow_schema().field("frames").type.value_type.list_size
    else:
        lengths = np.ones(n, np.int64)
        dim = metas[0].schema.to_arrow_schema().field("embedding").type.list_size
    return Catalog(
        kind=kind,
        feature_col=feature_col,
        dim=int(dim),
        fs=fs,
        paths=paths,
        metadata=metas,
        units=units,
        ids=kept["id"].to_pylist(),
        y=y,
        groups=groups,
        splits=splits,
        lengths=lengths,
        unit=unit.astype(np.int64),
        row_in_unit=kept["_row"].to_numpy().astype(np.int64),
        label_names=label_names,
        skipped=skipped,
    )


def _schema_names(storage: Storage, uri: str) -> list[str]:
    import pyarrow.parquet as pq

    names: dict[str, None] = {}
    fs, _ = storage.resolve(uri)
    for f in storage.list_files(uri, ".parquet"):
        with fs.open_input_file(storage.resolve(f)[1]) as fh:
            names.update(dict.fromkeys(pq.ParquetFile(fh).schema_arrow.names))
    return list(names)


# -- checkpoints ----------------------------------------------------------------------------------


def rows_digest(cat: Catalog) -> str:
    """The catalog's rows in order (id, label, group, split): what a checkpoint's row numbers mean."""
    h = hashlib.sha256()
    h.update(
        json.dumps([cat.ids, cat.label_names, cat.groups.tolist(), cat.splits.tolist()], default=str).encode()
    )
    h.update(np.ascontiguousarray(cat.y, np.int64).tobytes())
    return h.hexdigest()


class Checkpoints:
    """OUTPUT/checkpoints/last.pt: written whole and atomically (a rename locally, one PUT on object
    stores), so a kill at any moment leaves the previous checkpoint or the new one."""

    def __init__(self, storage: Storage, cfg: TrainConfig, cat: Catalog | None = None) -> None:
        self.storage = storage
        self.uri = join(cfg.output, CHECKPOINT)
        self.fingerprint = {
            k: v for k, v in cfg.model_dump(mode="json").items() if k not in _NOT_IN_FINGERPRINT
        }
        if cat is not None:
            # the state holds catalog row numbers: only the same rows give them their meaning (an
            # extraction rerun that redid an error row shifts them, under the same settings)
            self.fingerprint["features_rows"] = rows_digest(cat)

    def load(self) -> dict[str, Any] | None:
        import torch

        if not self.storage.exists(self.uri):
            return None
        state = torch.load(io.BytesIO(self.storage.read_bytes(self.uri)), weights_only=False)
        if state.get("fingerprint") != self.fingerprint:
            old = state.get("fingerprint") or {}
            diff = sorted(
                k for k in set(old) | set(self.fingerprint) if old.get(k) != self.fingerprint.get(k)
            )
            raise ConfigError(
                f"{self.uri} was made with other settings ({', '.join(diff)}): "
                "use another output, or delete the checkpoint to start over"
            )
        return state

    def save(self, state: dict[str, Any]) -> None:
        import torch

        buf = io.BytesIO()
        torch.save({"fingerprint": self.fingerprint, **state}, buf)
        self.storage.makedirs(self.uri.rsplit("/", 1)[0])
        self.storage.write_bytes_atomic(self.uri, buf.getvalue())


# -- training -------------------------------------------------------------------------------------


def _device(cfg: TrainConfig):
    return pick_device(cfg)


def _folds(cfg: TrainConfig, cat: Catalog) -> list[tuple[Any, np.ndarray, np.ndarray | None, np.ndarray]]:
    """[(name, train rows, validation rows or None (random split), test rows)]."""
    if cfg.split_column is None:
        values = sorted(set(cat.groups.tolist()), key=lambda g: (str(type(g)), g))
        if len(values) < 2:
            raise ValueError(
                f"{cfg.fold_column}: leave-one-group-out needs at least 2 groups, found {values}"
            )
        return [(g, np.flatnonzero(cat.groups != g), None, np.flatnonzero(cat.groups == g)) for g in values]
    train_rows = np.flatnonzero(cat.splits == "train")
    val = np.flatnonzero(cat.splits == "validation")
    test = np.flatnonzero(cat.splits == "test")
    if len(train_rows) == 0 or len(test) == 0:
        raise ValueError(
            f"{cfg.split_column}: needs train and test rows, found "
            f"{ {s: int((cat.splits == s).sum()) for s in ('train', 'validation', 'test')} }"
        )
    return [("test", train_rows, val if len(val) else None, test)]


class _Run:
    def __init__(self, cfg: TrainConfig, cat: Catalog, device, ckpt: Checkpoints, log_fn) -> None:
        self.cfg, self.cat, self.device, self.ckpt, self.log_fn = cfg, cat, device, ckpt, log_fn
        self.capacity = int(cfg.shuffle_buffer_mb * 2**20)
        self.stats: dict[str, float] = {}
        self.global_step = 0

    def batches(self, plan, skip: int = 0):
        return stream_batches(
            self.cat,
            plan,
            skip=skip,
            prefetch=self.cfg.prefetch_batches,
            read_ahead=self.cfg.read_ahead,
            stats=self.stats,
        )

    def predict(self, model, rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """-> (rows in the order evaluated, argmax class of each)."""
        import torch

        plan = eval_plan(self.cat, rows, self.cfg.batch_size, self.capacity)
        model.eval()
        out = []
        with torch.no_grad():
            for x, mask, _ in self.batches(plan):
                logits = model(x.to(self.device), None if mask is None else mask.to(self.device))
                out.append(logits.argmax(dim=1).cpu().numpy())
        order = np.concatenate(plan) if plan else np.zeros(0, np.int64)
        return order, (np.concatenate(out) if out else np.zeros(0, np.int64))

    def fold(self, pos: int, train_rows, val_rows, test_rows, state: dict | None, done: list) -> dict:
        import torch
        from torch.utils.data import random_split

        cfg, cat = self.cfg, self.cat
        c = len(cat.label_names)
        if state is None:
            if val_rows is None:  # the in-memory trainer's draw: random_split, then model init
                n_train = int((1 - cfg.val_fraction) * len(train_rows))
                n_val = len(train_rows) - n_train
                train_sub, val_sub = random_split(range(len(train_rows)), [n_train, n_val])
                train_idx = train_rows[np.asarray(list(train_sub), np.int64)]
                val_idx = train_rows[np.asarray(list(val_sub), np.int64)]
                if n_val == 0:
                    val_idx = train_idx
            else:
                train_idx, val_idx, n_val = train_rows, val_rows, len(val_rows)
        else:
            train_idx, val_idx, n_val = state["train_idx"], state["val_idx"], state["n_val"]
        model = frame_model(cat.dim, c, cfg.hidden_dim) if cat.kind == "frames" else linear_probe(cat.dim, c)
        model = model.to(self.device)
        optimizer, scheduler = make_optimizer(cfg, model)
        criterion = torch.nn.CrossEntropyLoss()
        best_wa, best_epoch, best_state, best_val_cm, losses = -1.0, -1, None, None, []
        epoch, skip, total, nb = 0, 0, 0.0, 0
        if state is not None:
            model.load_state_dict(state["model"])
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            best_wa, best_epoch, best_state = state["best_wa"], state["best_epoch"], state["best_state"]
            best_val_cm = state["best_val_cm"]
            losses, epoch, skip = list(state["losses"]), state["epoch"], state["step"]
            total, nb = state["epoch_total"], state["epoch_batches"]
            torch.set_rng_state(state["rng"])
            self.global_step = state["global_step"]

        while epoch < cfg.epochs:
            rng = torch.get_rng_state()  # before this epoch's draws: a resume replays them
            plan = train_plan(cat, train_idx, cfg.batch_size, self.capacity)
            model.train()
            step = skip
            t_epoch = time.perf_counter()
            for x, mask, y in self.batches(plan, skip=skip):
                optimizer.zero_grad()
                logits = model(x.to(self.device), None if mask is None else mask.to(self.device))
                loss = criterion(logits, y.to(self.device))
                loss.backward()
                optimizer.step()
                total += float(loss.item())
                nb += 1
                step += 1
                self.global_step += 1
                if cfg.checkpoint_every and self.global_step % cfg.checkpoint_every == 0:
                    self.ckpt.save(
                        {
                            "folds_done": done,
                            "fold_pos": pos,
                            "train_idx": train_idx,
                            "val_idx": val_idx,
                            "n_val": n_val,
                            "model": model.state_dict(),
                            "optimizer": optimizer.state_dict(),
                            "scheduler": scheduler.state_dict(),
                            "best_wa": best_wa,
                            "best_epoch": best_epoch,
                            "best_state": best_state,
                            "best_val_cm": best_val_cm,
                            "losses": losses,
                            "epoch": epoch,
                            "step": step,
                            "epoch_total": total,
                            "epoch_batches": nb,
                            "rng": rng,
                            "global_step": self.global_step,
                        }  # fmt: skip
                    )
            self.stats["train_s"] = self.stats.get("train_s", 0.0) + time.perf_counter() - t_epoch
            self.stats["train_rows"] = self.stats.get("train_rows", 0) + sum(len(b) for b in plan[skip:])
            skip = 0
            scheduler.step()
            losses.append(total / max(nb, 1))
            total, nb = 0.0, 0
            rows, pred = self.predict(model, val_idx)
            val_wa = float((pred == cat.y[rows]).mean())
            if val_wa > best_wa:  # strict improvement, as the reference
                best_wa, best_epoch = val_wa, epoch
                best_val_cm = confusion_matrix(cat.y[rows], pred, c)
                best_state = copy.deepcopy(model.state_dict())
            epoch += 1
        model.load_state_dict(best_state)
        rows, pred = self.predict(model, test_rows)
        return {
            "rows": rows,
            "pred": pred,
            "val_confusion": best_val_cm,
            "n_train": int(len(train_idx)),
            "n_val": int(n_val),
            "best_epoch": best_epoch + 1,
            "best_val_wa": best_wa,
            "first_loss": losses[0],
            "last_loss": losses[-1],
        }


def train_stream(cfg: TrainConfig, log_fn=print) -> dict[str, Any]:
    """Run the recipe streaming; write metrics.json, confusion.png (and checkpoints) under cfg.output."""
    import torch

    t0 = time.perf_counter()
    storage = Storage.from_config(cfg.storage)
    cat = build_catalog(cfg, storage)
    device = _device(cfg)
    folds = _folds(cfg, cat)
    for name, train_rows, val_rows, _ in folds:
        if val_rows is None:  # the random val_fraction split of the training rows
            where = f"fold {name}" if cfg.split_column is None else f"{cfg.split_column} (no validation rows)"
            check_train_split(cfg, len(train_rows), where)
    skipped_total = sum(cat.skipped.values())
    mode = f"split by {cfg.split_column}" if cfg.split_column else f"{len(folds)} groups"
    log_fn(
        f"{len(cat)} rows ({cat.kind}, D={cat.dim}, {len(cat.label_names)} classes {cat.label_names}, "
        f"{mode}, {len(cat.units)} row groups); skipped {skipped_total}: "
        + ", ".join(f"{k} {v}" for k, v in cat.skipped.items() if v)
    )
    ckpt = Checkpoints(storage, cfg, cat)
    state = ckpt.load() if cfg.checkpoint_every else None
    torch.manual_seed(cfg.seed)  # once, at the start (the reference's order of draws follows)
    done: list[dict] = list(state["folds_done"]) if state else []
    if state:
        log_fn(f"resuming from {ckpt.uri}: {len(done)} folds done, step {state.get('global_step', 0)}")
        if state.get("fold_pos") is None:  # saved between folds: the next fold draws from here
            torch.set_rng_state(state["rng"])
    run = _Run(cfg, cat, device, ckpt, log_fn)
    if state:
        run.global_step = state["global_step"]
    c = len(cat.label_names)
    for pos, (name, train_rows, val_rows, test_rows) in enumerate(folds):
        if pos < len(done):
            continue
        in_fold = state if state is not None and state.get("fold_pos") == pos else None
        res = run.fold(pos, train_rows, val_rows, test_rows, in_fold, done)
        state = None
        done.append({"name": _json_value(name), **res})
        if cfg.checkpoint_every:
            ckpt.save({"folds_done": done, "fold_pos": None, "rng": torch.get_rng_state(),
                       "global_step": run.global_step})  # fmt: skip
        m = metrics_from_confusion(confusion_matrix(cat.y[res["rows"]], res["pred"], c))
        log_fn(
            f"{'fold' if cfg.split_column is None else 'split'} {name}: test WA {100 * m['wa']:.2f} "
            f"UA {100 * m['ua']:.2f} WF1 {100 * m['wf1']:.2f} (n={m['n']}, best epoch {res['best_epoch']}, "
            f"val WA {100 * res['best_val_wa']:.2f})"
        )
    result = _result(cfg, cat, done)
    result["seconds"] = round(time.perf_counter() - t0, 2)
    result["reader"] = {
        "wait_s": round(run.stats.get("wait_s", 0.0), 2),  # the model waiting for batches (train and eval)
        "train_s": round(run.stats.get("train_s", 0.0), 2),
        "train_rows": int(run.stats.get("train_rows", 0)),
        "peak_held_mb": round(run.stats.get("peak_held_bytes", 0) / 2**20, 1),
        "row_groups": len(cat.units),
    }
    write_outputs(storage, cfg, result, np.array(result["confusion"]), cat.label_names, cat.kind)
    m = result["mean"]
    log_fn(
        f"mean over {len(done)} folds: WA {100 * m['wa']:.2f} UA {100 * m['ua']:.2f} WF1 {100 * m['wf1']:.2f}"
    )
    return result


def _result(cfg: TrainConfig, cat: Catalog, done: list[dict]) -> dict[str, Any]:
    c = len(cat.label_names)
    folds, total_cm = [], np.zeros((c, c), np.int64)
    keys = ("n_train", "n_val", "best_epoch", "best_val_wa", "first_loss", "last_loss")
    per_group: dict[Any, np.ndarray] = {}
    for d in done:
        y, pred = cat.y[d["rows"]], d["pred"]
        cm = confusion_matrix(y, pred, c)
        total_cm += cm
        folds.append({"fold": d["name"], **metrics_from_confusion(cm)} | {k: d[k] for k in keys})
        for g in sorted(set(cat.groups[d["rows"]].tolist()) - {None}, key=lambda g: (str(type(g)), g)):
            sel = cat.groups[d["rows"]] == g
            key = _json_value(g)
            per_group[key] = per_group.get(key, np.zeros((c, c), np.int64)) + confusion_matrix(
                y[sel], pred[sel], c
            )
    mean = {k: float(np.mean([f[k] for f in folds])) for k in ("wa", "ua", "wf1")}
    splits = {
        "validation": metrics_from_confusion(sum(d["val_confusion"] for d in done)),
        "test": metrics_from_confusion(total_cm),
    }
    return {
        "folds": folds,
        "mean": mean,
        "splits": splits,
        "groups": {str(g): metrics_from_confusion(cm) for g, cm in per_group.items()},
        "labels": cat.label_names,
        "input": cat.kind,
        "split": "column" if cfg.split_column else "leave-one-group-out",
        "rows": {"used": len(cat), "skipped": sum(cat.skipped.values())},
        "skipped": cat.skipped,
        "confusion": total_cm.tolist(),
        "config": cfg.model_dump(mode="json"),
    }


def write_outputs(
    storage: Storage, cfg: TrainConfig, result: dict, cm: np.ndarray, labels, kind: str
) -> None:
    """metrics.json and confusion.png into cfg.output (a directory or a storage URI)."""
    mean = result["mean"]
    how = (
        f"split by {cfg.split_column}, test"
        if cfg.split_column
        else f"leave-one-{cfg.fold_column}-out, summed over folds"
    )
    title = (
        f"{kind} model, {how}\n"
        f"mean WA {100 * mean['wa']:.1f}  UA {100 * mean['ua']:.1f}  WF1 {100 * mean['wf1']:.1f}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        png = plot_confusion(cm, labels, Path(tmp) / "confusion.png", title=title)
        storage.makedirs(cfg.output)
        storage.write_bytes_atomic(
            join(cfg.output, "metrics.json"), (json.dumps(result, indent=2) + "\n").encode()
        )
        storage.write_bytes_atomic(join(cfg.output, "confusion.png"), png.read_bytes())
