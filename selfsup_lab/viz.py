"""Matplotlib figures. Every function returns a Figure (so notebooks can show it) and never calls plt.show().

Run figures (`save_run_figures`): training curves, a 2-D embedding coloured by class, and for clustering
methods the three occupancy pictures this lab exists for — sorted cluster sizes, sizes over time
(heatmap), and the normalised entropy over time.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _in_notebook() -> bool:
    try:
        from IPython import get_ipython

        return get_ipython() is not None and "IPKernelApp" in get_ipython().config
    except Exception:
        return False


def training_curves(history: list[dict], title: str = ""):
    """Loss, learning rate, and whatever else was logged per epoch (kNN, positive rank, entropy)."""
    plt = _plt()
    epochs = [r["epoch"] for r in history]
    panels = [("loss", "loss"), ("lr", "learning rate")]
    for key, label in (("knn_top1", "kNN top-1"), ("pos_top1", "positive ranked first"),
                       ("entropy_ratio", "occupancy entropy H/log K")):
        if any(key in r or key in r.get("occupancy", {}) for r in history):
            panels.append((key, label))
    fig, axes = plt.subplots(1, len(panels), figsize=(3.2 * len(panels), 2.8), squeeze=False)
    for ax, (key, label) in zip(axes[0], panels):
        xs, ys = [], []
        for e, r in zip(epochs, history):
            v = r.get(key, r.get("occupancy", {}).get(key))
            if v is not None:
                xs.append(e)
                ys.append(v)
        ax.plot(xs, ys, marker="o" if len(xs) < 15 else None, ms=3)
        ax.set_xlabel("epoch")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def embedding_2d(features: torch.Tensor, labels: torch.Tensor, class_names=None, method: str = "tsne",
                 max_points: int = 2000, seed: int = 0, title: str = "", ax=None):
    """Features projected to 2-D (t-SNE, PCA, or UMAP if umap-learn is installed), coloured by label."""
    plt = _plt()
    x = torch.nn.functional.normalize(features.float(), dim=1).cpu().numpy()
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if len(x) > max_points:
        keep = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
        x, y = x[keep], y[keep]
    if method == "umap":
        import umap  # notebook extra: imported only when asked for

        xy = umap.UMAP(random_state=seed).fit_transform(x)
    elif method == "tsne":
        from sklearn.manifold import TSNE

        xy = TSNE(n_components=2, init="pca", random_state=seed, perplexity=min(30, max(5, len(x) // 10))).fit_transform(x)
    else:
        from sklearn.decomposition import PCA

        xy = PCA(n_components=2, random_state=seed).fit_transform(x)
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 4.5))
    else:
        fig = ax.figure
    n_colors = int(y.max()) + 1 if len(y) else 1
    cmap = plt.get_cmap("tab10" if n_colors <= 10 else "tab20")
    for c in range(n_colors):
        m = y == c
        if m.any():
            name = class_names[c] if class_names is not None and c < len(class_names) else str(c)
            ax.scatter(xy[m, 0], xy[m, 1], s=5, color=cmap(c % cmap.N), label=name)
    if n_colors <= 20:
        ax.legend(markerscale=3, fontsize=7, loc="best", frameon=False)
    ax.set_xticks([])
    ax.set_yticks([])
    ax.set_title(title or f"{method.upper()} of backbone features", fontsize=10)
    fig.tight_layout()
    return fig


# --- occupancy --------------------------------------------------------------------------------------------

def occupancy_bars(counts, title: str = "", ax=None, log: bool = False):
    """Cluster sizes sorted from largest to smallest, with the uniform level as a dashed line."""
    plt = _plt()
    counts = np.sort(np.asarray(counts, dtype=float))[::-1]
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3))
    else:
        fig = ax.figure
    share = counts / max(counts.sum(), 1)
    ax.bar(np.arange(len(share)), share, width=1.0, color="tab:blue")
    ax.axhline(1.0 / len(share), color="k", ls="--", lw=1, label="uniform 1/K")
    if log:
        ax.set_yscale("log")
    ax.set_xlabel("cluster (sorted by size)")
    ax.set_ylabel("share of images")
    ax.set_title(title or "cluster sizes", fontsize=10)
    ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def occupancy_heatmap(count_rows, title: str = "", ax=None, xlabel: str = "epoch"):
    """Sorted cluster shares over time: each column is one epoch (or window), clusters sorted by size.

    Sorting each column makes collapse visible at a glance: a balanced run is a flat band, a collapsing
    one concentrates all mass in the top rows.
    """
    plt = _plt()
    rows = np.asarray(count_rows, dtype=float)
    shares = np.sort(rows / np.maximum(rows.sum(axis=1, keepdims=True), 1), axis=1)[:, ::-1]
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3))
    else:
        fig = ax.figure
    K = shares.shape[1]
    im = ax.imshow(shares.T * K, aspect="auto", origin="upper", cmap="magma", interpolation="nearest",
                   extent=(0.5, len(shares) + 0.5, K, 0), vmin=0, vmax=max(3.0, float((shares * K).max())))
    fig.colorbar(im, ax=ax, label="share × K (1 = uniform)")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cluster rank")
    ax.set_title(title or "occupancy over time", fontsize=10)
    fig.tight_layout()
    return fig


def entropy_curve(count_rows, labels=None, title: str = "", ax=None, xlabel: str = "epoch"):
    """Normalised entropy H/log K of the cluster sizes over time, one line per series."""
    from .metrics import occupancy_stats

    plt = _plt()
    if ax is None:
        fig, ax = plt.subplots(figsize=(5, 3))
    else:
        fig = ax.figure
    series = count_rows if isinstance(count_rows, dict) else {labels or "run": count_rows}
    for name, rows in series.items():
        ys = [occupancy_stats(torch.as_tensor(r))["entropy_ratio"] for r in rows]
        ax.plot(range(1, len(ys) + 1), ys, label=name)
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("H / log K")
    ax.set_title(title or "occupancy entropy (1 = balanced, 0 = one cluster)", fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) > 1:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def save_run_figures(run) -> list[Path]:
    """Write the standard figures of a run into run.out/figures."""
    plt = _plt()
    folder = Path(run.out) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{run.trainer.config.method} on {run.trainer.config.dataset}"
    written = []

    def save(fig, filename):
        path = folder / filename
        fig.savefig(path, dpi=110)
        plt.close(fig)
        written.append(path)

    save(training_curves(run.history, title=name), "training_curves.png")
    features, labels = run.embed("test")
    save(embedding_2d(features, labels, run.trainer.test_set.classes,
                      title=f"t-SNE of test-set backbone features — {name}"), "embedding_tsne.png")
    epochs = run.trainer.occupancy_log.get("epochs", [])
    if epochs:
        save(occupancy_bars(epochs[-1], title=f"final-epoch cluster sizes — {name}"), "occupancy_bars.png")
        save(occupancy_heatmap(epochs, title=f"occupancy over epochs — {name}"), "occupancy_heatmap.png")
        save(entropy_curve(epochs, labels=run.trainer.config.method), "occupancy_entropy.png")
    return written


def grid_shape(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols
