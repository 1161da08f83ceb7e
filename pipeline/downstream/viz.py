"""Pictures of the job's output: a 2-D UMAP map of utterance embeddings and label charts (PNG).

    from pipeline.downstream.viz import visualize
    visualize("outputs/iemocap", "outputs/iemocap-viz", color_by="label", gold="emotion")

Writes into the output directory:
  umap_<column>.png        embeddings (cosine UMAP) coloured by `color_by` (default: predicted `label`)
                           and, when `gold` is given, a second map coloured by it
  label_counts.png         predicted label counts (and gold counts beside them when `gold` is given)
  gold_vs_predicted.png    heat map of gold (rows) against predicted label (columns), when `gold` is given

Error rows (without an `error` column: rows without an embedding) are left out. UMAP needs
n_neighbors < N: it uses min(15, N - 1); below 4 points the map is a plain 2-D SVD projection instead
(said in the title). A numeric colour column with many values gets a
continuous colour scale; anything else is categorical. Head-less models (emotion2vec_base) write no
predicted label: the charts then fall back to the gold column when there is one.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from ..storage import Storage
from .train import embeddings_to_numpy, open_output

log = logging.getLogger(__name__)

_MISSING = "(none)"


def _plt():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def load_embeddings(
    features: str,
    columns: list[str],
    storage: Storage | None = None,
    max_points: int | None = None,
    seed: int = 42,
) -> tuple[np.ndarray, pa.Table]:
    """-> (embeddings [N, D] float32, table of `columns` for the same N ok rows, sorted by id).
    `max_points` keeps a random sample of that many rows (big outputs)."""
    ds = open_output(features, storage)
    names = set(ds.schema.names)
    missing = [c for c in columns if c not in names]
    if missing:
        raise ValueError(f"no column {missing[0]!r} in {features} (columns: {sorted(names)})")
    cols = list(dict.fromkeys(["id", "embedding", *columns]))
    # features written by another tool may have no `error` column (no error rows, as train.py and
    # summary.py read them): the rows without an embedding are the ones left out then
    ok = pc.field("error").is_null() if "error" in names else pc.field("embedding").is_valid()
    table = ds.to_table(columns=cols, filter=ok)
    table = table.take(pc.sort_indices(table, sort_keys=[("id", "ascending")]))
    if max_points is not None and table.num_rows > max_points:
        keep = np.sort(np.random.default_rng(seed).choice(table.num_rows, max_points, replace=False))
        table = table.take(pa.array(keep))
    return embeddings_to_numpy(table["embedding"]), table.drop_columns(["embedding"])


def project_2d(emb: np.ndarray, seed: int = 42) -> tuple[np.ndarray, str]:
    """[N, D] -> ([N, 2], method). Cosine UMAP with n_neighbors = min(15, N - 1); SVD below 4 points."""
    n = len(emb)
    if n == 0:
        return np.zeros((0, 2), np.float32), "empty"
    if n < 4:
        x = emb - emb.mean(axis=0, keepdims=True)
        u, s, _ = np.linalg.svd(x, full_matrices=False)
        xy = np.zeros((n, 2), np.float32)
        s = np.where(s > 1e-6 * max(float(s.max()), 1e-30), s, 0.0)  # 2 points: one real axis
        k = min(2, len(s))
        xy[:, :k] = u[:, :k] * s[:k]
        return xy, "SVD (too few points for UMAP)"
    import umap

    k = min(15, n - 1)
    reducer = umap.UMAP(
        n_neighbors=k,
        n_components=2,
        metric="cosine",
        random_state=seed,
        n_jobs=1,
        init="spectral" if n >= 20 else "random",  # the spectral init is unstable on tiny graphs
    )
    return reducer.fit_transform(emb).astype(np.float32), f"UMAP (cosine, n_neighbors={k})"


def _categories(values: list[Any]) -> list[str]:
    return [_MISSING if v is None else f"{v:.3g}" if isinstance(v, float) else str(v) for v in values]


def _is_continuous(col: pa.ChunkedArray) -> bool:
    t = col.type
    if not (pa.types.is_floating(t) or pa.types.is_integer(t)):
        return False
    return len(pc.unique(col.drop_null())) > 12


def plot_map(xy: np.ndarray, col: pa.ChunkedArray, name: str, path: Path, method: str) -> Path:
    plt = _plt()
    fig, ax = plt.subplots(figsize=(8, 6.5), dpi=110)
    size = 36 if len(xy) < 500 else max(2, 36 * 500 / len(xy))
    if _is_continuous(col):
        v = col.cast(pa.float64()).to_numpy(zero_copy_only=False)
        sc = ax.scatter(xy[:, 0], xy[:, 1], c=v, cmap="viridis", s=size, alpha=0.85, linewidths=0)
        fig.colorbar(sc, ax=ax, label=name)
    else:
        cats = _categories(col.to_pylist())
        levels = sorted(set(cats), key=lambda c: (c == _MISSING, c))
        cmap = plt.get_cmap("tab10" if len(levels) <= 10 else "tab20")
        arr = np.array(cats, dtype=object)
        for i, level in enumerate(levels):
            m = arr == level
            ax.scatter(
                xy[m, 0],
                xy[m, 1],
                s=size,
                alpha=0.85,
                linewidths=0,
                color="lightgrey" if level == _MISSING else cmap(i % cmap.N),
                label=f"{level} ({int(m.sum())})",
            )
        ax.legend(title=name, fontsize=8, markerscale=1.2, loc="best", framealpha=0.8)
    ax.set_title(f"utterance embeddings, {method}, coloured by {name} (N={len(xy)})", fontsize=10)
    ax.set_xlabel("dim 1")
    ax.set_ylabel("dim 2")
    ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_label_counts(
    pred: list[str] | None, gold: list[str] | None, path: Path, names=("label", "gold")
) -> Path:
    """Bar chart of label counts: predicted, and gold beside it when given."""
    plt = _plt()
    series = [(n, s) for n, s in zip(names, (pred, gold), strict=True) if s is not None]
    fig, axes = plt.subplots(1, len(series), figsize=(6 * len(series), 4.5), dpi=110, squeeze=False)
    for ax, (name, values) in zip(axes[0], series, strict=True):
        levels, counts = np.unique(np.array(values, dtype=object).astype(str), return_counts=True)
        order = np.argsort(-counts, kind="stable")
        levels, counts = levels[order], counts[order]
        colors = plt.get_cmap("tab10" if len(levels) <= 10 else "tab20")(np.arange(len(levels)) % 20)
        bars = ax.bar(range(len(levels)), counts, color=colors)
        ax.bar_label(bars, labels=[str(c) for c in counts], fontsize=8)
        ax.set_xticks(range(len(levels)), levels, rotation=45, ha="right")
        ax.set_ylabel("utterances")
        ax.set_title(f"{name} counts (N={len(values)})", fontsize=10)
        ax.grid(axis="y", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_gold_vs_pred(gold: list[str], pred: list[str], path: Path, names=("gold", "label")) -> Path:
    """Heat map: rows = gold label, columns = predicted label; counts annotated, colour = row share."""
    plt = _plt()
    g_levels = sorted(set(gold))
    p_levels = sorted(set(pred))
    gi = {v: i for i, v in enumerate(g_levels)}
    pj = {v: j for j, v in enumerate(p_levels)}
    cm = np.zeros((len(g_levels), len(p_levels)), np.int64)
    np.add.at(cm, ([gi[g] for g in gold], [pj[p] for p in pred]), 1)
    share = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1)
    fig, ax = plt.subplots(figsize=(1.0 * len(p_levels) + 3.5, 0.7 * len(g_levels) + 2.5), dpi=110)
    im = ax.imshow(share, cmap="magma_r", vmin=0, vmax=1, aspect="auto")
    for i in range(len(g_levels)):
        for j in range(len(p_levels)):
            ax.text(j, i, str(cm[i, j]), ha="center", va="center", fontsize=8,
                    color="white" if share[i, j] > 0.55 else "black")  # fmt: skip
    ax.set_xticks(range(len(p_levels)), p_levels, rotation=45, ha="right")
    ax.set_yticks(range(len(g_levels)), g_levels)
    ax.set_xlabel(f"predicted ({names[1]})")
    ax.set_ylabel(f"gold ({names[0]})")
    ax.set_title(f"{names[0]} vs predicted {names[1]} (N={len(gold)})", fontsize=10)
    fig.colorbar(im, ax=ax, label="share of gold row")
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def visualize(
    features: str,
    output: str | Path,
    *,
    color_by: str | None = None,
    gold: str | None = None,
    storage: Storage | None = None,
    max_points: int | None = 50_000,
    seed: int = 42,
) -> list[Path]:
    """Write the PNGs described in the module docstring; returns their paths."""
    out = Path(output)
    out.mkdir(parents=True, exist_ok=True)
    color_by = color_by or "label"
    cols = list(dict.fromkeys(["label", color_by] + ([gold] if gold else [])))
    emb, table = load_embeddings(features, cols, storage, max_points, seed)
    if len(emb) == 0:
        raise ValueError(f"no ok rows in {features}")
    pred = table["label"].to_pylist()
    has_pred = any(p is not None for p in pred)
    if color_by == "label" and not has_pred and gold:
        log.warning("no predicted labels (head-less model): colouring by %s", gold)
        color_by = gold
    xy, method = project_2d(emb, seed)
    written = [plot_map(xy, table[color_by], color_by, out / f"umap_{color_by}.png", method)]
    if gold and gold != color_by:
        written.append(plot_map(xy, table[gold], gold, out / f"umap_{gold}.png", method))
    gold_values = _categories(table[gold].to_pylist()) if gold else None
    pred_values = _categories(pred) if has_pred else None
    if pred_values is not None or gold_values is not None:
        written.append(
            plot_label_counts(pred_values, gold_values, out / "label_counts.png", ("label", gold or ""))
        )
    if gold_values is not None and pred_values is not None:
        written.append(
            plot_gold_vs_pred(gold_values, pred_values, out / "gold_vs_predicted.png", (gold, "label"))
        )
    return written
