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

from . import data


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg",) and not _in_notebook():
        matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _figure(ax, figsize):
    """(fig, ax): a new figure of `figsize` when ax is None, else the figure that `ax` is drawn in."""
    if ax is None:
        return _plt().subplots(figsize=figsize)
    return ax.figure, ax


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


PROJECTIONS = ("umap", "tsne", "pca")
# Below these, UMAP's spectral start (k >= N) and t-SNE's perplexity (< N) fail, and PCA has nothing to show.
MIN_MAP_POINTS = {"umap": 10, "tsne": 10, "pca": 3}


def check_projection(method: str) -> None:
    if method not in PROJECTIONS:
        raise ValueError(f"unknown projection {method!r}; choose {', '.join(PROJECTIONS)}")


def _is_one_point(x: np.ndarray) -> bool:
    """All rows (nearly) equal: a collapsed representation. t-SNE's start divides by this spread (a segfault in
    scikit-learn, not an error), so every map checks it first."""
    return float(x.std(axis=0).max()) < 1e-6


def project_2d(features: torch.Tensor, method: str = "umap", seed: int = 0) -> np.ndarray:
    """(N, d) features → (N, 2) numpy coordinates, on the unit sphere's cosine geometry.

    umap: umap-learn (imported only here; its first call in a fresh process compiles with numba, ~10–20 s),
    tsne: scikit-learn's t-SNE, pca: the two main directions (instant). Too few points for the method, or
    features that are all one point, are refused in one sentence (`embedding_2d` draws those cases instead).
    """
    check_projection(method)
    x = torch.nn.functional.normalize(torch.as_tensor(features).float(), dim=1).cpu().numpy()
    if len(x) < MIN_MAP_POINTS[method]:
        raise ValueError(f"{len(x)} images are too few for a {method} map ({MIN_MAP_POINTS[method]} or more); "
                         f"use a larger test split" + (", or method='pca'" if method != "pca" else ""))
    if _is_one_point(x):
        raise ValueError("all the features are the same point (the representation has collapsed): there is "
                         "nothing to map")
    if method == "umap":
        import warnings

        import umap  # notebook extra: imported only when asked for

        with warnings.catch_warnings():  # "n_jobs overridden by random_state": reproducibility wins, as intended
            warnings.simplefilter("ignore", UserWarning)
            return umap.UMAP(n_neighbors=min(15, len(x) - 1), random_state=seed).fit_transform(x)
    if method == "tsne":
        from sklearn.manifold import TSNE

        return TSNE(n_components=2, init="pca", random_state=seed,
                    perplexity=min(30, max(5, len(x) // 10))).fit_transform(x)
    from sklearn.decomposition import PCA  # method == "pca"

    return PCA(n_components=2, random_state=seed).fit_transform(x)


def embedding_2d(features: torch.Tensor, labels: torch.Tensor, class_names=None, method: str = "tsne",
                 max_points: int = 2000, seed: int = 0, title: str = "", ax=None):
    """Features projected to 2-D by `project_2d` (t-SNE, PCA, or UMAP if umap-learn is installed), coloured by
    label; unlabelled points (label −1) in grey. Where `project_2d` would refuse, this draws something instead:
    fewer than 10 points take PCA (t-SNE and UMAP need more), and features that are all one point (a collapsed
    representation) get a panel that says so."""
    check_projection(method)
    plt = _plt()
    x = torch.nn.functional.normalize(features.float(), dim=1).cpu()
    y = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if len(x) > max_points:
        keep = np.random.default_rng(seed).choice(len(x), max_points, replace=False)
        x, y = x[torch.from_numpy(keep)], y[keep]
    one_point = len(x) >= 2 and _is_one_point(x.numpy())
    if one_point or len(x) < MIN_MAP_POINTS["pca"]:
        fig, ax = _figure(ax, (5, 4.5))
        what = (f"all {len(x)} features are the same point:\nthe representation has collapsed" if one_point
                else f"{len(x)} points are too few to map")
        ax.text(0.5, 0.5, what, ha="center", va="center", transform=ax.transAxes, fontsize=10)
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(title or "backbone features", fontsize=10)
        return fig
    if len(x) < MIN_MAP_POINTS[method]:
        method = "pca"
    xy = project_2d(x, method, seed)
    fig, ax = _figure(ax, (5, 4.5))
    n_colors = int(y.max()) + 1 if len(y) else 1
    cmap = plt.get_cmap("tab10" if n_colors <= 10 else "tab20")
    if (y < 0).any():
        ax.scatter(xy[y < 0, 0], xy[y < 0, 1], s=3, color="0.75", label="unlabelled")
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

def _shares(counts: np.ndarray) -> np.ndarray:
    """Each row divided by its total (counts, or shares of a subset that add up to less than 1); an all-zero
    row stays zero."""
    totals = counts.sum(axis=-1, keepdims=True)
    return np.divide(counts, totals, out=np.zeros_like(counts), where=totals > 0)


def occupancy_bars(counts, title: str = "", ax=None, log: bool = False):
    """Cluster sizes sorted from largest to smallest, with the uniform level as a dashed line."""
    counts = np.sort(np.asarray(counts, dtype=float))[::-1]
    if counts.size == 0:
        raise ValueError("occupancy_bars needs the count (or share) of at least one cluster, got none")
    fig, ax = _figure(ax, (5, 3))
    share = _shares(counts)
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
    one concentrates all mass in the top rows. The colour is share × K on a fixed log scale from 0.1 to 10,
    so one colour means one share in every figure: uniform (1) sits in the middle, black is empty or below a
    tenth of uniform, the brightest colour ten times uniform or more. (On a linear scale up to the largest
    cluster, a few huge clusters would turn every other cluster black.)
    """
    from matplotlib.colors import LogNorm

    rows = np.atleast_2d(np.asarray(count_rows, dtype=float))  # one epoch's counts: one column
    if rows.size == 0:
        raise ValueError("occupancy_heatmap needs at least one row of cluster counts, got none")
    shares = np.sort(_shares(rows), axis=1)[:, ::-1]
    fig, ax = _figure(ax, (5, 3))
    K = shares.shape[1]
    floor, ceiling = 0.1, 10.0
    relative = np.clip(shares.T * K, floor, ceiling)  # empty clusters get the floor's colour, not none
    im = ax.imshow(relative, aspect="auto", origin="upper", cmap="magma", interpolation="nearest",
                   extent=(0.5, len(shares) + 0.5, K, 0), norm=LogNorm(vmin=floor, vmax=ceiling))
    fig.colorbar(im, ax=ax, label="share × K (1 = uniform)", extend="both")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("cluster rank")
    ax.set_title(title or "occupancy over time", fontsize=10)
    fig.tight_layout()
    return fig


def entropy_curve(count_rows, labels=None, title: str = "", ax=None, xlabel: str = "epoch", batch_entropy=None):
    """Normalised entropy H/log K of the cluster sizes over time, one line per series; `batch_entropy` (one
    value per epoch, the history's `batch_entropy_ratio`) adds the mean entropy of a single batch, dotted.
    With several series, `batch_entropy` may map series names to such lists: each dotted in its series' colour.
    """
    from .metrics import occupancy_stats

    fig, ax = _figure(ax, (5, 3))
    series = count_rows if isinstance(count_rows, dict) else {labels or "run": count_rows}
    colours = {}
    for name, rows in series.items():
        if len(rows) and np.ndim(rows[0]) == 0:  # one epoch's counts [3, 1, 0], not three one-cluster epochs
            rows = [rows]
        ys = [occupancy_stats(torch.as_tensor(r))["entropy_ratio"] for r in rows]
        colours[name] = ax.plot(range(1, len(ys) + 1), ys, label=name,
                                marker="o" if len(ys) == 1 else None)[0].get_color()  # one epoch: a visible point
    if isinstance(batch_entropy, dict):
        # One batch alone can be far less balanced than the epoch (batches that take turns): same colour, dotted.
        batch_entropy = {name: values for name, values in batch_entropy.items() if values and name in colours}
        for name, values in batch_entropy.items():
            ax.plot(range(1, len(values) + 1), values, color=colours[name], ls=":", lw=1.2)
        if batch_entropy:
            ax.plot([], [], color="0.35", ls=":", label="dotted: one batch alone")
    elif batch_entropy:
        ax.plot(range(1, len(batch_entropy) + 1), batch_entropy, color="0.35", ls=":", marker="+",
                label="one batch alone (mean per epoch)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlabel(xlabel)
    ax.set_ylabel("H / log K")
    ax.set_title(title or "occupancy entropy (1 = balanced, 0 = one cluster)", fontsize=10)
    ax.grid(alpha=0.3)
    if len(series) > 1 or batch_entropy:
        ax.legend(fontsize=8, frameon=False)
    fig.tight_layout()
    return fig


def save_figure(fig, path: Path, dpi: int = 110) -> Path:
    """Write a figure as PNG, whole or not at all (a full disk leaves no empty image), and close it; a place that
    cannot be written raises UserError."""
    from .train import _write_atomically

    try:
        _write_atomically(Path(path), lambda tmp: fig.savefig(tmp, format="png", dpi=dpi))
    finally:
        _plt().close(fig)
    return Path(path)


def save_run_figures(run) -> list[Path]:
    """Write the standard figures of a run into run.out/figures."""
    folder = Path(run.out) / "figures"
    folder.mkdir(parents=True, exist_ok=True)
    name = f"{run.trainer.config.method} on {data.display_name(run.trainer.config.dataset)}"
    written = []

    def save(fig, filename):
        written.append(save_figure(fig, folder / filename))

    save(training_curves(run.history, title=name), "training_curves.png")
    features, labels = run.embed("test")
    save(embedding_2d(features, labels, run.trainer.test_set.classes,
                      title=f"t-SNE of test-set backbone features — {name}"), "embedding_tsne.png")
    epochs = run.trainer.occupancy_log.get("epochs", [])
    if epochs:
        save(occupancy_bars(epochs[-1], title=f"final-epoch cluster sizes — {name}"), "occupancy_bars.png")
        save(occupancy_heatmap(epochs, title=f"occupancy over epochs — {name}"), "occupancy_heatmap.png")
        plain = run.trainer.occupancy_log.get("epochs_without_rule", [])
        series = {"training assignments": epochs, "balancing rule off": plain} if plain else epochs
        per_batch = [r["occupancy"].get("batch_entropy_ratio") for r in run.history if "occupancy" in r]
        save(entropy_curve(series, labels=run.trainer.config.method,
                           batch_entropy=per_batch if None not in per_batch else None), "occupancy_entropy.png")
    return written


def grid_shape(n: int) -> tuple[int, int]:
    cols = math.ceil(math.sqrt(n))
    return math.ceil(n / cols), cols


# --- under/over-clustering figures ---
# METHODS.md §2–3 and §5 (last item): same-class negatives, the triplet's rank window, homogeneity vs
# completeness, fragmentation and mixing, intra- vs inter-class cosines, alignment and uniformity. The
# comparison figures take `rows`: a list of dicts with "method", "batch_size" and the numbers of
# `experiments.negatives` (one row per method × batch size); colour = method, marker = batch size.

_BATCH_MARKERS = "os^Dv<>P*X"


def _method_styles(rows):
    plt = _plt()
    methods = list(dict.fromkeys(r["method"] for r in rows))
    sizes = sorted({r["batch_size"] for r in rows})
    colors = {m: plt.get_cmap("tab10")(i % 10) for i, m in enumerate(methods)}
    markers = {b: _BATCH_MARKERS[i % len(_BATCH_MARKERS)] for i, b in enumerate(sizes)}
    return methods, sizes, colors, markers


def _scatter_rows(ax, rows, xkey, ykey):
    methods, sizes, colors, markers = _method_styles(rows)
    for r in rows:
        xerr, yerr = r.get(xkey + "_std"), r.get(ykey + "_std")
        ax.errorbar(r[xkey], r[ykey], xerr=xerr, yerr=yerr, fmt=markers[r["batch_size"]], color=colors[r["method"]],
                    ms=7, capsize=2, lw=1)
    for m in methods:
        ax.plot([], [], "o", color=colors[m], label=m)
    for b in sizes:
        ax.plot([], [], markers[b], color="gray", label=f"B = {b}")
    ax.legend(fontsize=7, frameon=False, loc="best")
    ax.grid(alpha=0.3)


def same_class_negatives_figure(counts: dict, batch_size: int, num_classes: int, epsilon: float | None = 0.05,
                                ax=None):
    """Per anchor, how many of its B − 1 negatives share its class: one histogram per sampler, against the
    Binomial(B − 1, 1/C) model and the triplet rank rule's r_lo (P(X ≥ r_lo) ≤ ε; `epsilon=None` leaves it out)."""
    from .analysis import binomial_pmf
    from .methods.triplet import rank_window

    if num_classes < 1 or batch_size < 2:
        raise ValueError(f"same_class_negatives_figure needs num_classes ≥ 1 and batch_size ≥ 2, got {num_classes} "
                         f"and {batch_size}")
    fig, ax = _figure(ax, (5.5, 3.2))
    pmf = binomial_pmf(batch_size - 1, 1.0 / num_classes)
    counts = {name: c for name, c in counts.items() if np.asarray(c).size}  # no labelled anchor: nothing to draw
    top = int(max([int(np.asarray(c).max()) for c in counts.values()] + [np.nonzero(pmf > 1e-4)[0].max()])) + 2
    bins = np.arange(-0.5, top + 0.5)
    for name, c in counts.items():
        ax.hist(np.asarray(c), bins=bins, density=True, histtype="step", lw=1.5, label=f"{name} batches")
    shown = pmf[:top]  # the pmf has B entries (0 … B − 1 negatives); `top` may reach past them for small B
    ax.plot(np.arange(len(shown)), shown, "k.", ms=4, label=f"Binomial({batch_size - 1}, 1/{num_classes})")
    if epsilon is not None:
        r_lo, _ = rank_window(batch_size, num_classes, epsilon)
        ax.axvline(r_lo, color="tab:red", ls="--", lw=1, label=f"rank rule r_lo = {r_lo} (ε = {epsilon})")
    ax.set_xlabel("same-class negatives per anchor")
    ax.set_ylabel("share of anchors")
    ax.set_title(f"false negatives in a batch of {batch_size}", fontsize=10)
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def rank_window_figure(batch_sizes=None, class_counts=(10, 100, 1000), epsilon: float = 0.05, ax=None):
    """The rank rule's first rank r_lo against the batch size, for several priors C (log–log)."""
    from .methods.triplet import rank_window

    fig, ax = _figure(ax, (5, 3.2))
    sizes = np.unique(np.round(np.geomspace(16, 4096, 40)).astype(int)) if batch_sizes is None else np.asarray(batch_sizes)
    for c in class_counts:
        ax.plot(sizes, [rank_window(int(b), c, epsilon)[0] for b in sizes], label=f"C = {c}")
    ax.plot([196], [2], "k*", ms=9, label="official [2, 10] (B=196, C=1000)")
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("batch size B")
    ax.set_ylabel("first rank of the deputy window r_lo")
    ax.set_title(f"rank rule (our reconstruction): P(Bin(B−1, 1/C) ≥ r_lo) ≤ {epsilon}", fontsize=9)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig


def homogeneity_completeness_figure(rows, ax=None):
    """Each run as a point: completeness (x; low = classes torn apart, over-clustering) against homogeneity
    (y; low = classes merged, under-clustering) of a K = C k-means clustering of its features."""
    if not rows:
        raise ValueError("homogeneity_completeness_figure needs at least one row (a run's scores), got none")
    fig, ax = _figure(ax, (5, 4))
    _scatter_rows(ax, rows, "completeness", "homogeneity")
    lo = min(min(r["completeness"] for r in rows), min(r["homogeneity"] for r in rows)) - 0.05
    ax.plot([lo, 1], [lo, 1], color="gray", lw=0.8, ls=":")
    ax.set_xlabel("completeness  (← over-clustering)")
    ax.set_ylabel("homogeneity  (← under-clustering)")
    ax.set_title("K = C clustering of test features", fontsize=10)
    fig.tight_layout()
    return fig


def fragmentation_mixing_figure(rows):
    """Two bar panels: clusters needed to cover 90% of a class (fragmentation) and classes needed to cover
    90% of a cluster (mixing), averaged; 1 is perfect for both."""
    plt = _plt()
    methods, sizes, colors, _ = _method_styles(rows)
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.2))
    width = 0.8 / max(len(methods), 1)
    for ax, key, title in ((axes[0], "fragmentation", "fragmentation: clusters per class (90%)"),
                           (axes[1], "mixing", "mixing: classes per cluster (90%)")):
        for i, m in enumerate(methods):
            vals = [next((r[key] for r in rows if r["method"] == m and r["batch_size"] == b), np.nan) for b in sizes]
            errs = [next((r.get(key + "_std", 0) for r in rows if r["method"] == m and r["batch_size"] == b), 0) for b in sizes]
            ax.bar(np.arange(len(sizes)) + (i - (len(methods) - 1) / 2) * width, vals, width,
                   yerr=errs if any(errs) else None, color=colors[m], label=m, capsize=2)
        ax.axhline(1, color="k", lw=0.8, ls="--")
        ax.set_xticks(range(len(sizes)), [f"B = {b}" for b in sizes])
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3, axis="y")
    axes[1].legend(fontsize=7, frameon=False, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    fig.tight_layout()
    return fig


def cosine_distributions_figure(distributions: dict, bins: int = 60):
    """One panel per run: histograms of intra-class and inter-class cosine similarities of test features.

    `distributions` maps a title to a dict with arrays "intra" and "inter" (`analysis.cosine_distributions`).
    """
    if not distributions:
        raise ValueError("cosine_distributions_figure needs at least one run's distributions, got none")
    plt = _plt()
    rows, cols = grid_shape(len(distributions))
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.4 * rows), squeeze=False, sharex=True)
    # Zoom on where the cosines are (backbone features after ReLU all lie in one cone), same axis for all.
    low = min(float(np.quantile(np.concatenate([d["intra"], d["inter"]]), 0.001)) for d in distributions.values())
    edges = np.linspace(max(-1.0, low - 0.02), 1.0, bins + 1)
    for ax, (name, d) in zip(axes.flat, distributions.items()):
        ax.hist(d["inter"], bins=edges, density=True, alpha=0.5, color="tab:gray", label="inter-class")
        ax.hist(d["intra"], bins=edges, density=True, alpha=0.6, color="tab:orange", label="intra-class")
        sep = f", AUC {d['separation']:.2f}" if "separation" in d else ""
        ax.set_title(f"{name}{sep}", fontsize=9)
        ax.set_yticks([])
    for ax in list(axes.flat)[len(distributions):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7, frameon=False)
    for ax in axes[-1]:
        ax.set_xlabel("cosine similarity")
    fig.tight_layout()
    return fig


def alignment_uniformity_figure(rows, ax=None):
    """Wang & Isola's plane: alignment (x, lower = positives closer) against uniformity (y, lower = more
    spread). Good representations sit at the bottom left."""
    fig, ax = _figure(ax, (5, 4))
    _scatter_rows(ax, rows, "alignment", "uniformity")
    ax.set_xlabel("alignment  E‖f(x) − f(x⁺)‖²  (lower = better)")
    ax.set_ylabel("uniformity  log E exp(−2‖f(x) − f(y)‖²)")
    ax.set_title("alignment vs uniformity (test features)", fontsize=10)
    fig.tight_layout()
    return fig


def metric_vs_batch_figure(rows, keys=("knn_top1", "same_class_neg_rate"), reference: dict | None = None):
    """One panel per metric: its value against the batch size, one line per method. `reference` maps a batch
    size to {"random_expected", "floor"} of the same-class-negative rate, drawn as dashed lines."""
    plt = _plt()
    methods, sizes, colors, _ = _method_styles(rows)
    fig, axes = plt.subplots(1, len(keys), figsize=(3.6 * len(keys), 3), squeeze=False)
    for ax, key in zip(axes[0], keys):
        for m in methods:
            pts = sorted((r["batch_size"], r[key], r.get(key + "_std", 0)) for r in rows if r["method"] == m and key in r)
            if pts:
                b, v, e = zip(*pts)
                ax.errorbar(b, v, yerr=e, marker="o", color=colors[m], label=m, capsize=2)
        if key == "same_class_neg_rate" and reference:
            known = [b for b in sizes if b in reference]  # reference lines where they were given
            ax.plot(known, [reference[b]["random_expected"] for b in known], "k--", lw=1, label="random (expected)")
            ax.plot(known, [reference[b]["floor"] for b in known], "k:", lw=1, label="floor (B/C per class)")
            ax.legend(fontsize=7, frameon=False)
        ax.set_xscale("log", base=2)
        ax.set_xticks(sizes, [str(b) for b in sizes])
        ax.set_xlabel("batch size")
        ax.set_title(key, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=7, frameon=False)
    fig.tight_layout()
    return fig
