"""Downstream classifiers on the job's Parquet output: the emotion2vec IEMOCAP recipe
(docs/model.md).

    from pipeline.downstream.train import TrainConfig, train
    result = train(TrainConfig(features="outputs/iemocap", label_column="emotion",
                               fold_column="session", output="outputs/iemocap-probe",
                               label_map={"exc": "hap"}, labels=["ang", "hap", "neu", "sad"]))
    result["mean"]   # {"wa": .., "ua": .., "wf1": ..}   fractions in [0, 1]

The default recipe is the paper's: frame features `[T, D]` -> Linear(D, 256) -> ReLU -> masked mean over
time (padding zeroed, divided by the valid count) -> Linear(256, C); CrossEntropyLoss; RMSprop(lr 5e-4,
momentum 0.9); CyclicLR(5e-4 .. 1e-3, step_size_up 10, PyTorch defaults otherwise) stepped once per epoch;
100 epochs; batches of 128 zero-padded clips, shuffled; `torch.manual_seed(seed)` once at the start.
Leave-one-group-out over `fold_column`: each group in turn is the test set, the other groups are split
80/20 at random (`random_split`) into train / validation, and the checkpoint with the best validation WA
(strict improvement; the first epoch always counts, where the reference starts from 0 and would fail if
validation WA stayed 0) is evaluated on the held-out group. The global RNG is drawn from in the
reference's order (split, model init, each DataLoader iterator's base seed, each epoch's shuffle), so on
the same rows in the same order (`order_by`) the same seed reproduces the reference run: checked against
a transcription of the reference loop, identical confusion matrices.

`input="utterance"` trains a linear probe, Linear(D, C), on the `embedding` column (the only choice when
the output was written without `output.frames`; `auto` picks it then).

Rows are skipped, and counted, when they are error rows, have no label or a label outside the label set
(after `label_map`), have no group, or (frames) have no frames. Frames are read column-wise: the
`list<fixed_size_list<float16, D>>` column becomes one `[sum T, D]` float16 array plus per-row offsets;
padded float32 batches are gathered from it with index arithmetic, never a Python loop over frames.

This module holds the config, the models, the metrics and the in-memory trainer, the reference
(`reader: memory`). `train()` runs the streaming trainer by default (stream_train.py over reader.py:
batches read as training goes, memory bounded by `shuffle_buffer_mb`, corpus splits, checkpoints);
with a buffer that holds the training rows it gives this module's numbers exactly.

Metrics (our own code, no sklearn): WA = accuracy; UA = mean recall over the classes present in the test
set; WF1 = support-weighted F1 with tp/fp/fn counted per class, as the reference does.
"""

from __future__ import annotations

import copy
import logging
import math
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from ..config import ConfigError, StorageConfig, read_yaml_mapping, validate
from ..storage import Storage

log = logging.getLogger(__name__)


# -- config ---------------------------------------------------------------------------------------


class TrainConfig(BaseModel):
    """Everything `e2v-train` takes; YAML keys and CLI flags share these names
    (`label_column` in YAML is `--label-column` on the command line). Unknown keys are errors."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    features: str = Field(description="the extraction output: a directory or s3:// prefix of Parquet files")
    label_column: str = Field(description="gold label column (a passthrough manifest column)")
    fold_column: str | None = Field(
        None,
        description="group column: leave-one-group-out over it (session, speaker, fold); with split_column, "
        "test metrics per group",
    )
    split_column: str | None = Field(
        None,
        description="train / validation / test per row (train|training, "
        "validation|valid|val|dev|development, test; other values are skipped: MSP-Podcast's Test1 needs "
        "renaming); replaces leave-one-group-out",
    )
    output: str = Field(
        description="directory or storage URI for metrics.json, confusion.png and checkpoints/"
    )
    input: Literal["auto", "frames", "utterance"] = Field(
        "auto", description="frames: the paper's recipe; utterance: linear probe on `embedding`"
    )
    epochs: int = Field(100, ge=1)
    seed: int = 42
    batch_size: int = Field(128, ge=1)
    lr: float = Field(5e-4, gt=0, description="RMSprop lr and CyclicLR base_lr")
    max_lr: float = Field(1e-3, gt=0, description="CyclicLR max_lr")
    step_size_up: int = Field(10, ge=1, description="CyclicLR step_size_up (in epochs)")
    momentum: float = Field(0.9, ge=0, lt=1)
    hidden_dim: int = Field(256, ge=1, description="width of the frame model's first layer")
    val_fraction: float = Field(0.2, gt=0, lt=1, description="share of the non-test rows for validation")
    label_map: dict[str, str] = Field(default_factory=dict, description="raw label -> label, e.g. exc: hap")
    labels: list[str] | None = Field(
        None, description="label set and order (default: sorted labels of the usable rows)"
    )
    order_by: str = Field("id", description="row order before the random split (reproducibility)")
    device: Literal["auto", "cpu", "cuda"] = Field("auto", description="auto: cuda when available")
    reader: Literal["stream", "memory"] = Field(
        "stream", description="stream: bounded memory (pipeline/downstream/reader.py); memory: the reference"
    )
    shuffle_buffer_mb: float = Field(
        1024.0,
        gt=0,
        description="stream: rows held for shuffling (stored frames); bounds the reader's memory",
    )
    prefetch_batches: int = Field(2, ge=1, description="stream: padded batches built ahead of the model")
    read_ahead: int = Field(2, ge=1, description="stream: row groups read in parallel ahead of need")
    checkpoint_every: int = Field(
        500, ge=0, description="stream: steps between checkpoints in OUTPUT/checkpoints/ (0: none)"
    )
    storage: StorageConfig = StorageConfig()

    @model_validator(mode="after")
    def _fold_or_split(self) -> TrainConfig:
        if self.fold_column is None and self.split_column is None:
            raise ValueError("fold_column: required key is missing (or give split_column)")
        if self.reader == "memory" and self.split_column is not None:
            raise ValueError("split_column: needs reader: stream")
        return self

    @field_validator("labels", mode="before")
    @classmethod
    def _split_labels(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [s.strip() for s in v.split(",") if s.strip()]
        return v

    @field_validator("labels")
    @classmethod
    def _labels_unique(cls, v: list[str] | None) -> list[str] | None:
        if v is not None:
            if len(v) < 2:
                raise ValueError("need at least two labels")
            if len(set(v)) != len(v):
                raise ValueError("labels repeat")
        return v

    @field_validator("label_map", mode="before")
    @classmethod
    def _parse_label_map(cls, v: Any) -> Any:
        if v is None:
            return {}
        if isinstance(v, str):
            v = [v]
        if isinstance(v, list | tuple):
            out = {}
            for item in v:
                src, sep, dst = str(item).partition("=")
                if not sep or not src.strip() or not dst.strip():
                    raise ValueError(f"{item!r}: expected RAW=LABEL")
                out[src.strip()] = dst.strip()
            return out
        return v


def load_train_config(path: str | Path | None, overrides: dict[str, Any] | None = None) -> TrainConfig:
    """YAML file (optional) + overrides (CLI values that were given) -> validated `TrainConfig`.
    Problems raise `ConfigError` naming the key."""
    data = read_yaml_mapping(path, "keys (features, label_column, ...)") if path is not None else {}
    data.update({k: v for k, v in (overrides or {}).items() if v is not None})
    return validate(TrainConfig, data, str(path) if path is not None else "train config")


# -- reading the output ---------------------------------------------------------------------------


def open_output(uri: str, storage: Storage | None = None) -> pads.Dataset:
    """The Parquet files under `uri` (local directory or s3:// prefix; `_run.json`, hidden and temp
    files excluded) as one pyarrow dataset."""
    storage = storage or Storage()
    files = storage.list_files(uri, ".parquet")
    if not files:
        raise FileNotFoundError(f"no Parquet files under {uri}")
    fs, _ = storage.resolve(uri)
    return pads.dataset([storage.resolve(f)[1] for f in files], filesystem=fs, format="parquet")


def frames_to_numpy(column: pa.ChunkedArray | pa.Array) -> tuple[np.ndarray, np.ndarray]:
    """`list<fixed_size_list<float16, D>>` -> (values [sum T, D] in the stored dtype, lengths [N]).
    Column-wise: one flatten per chunk, no per-row or per-frame Python work. Null rows have length 0."""
    chunks = column.chunks if isinstance(column, pa.ChunkedArray) else [column]
    dim = column.type.value_type.list_size
    values, lengths = [], []
    for chunk in chunks:
        lengths.append(pc.fill_null(pc.list_value_length(chunk), 0).to_numpy().astype(np.int64))
        inner = chunk.flatten()  # FixedSizeListArray over this chunk's (sliced) rows, nulls dropped
        values.append(inner.flatten().to_numpy(zero_copy_only=False).reshape(-1, dim))  # [T_chunk, D]
    if not values:
        return np.zeros((0, dim), np.float16), np.zeros(0, np.int64)
    return (values[0] if len(values) == 1 else np.concatenate(values)), np.concatenate(lengths)


def embeddings_to_numpy(column: pa.ChunkedArray | pa.Array) -> np.ndarray:
    """`fixed_size_list<float32, D>` -> [N, D] float32 (no nulls expected: filter error rows first)."""
    col = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
    if col.null_count:
        raise ValueError("embedding column has nulls (error rows?)")
    dim = col.type.list_size
    return col.flatten().to_numpy(zero_copy_only=False).astype(np.float32, copy=False).reshape(-1, dim)


@dataclass
class FeatureSet:
    """Rows kept for training, in `order_by` order.

    frames: feats [sum T, D] float16 (file order), offsets [N] into it, lengths [N] (frames per row).
    utterance: feats [N, D] float32, offsets = arange(N), lengths = 1."""

    kind: str
    ids: list[str]
    y: np.ndarray  # [N] int64 index into label_names
    groups: np.ndarray  # [N] group value per row (object)
    feats: np.ndarray
    offsets: np.ndarray
    lengths: np.ndarray
    label_names: list[str]
    skipped: dict[str, int] = field(default_factory=dict)

    @property
    def dim(self) -> int:
        return int(self.feats.shape[1])

    def __len__(self) -> int:
        return len(self.ids)


SPLITS = {"train": "train", "training": "train", "validation": "validation", "valid": "validation",
          "val": "validation", "dev": "validation", "development": "validation", "test": "test"}  # fmt: skip


def select_rows(
    light: pa.Table, cfg: TrainConfig, kind: str
) -> tuple[pa.Table, np.ndarray, list[str], dict[str, int]]:
    """The rows to train and evaluate on -> (those rows sorted by (`order_by`, id), their label index,
    the label names, skipped counts by reason). Skipped, in this order: error rows; no label; a label
    outside the set (after `label_map`); no group (leave-one-group-out) or no known split value
    (`split_column`); (frames) no frames. Without an `error` column no row is an error row."""
    n_rows = light.num_rows
    order_col = cfg.order_by if cfg.order_by in light.column_names else "id"
    ok = (
        pc.is_null(light["error"]).to_numpy(zero_copy_only=False)
        if "error" in light.column_names
        else np.ones(n_rows, bool)  # features written by another tool: no error rows (as summary.py reads)
    )
    raw = light[cfg.label_column].cast(pa.string()).to_pylist()
    mapped = [None if r is None else cfg.label_map.get(r, r) for r in raw]
    if cfg.split_column is None:
        has_place = pc.is_valid(light[cfg.fold_column]).to_numpy(zero_copy_only=False)
    else:
        split = light[cfg.split_column].cast(pa.string()).to_pylist()
        has_place = np.array([v is not None and v.strip().lower() in SPLITS for v in split], bool)
    has_frames = np.ones(n_rows, bool)
    if kind == "frames":
        has_frames = pc.fill_null(light["num_frames"], 0).to_numpy(zero_copy_only=False) >= 1
    # the labels of rows that train or test: one seen only on rows skipped anyway would be a dead class
    usable = ok & has_place & has_frames
    label_names = cfg.labels or sorted(
        {m for m, good in zip(mapped, usable, strict=True) if good and m is not None}
    )
    if len(label_names) == 1:  # a one-class model is always right: 100 % on every metric, meaning nothing
        raise ValueError(
            f"{cfg.label_column}: one label ({label_names[0]!r}) among the usable rows"
            + (" after label_map" if cfg.label_map else "")
            + "; a classifier needs at least two"
        )
    index = {name: i for i, name in enumerate(label_names)}
    has_label = np.array([m is not None for m in mapped], bool)
    in_set = np.array([m in index for m in mapped], bool)
    if not cfg.labels:
        # no set was asked for: a label missing from the one drawn from the usable rows is only on rows
        # skipped for another reason, counted under it (a fold column null everywhere is `no_group`)
        in_set = has_label
    skipped = {
        "error": int((~ok).sum()),
        "no_label": int((ok & ~has_label).sum()),
        "label_not_in_set": int((ok & has_label & ~in_set).sum()),
    }
    if cfg.split_column is None:
        skipped["no_group"] = int((ok & in_set & ~has_place).sum())
    else:
        skipped["no_split"] = int((ok & in_set & ~has_place).sum())
        # a count alone hides why: corpora name their sets their own way (MSP-Podcast: Test1, Test2)
        unknown = Counter(v for v, s in zip(split, ok & in_set & ~has_place, strict=True) if s)
        if unknown:
            log.warning(
                "%s: rows skipped for a value that is not train, validation or test: %s",
                cfg.split_column,
                ", ".join(f"{v!r} ({n} rows)" for v, n in sorted(unknown.items(), key=lambda t: str(t[0]))),
            )
    skipped["no_frames"] = int((ok & in_set & has_place & ~has_frames).sum())
    keep = ok & in_set & has_place & has_frames
    kept = light.filter(pa.array(keep))
    order = pc.sort_indices(kept, sort_keys=[(order_col, "ascending"), ("id", "ascending")])
    kept = kept.take(order)
    y = np.array(
        [index[cfg.label_map.get(r, r)] for r in kept[cfg.label_column].cast(pa.string()).to_pylist()],
        np.int64,
    )
    return kept, y, label_names, skipped


def resolve_input(cfg: TrainConfig, names: set[str]) -> tuple[str, str, str]:
    """The output's columns `names` against the config -> (input kind, its feature column, the column
    rows are ordered by). The configured label / fold / split / order_by columns and the feature column
    must exist: errors name the key and the missing column."""
    for key in ("label_column", "fold_column", "split_column", "order_by"):
        col = getattr(cfg, key)
        if col is not None and col not in names:
            raise ConfigError(f"{key}: no column {col!r} in {cfg.features} (columns: {sorted(names)})")
    kind = cfg.input
    if kind == "auto":
        kind = "frames" if "frames" in names else "utterance"
    feature_col = "frames" if kind == "frames" else "embedding"
    if feature_col not in names:
        raise ConfigError(
            f"input: {kind} needs the {feature_col!r} column, which {cfg.features} lacks"
            + (
                " (run the extraction with output.frames: true, or use --input utterance)"
                if kind == "frames"
                else ""
            )
        )
    return kind, feature_col, cfg.order_by


def load_features(cfg: TrainConfig) -> FeatureSet:
    storage = Storage.from_config(cfg.storage)
    ds = open_output(cfg.features, storage)
    kind, feature_col, order_col = resolve_input(cfg, set(ds.schema.names))

    # pass 1: the small columns, to decide which rows to keep
    names = set(ds.schema.names)
    light_cols = [c for c in dict.fromkeys(["id", "error", cfg.label_column, cfg.fold_column, order_col])
                  if c != "error" or "error" in names]  # fmt: skip
    columns: list[str] | dict[str, Any] = light_cols
    if kind == "frames":
        if "num_frames" in names:
            light_cols.append("num_frames")
        else:  # frames written by another tool, without the job's count: count them (null counts 0)
            columns = {c: pc.field(c) for c in light_cols}
            columns["num_frames"] = pc.list_value_length(pc.field(feature_col))
    kept, y, label_names, skipped = select_rows(ds.to_table(columns=columns), cfg, kind)
    ids = kept["id"].to_pylist()
    groups = np.array(kept[cfg.fold_column].to_pylist(), dtype=object)
    if not ids:
        raise ValueError(f"no usable rows in {cfg.features} (skipped: {skipped})")

    # pass 2: the feature column of the kept rows only, then index them into `ids` order
    heavy = ds.to_table(columns=["id", feature_col], filter=pc.field("id").isin(pa.array(ids, pa.string())))
    pos = pc.index_in(heavy["id"], value_set=pa.array(ids, pa.string())).to_numpy(zero_copy_only=False)
    if heavy.num_rows != len(ids) or len(set(pos.tolist())) != len(ids):
        raise ValueError(f"ids are not unique in {cfg.features}")
    if kind == "frames":
        feats, file_lengths = frames_to_numpy(heavy[feature_col])  # [sum T, D] float16, [N]
        file_offsets = np.concatenate([[0], np.cumsum(file_lengths)[:-1]]).astype(np.int64)
        inv = np.empty(len(ids), np.int64)
        inv[pos] = np.arange(len(ids))  # inv[k] = heavy row of the k-th kept id
        offsets, lengths = file_offsets[inv], file_lengths[inv]
        if (lengths == 0).any():  # kept for its num_frames >= 1, yet no frames
            from .reader import frames_missing

            k = int(np.flatnonzero(lengths == 0)[0])
            raise frames_missing(cfg.features, ids[k], int(kept["num_frames"][k].as_py()))
    else:
        emb = embeddings_to_numpy(heavy[feature_col])  # [N, D] in heavy order
        feats = np.empty_like(emb)
        feats[pos] = emb
        offsets, lengths = np.arange(len(ids), dtype=np.int64), np.ones(len(ids), np.int64)
    return FeatureSet(kind, ids, y.astype(np.int64), groups, feats, offsets, lengths, label_names, skipped)


# -- models ---------------------------------------------------------------------------------------


def _torch():
    import torch

    return torch


def frame_model(input_dim: int, num_classes: int, hidden_dim: int = 256):
    """The recipe's `BaseModel`: Linear(D, H) -> ReLU -> masked mean over T -> Linear(H, C)."""
    torch = _torch()
    nn = torch.nn

    class FrameClassifier(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.pre_net = nn.Linear(input_dim, hidden_dim)  # created first: the reference's init order
            self.post_net = nn.Linear(hidden_dim, num_classes)
            self.activate = nn.ReLU()

        def forward(self, x, padding_mask):  # x [B, T, D], padding_mask [B, T] True at padding
            h = self.activate(self.pre_net(x))  # [B, T, H]
            valid = (~padding_mask).unsqueeze(-1).to(h.dtype)  # [B, T, 1]
            h = (h * valid).sum(dim=1) / valid.sum(dim=1)  # [B, H]
            return self.post_net(h)  # [B, C]

    return FrameClassifier()


def linear_probe(input_dim: int, num_classes: int):
    torch = _torch()

    class LinearProbe(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.linear = torch.nn.Linear(input_dim, num_classes)

        def forward(self, x, padding_mask=None):  # x [B, D]
            return self.linear(x)  # [B, C]

    return LinearProbe()


def collate_frames(fs: FeatureSet, idx: np.ndarray):
    """Rows `idx` -> (x [B, T, D] float32 zero-padded, padding_mask [B, T] bool, y [B])."""
    torch = _torch()
    idx = np.asarray(idx, np.int64)
    lens = fs.lengths[idx]  # [B]
    b, t = len(idx), int(lens.max())
    total = int(lens.sum())
    row = np.repeat(np.arange(b), lens)  # [sum L] destination row of each frame
    start = np.cumsum(lens) - lens
    pos = np.arange(total) - np.repeat(start, lens)  # [sum L] time index within its row
    src = np.repeat(fs.offsets[idx], lens) + pos  # [sum L] source frame in fs.feats
    x = np.zeros((b, t, fs.dim), np.float32)
    x[row, pos] = fs.feats[src]
    mask = np.arange(t)[None, :] >= lens[:, None]  # [B, T]
    return torch.from_numpy(x), torch.from_numpy(mask), torch.from_numpy(fs.y[idx])


def collate_utterances(fs: FeatureSet, idx: np.ndarray):
    torch = _torch()
    idx = np.asarray(idx, np.int64)
    return torch.from_numpy(fs.feats[fs.offsets[idx]]), None, torch.from_numpy(fs.y[idx])


# -- metrics --------------------------------------------------------------------------------------


def confusion_matrix(y_true, y_pred, num_classes: int) -> np.ndarray:
    """[C, C] counts, rows = true class, columns = predicted class."""
    y_true = np.asarray(y_true, np.int64)
    y_pred = np.asarray(y_pred, np.int64)
    return np.bincount(y_true * num_classes + y_pred, minlength=num_classes * num_classes).reshape(
        num_classes, num_classes
    )


def metrics_from_confusion(cm: np.ndarray) -> dict[str, float]:
    """WA, UA (mean recall over classes with support), WF1 (support-weighted F1) as fractions, and n."""
    cm = np.asarray(cm, np.float64)
    n = cm.sum()
    if n == 0:
        return {"wa": math.nan, "ua": math.nan, "wf1": math.nan, "n": 0}
    tp = np.diag(cm)
    support = cm.sum(axis=1)  # true count per class
    predicted = cm.sum(axis=0)
    present = support > 0
    recall = np.divide(tp, support, out=np.zeros_like(tp), where=support > 0)
    precision = np.divide(tp, predicted, out=np.zeros_like(tp), where=predicted > 0)
    denom = precision + recall
    f1 = np.divide(2 * precision * recall, denom, out=np.zeros_like(tp), where=denom > 0)
    return {
        "wa": float(tp.sum() / n),
        "ua": float(recall[present].mean()),
        "wf1": float((f1 * support).sum() / n),
        "n": int(n),
    }


# -- training -------------------------------------------------------------------------------------


def _predict(model, fs: FeatureSet, idx: np.ndarray, batch_size: int, device) -> np.ndarray:
    """Argmax class of rows `idx`. Through a (sequential) DataLoader like the reference's
    validate_and_test: creating its iterator draws one seed from the global RNG, and matching
    that keeps the later shuffles, splits and inits on the reference's random stream."""
    torch = _torch()
    from torch.utils.data import DataLoader

    collate = collate_frames if fs.kind == "frames" else collate_utterances
    loader = DataLoader(
        idx.tolist(), batch_size=batch_size, shuffle=False, collate_fn=lambda b: collate(fs, b)
    )
    model.eval()
    out = []
    with torch.no_grad():
        for x, mask, _ in loader:
            logits = model(x.to(device), None if mask is None else mask.to(device))
            out.append(logits.argmax(dim=1).cpu().numpy())
    return np.concatenate(out) if out else np.zeros(0, np.int64)


def make_optimizer(cfg: TrainConfig, model):
    """RMSprop(lr, momentum) + CyclicLR(lr .. max_lr, step_size_up; triangular, cycle_momentum 0.8-0.9:
    PyTorch's defaults), the scheduler stepped once per epoch by the caller."""
    torch = _torch()
    optimizer = torch.optim.RMSprop(model.parameters(), lr=cfg.lr, momentum=cfg.momentum)
    scheduler = torch.optim.lr_scheduler.CyclicLR(
        optimizer, base_lr=cfg.lr, max_lr=cfg.max_lr, step_size_up=cfg.step_size_up
    )
    return optimizer, scheduler


def check_train_split(cfg: TrainConfig, n: int, where: str) -> None:
    """`n` rows to split at random into train / validation must leave a training row: checked for every
    fold before any trains (torch's sampler would stop with 'num_samples should be a positive integer
    value', naming neither the fold nor the counts)."""
    if int((1 - cfg.val_fraction) * n) == 0:
        raise ValueError(
            f"{where}: {n} rows to split into train and validation, and val_fraction {cfg.val_fraction} "
            "leaves none to train on (lower val_fraction, or add rows)"
        )


def train_fold(cfg: TrainConfig, fs: FeatureSet, train_val: np.ndarray, test: np.ndarray, device) -> dict:
    """One leave-one-group-out fold: split, train, keep the best-validation checkpoint, test."""
    torch = _torch()
    from torch.utils.data import DataLoader, random_split

    n_train = int((1 - cfg.val_fraction) * len(train_val))
    n_val = len(train_val) - n_train
    # same draw as the reference: random_split over the train+val rows, then model init, then shuffles
    train_sub, val_sub = random_split(range(len(train_val)), [n_train, n_val])
    train_idx = train_val[np.asarray(list(train_sub), np.int64)]
    val_idx = train_val[np.asarray(list(val_sub), np.int64)]
    if n_val == 0:  # too few rows to hold any out: select on the training rows
        val_idx = train_idx

    c = len(fs.label_names)
    if fs.kind == "frames":
        model = frame_model(fs.dim, c, cfg.hidden_dim)
    else:
        model = linear_probe(fs.dim, c)
    model = model.to(device)
    optimizer, scheduler = make_optimizer(cfg, model)
    criterion = torch.nn.CrossEntropyLoss()
    collate = collate_frames if fs.kind == "frames" else collate_utterances
    loader = DataLoader(
        train_idx.tolist(), batch_size=cfg.batch_size, shuffle=True, collate_fn=lambda b: collate(fs, b)
    )

    best_wa, best_epoch, best_state = -1.0, -1, None
    losses = []
    for epoch in range(cfg.epochs):
        model.train()
        total, batches = 0.0, 0
        for x, mask, y in loader:
            optimizer.zero_grad()
            logits = model(x.to(device), None if mask is None else mask.to(device))
            loss = criterion(logits, y.to(device))
            loss.backward()
            optimizer.step()
            total += float(loss.item())
            batches += 1
        scheduler.step()
        losses.append(total / max(batches, 1))
        pred = _predict(model, fs, val_idx, cfg.batch_size, device)
        val_wa = float((pred == fs.y[val_idx]).mean())
        if val_wa > best_wa:  # strict improvement, as the reference
            best_wa, best_epoch = val_wa, epoch
            best_state = copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    pred = _predict(model, fs, test, cfg.batch_size, device)
    cm = confusion_matrix(fs.y[test], pred, c)
    return {
        "confusion": cm,
        "n_train": int(len(train_idx)),
        "n_val": int(n_val),
        "best_epoch": best_epoch + 1,
        "best_val_wa": best_wa,
        "first_loss": losses[0],
        "last_loss": losses[-1],
    }


def pick_device(cfg: TrainConfig):
    """`device` -> torch.device; `cuda` where torch sees none is a config error (exit 2), not a traceback
    from the first `model.to`."""
    torch = _torch()
    if cfg.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("device: cuda, but torch finds no CUDA device here (use auto or cpu)")
    return torch.device(
        "cuda" if cfg.device == "cuda" or (cfg.device == "auto" and torch.cuda.is_available()) else "cpu"
    )


def _json_value(v: Any) -> Any:
    return v.item() if isinstance(v, np.generic) else v


def train(cfg: TrainConfig, fs: FeatureSet | None = None, log_fn=print) -> dict[str, Any]:
    """Run the leave-one-group-out recipe and write `metrics.json` + `confusion.png` into cfg.output.
    Returns the metrics dict."""
    if fs is None and cfg.reader == "stream":
        from .stream_train import train_stream

        return train_stream(cfg, log_fn)
    torch = _torch()
    t0 = time.perf_counter()
    device = pick_device(cfg)
    fs = fs or load_features(cfg)
    group_values = sorted(set(fs.groups.tolist()), key=lambda g: (str(type(g)), g))
    if len(group_values) < 2:
        raise ValueError(
            f"{cfg.fold_column}: leave-one-group-out needs at least 2 groups, found {group_values}"
        )
    for g in group_values:
        check_train_split(cfg, int((fs.groups != g).sum()), f"fold {g}")
    skipped_total = sum(fs.skipped.values())
    log_fn(
        f"{len(fs)} rows ({fs.kind}, D={fs.dim}, {len(fs.label_names)} classes {fs.label_names}, "
        f"{len(group_values)} groups); skipped {skipped_total}: "
        + ", ".join(f"{k} {v}" for k, v in fs.skipped.items() if v)
    )

    torch.manual_seed(cfg.seed)  # once, at the start (the reference's order of draws follows)
    folds, total_cm = [], np.zeros((len(fs.label_names),) * 2, np.int64)
    for g in group_values:
        is_test = fs.groups == g
        test = np.flatnonzero(is_test)
        train_val = np.flatnonzero(~is_test)
        res = train_fold(cfg, fs, train_val, test, device)
        m = metrics_from_confusion(res["confusion"])
        total_cm += res["confusion"]
        folds.append(
            {"fold": _json_value(g), **m}
            | {
                k: res[k]
                for k in ("n_train", "n_val", "best_epoch", "best_val_wa", "first_loss", "last_loss")
            }
        )
        log_fn(
            f"fold {g}: test WA {100 * m['wa']:.2f} UA {100 * m['ua']:.2f} WF1 {100 * m['wf1']:.2f} "
            f"(n={m['n']}, best epoch {res['best_epoch']}, val WA {100 * res['best_val_wa']:.2f})"
        )
    mean = {k: float(np.mean([f[k] for f in folds])) for k in ("wa", "ua", "wf1")}
    log_fn(
        f"mean over {len(folds)} folds: WA {100 * mean['wa']:.2f} UA {100 * mean['ua']:.2f} WF1 {100 * mean['wf1']:.2f}"
    )
    result = {
        "folds": folds,
        "mean": mean,
        "labels": fs.label_names,
        "input": fs.kind,
        "rows": {"used": len(fs), "skipped": skipped_total},
        "skipped": fs.skipped,
        "confusion": total_cm.tolist(),
        "seconds": round(time.perf_counter() - t0, 2),
        "config": cfg.model_dump(mode="json"),
    }
    # through Storage, as the streaming trainer: `output` may be a URI (s3://, file://), not only a path
    from .stream_train import write_outputs

    write_outputs(Storage.from_config(cfg.storage), cfg, result, total_cm, fs.label_names, fs.kind)
    return result


def plot_confusion(cm: np.ndarray, labels: list[str], path: Path, title: str = "") -> Path:
    """Counts annotated, colour = row-normalised share (recall per true class)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cm = np.asarray(cm)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    c = len(labels)
    fig, ax = plt.subplots(figsize=(1.1 * c + 3, 1.0 * c + 2.5), dpi=120)
    im = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    for i in range(c):
        for j in range(c):
            ax.text(
                j,
                i,
                f"{cm[i, j]}\n{100 * share[i, j]:.0f}%",
                ha="center",
                va="center",
                fontsize=9,
                color="white" if share[i, j] > 0.6 else "black",
            )
    ax.set_xticks(range(c), labels, rotation=45, ha="right")
    ax.set_yticks(range(c), labels)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    if title:
        ax.set_title(title, fontsize=9)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="share of true class")
    fig.tight_layout()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path
