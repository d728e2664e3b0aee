"""Under- vs over-clustering: the measures of METHODS.md §5 (last item), a sibling of `metrics.py`.

A representation can fail in two opposite ways, and the methods of §1–3 sit between them:

* under-clustering — different classes share a region (too few negatives: BYOL's worry);
* over-clustering  — one class is torn into pieces (every other image is a negative, its own class too:
  SimCLR's worry).

The measures, each a plain function on tensors/arrays returning numbers ready for JSON:

* Batch composition: `same_class_negative_rate` — the fraction of (anchor, negative) pairs of a batch that
  share the true class; `expected_same_class_negative_rate` — what random batches give (≈ 1/C);
  `min_same_class_negative_rate` — the floor no batch composition can beat; `same_class_negative_counts`
  and `binomial_pmf` — per anchor, the count X of same-class negatives and its Binomial(B − 1, 1/C) model
  (the model behind the triplet's rank rule).
* A K = C clustering against the classes: `homogeneity` (each cluster holds one class; low = classes
  mixed = under-clustering) and `completeness` (each class sits in one cluster; low = classes split =
  over-clustering); `fragmentation` (per class, how many clusters cover 90% of it) and `mixing` (per
  cluster, how many classes cover 90% of it).
* Geometry of the features: `cosine_distributions` (intra- vs inter-class cosines) and Wang & Isola's
  (2020) `alignment` (positive pairs close) and `uniformity` (features spread over the sphere).
"""
from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from .metrics import check_finite

# --------------------------------------------------------------------------------------------------------
# Same-class negatives in a batch
# --------------------------------------------------------------------------------------------------------


def _labels(x) -> torch.Tensor:
    return (x.detach().cpu() if isinstance(x, torch.Tensor) else torch.as_tensor(np.asarray(x))).long().flatten()


def _indices(batch) -> torch.Tensor:
    """A batch as image indices; a boolean mask over the data set (an easy slip) is turned into the indices it
    selects rather than read as indices 0 and 1."""
    b = batch.detach().cpu() if isinstance(batch, torch.Tensor) else torch.as_tensor(np.asarray(batch))
    return b.nonzero().flatten() if b.dtype == torch.bool else b.long().flatten()


def _labelled_groups(labels, batches=None) -> list[torch.Tensor]:
    """The labels of each batch (or of the one batch `labels`), without the unlabelled images (label < 0)."""
    labels = _labels(labels)
    groups = [labels] if batches is None else [labels[_indices(b)] for b in batches]
    return [y[y >= 0] for y in groups]


def same_class_negative_rate(labels, batches=None) -> float:
    """Fraction of (anchor, negative) pairs sharing the anchor's class, averaged over batches.

    For one batch with n_c images of class c among B:  rate = Σ_c n_c(n_c − 1) / (B(B − 1)).
    (With two views per image SimCLR's negatives are 2B − 2 views, two per other image: the same fraction.)
    `labels`: the labels of one batch, or — with `batches` (a list of index tensors) — of the whole dataset.
    Unlabelled images (label −1) are left out: B counts the labelled images of the batch. NaN when no batch
    has two labelled images (nothing to measure, which is not the same as no false negatives).
    """
    rates = []
    for y in _labelled_groups(labels, batches):
        b = y.numel()
        if b < 2:
            continue
        n = torch.bincount(y - y.min()).double()
        rates.append(float((n * (n - 1)).sum() / (b * (b - 1))))
    return float(np.mean(rates)) if rates else math.nan


def expected_same_class_negative_rate(labels=None, num_classes: int | None = None) -> float:
    """What random batches give. From the dataset's class counts N_c (batches drawn without replacement):
    Σ_c N_c(N_c − 1) / (N(N − 1)) over the labelled images; or 1/C for C balanced classes — the mean of
    X/(B − 1) for X ~ Binomial(B − 1, 1/C)."""
    if labels is None:
        if not num_classes:
            raise ValueError("give the dataset's labels or num_classes")
        return 1.0 / num_classes
    (labelled,) = _labelled_groups(labels)
    counts = torch.bincount(labelled).double()
    total = float(counts.sum())
    if total < 2:
        raise ValueError(f"the same-class negative rate needs at least 2 labelled images, got {int(total)}")
    return float((counts * (counts - 1)).sum() / (total * (total - 1)))


def min_same_class_negative_rate(batch_size: int, num_classes: int) -> float:
    """The floor for any batch of B images over C classes: spread as evenly as possible (B/C per class)."""
    if batch_size < 2 or num_classes < 1:
        raise ValueError(f"a batch has negatives from 2 images up, over 1 class or more; got batch_size {batch_size}, "
                         f"num_classes {num_classes}")
    q, r = divmod(batch_size, num_classes)
    pairs = r * (q + 1) * q + (num_classes - r) * q * (q - 1)
    return pairs / (batch_size * (batch_size - 1))


def same_class_negative_counts(labels, batches=None) -> torch.Tensor:
    """Per anchor, the number X of negatives in its batch that share its class: X_i = n_{y_i} − 1
    (labelled anchors only; an unlabelled image, label −1, is neither anchor nor counted)."""
    groups = _labelled_groups(labels, batches)
    return torch.cat([torch.bincount(y)[y] - 1 for y in groups]) if groups else torch.zeros(0, dtype=torch.long)


def binomial_pmf(n: int, p: float) -> np.ndarray:
    """P(X = k), k = 0..n, for X ~ Binomial(n, p) (computed in log space: n may be large)."""
    k = np.arange(n + 1)
    if p <= 0 or p >= 1:
        return (k == (0 if p <= 0 else n)).astype(float)
    logc = np.array([math.lgamma(n + 1) - math.lgamma(i + 1) - math.lgamma(n - i + 1) for i in k])
    return np.exp(logc + k * math.log(p) + (n - k) * math.log1p(-p))


# --------------------------------------------------------------------------------------------------------
# A clustering against the classes
# --------------------------------------------------------------------------------------------------------


def _labelled_pairs(true_labels, cluster_ids) -> tuple[np.ndarray, np.ndarray]:
    """(classes, clusters) of the labelled samples: unlabelled ones (label −1) have no class to compare with."""
    y, c = _labels(true_labels).numpy(), _labels(cluster_ids).numpy()
    if y.shape != c.shape:
        raise ValueError(f"true_labels and cluster_ids differ in length ({y.size} vs {c.size})")
    y, c = y[y >= 0], c[y >= 0]
    if not y.size:
        raise ValueError("there are no labelled samples to compare the clusters with")
    return y, c


def _table(true_labels, cluster_ids) -> np.ndarray:
    """Contingency table n[c, k] = #{i : class_i = c, cluster_i = k} (rows: classes, columns: clusters)."""
    y, c = _labelled_pairs(true_labels, cluster_ids)
    _, yi = np.unique(y, return_inverse=True)
    _, ci = np.unique(c, return_inverse=True)
    table = np.zeros((yi.max() + 1, ci.max() + 1), dtype=np.int64)
    np.add.at(table, (yi, ci), 1)
    return table


def homogeneity_completeness(true_labels, cluster_ids) -> dict:
    """{"homogeneity", "completeness"} (Rosenberg & Hirschberg 2007), entropies H of classes C and clusters K
    (labelled samples only, as every measure of this section):

        homogeneity  = 1 − H(C | K) / H(C)     1: every cluster holds a single class
        completeness = 1 − H(K | C) / H(K)     1: every class lies in a single cluster
    """
    from sklearn.metrics import homogeneity_completeness_v_measure

    h, c, _ = homogeneity_completeness_v_measure(*_labelled_pairs(true_labels, cluster_ids))
    return {"homogeneity": float(h), "completeness": float(c)}


def _cover(rows: np.ndarray, coverage: float) -> np.ndarray:
    """For each row of counts: the fewest entries whose sum reaches `coverage` of the row total."""
    shares = np.sort(rows, axis=1)[:, ::-1] / np.maximum(rows.sum(axis=1, keepdims=True), 1)
    return (np.cumsum(shares, axis=1) < coverage - 1e-9).sum(axis=1) + 1


def fragmentation(true_labels, cluster_ids, coverage: float = 0.9) -> dict:
    """Per class, the number of clusters needed to cover `coverage` of its images (1 = whole; high = torn).

    Returns {"per_class": [...], "mean": ...}; per_class follows the sorted class labels.
    """
    per_class = _cover(_table(true_labels, cluster_ids), coverage)
    return {"per_class": per_class.tolist(), "mean": float(per_class.mean())}


def mixing(true_labels, cluster_ids, coverage: float = 0.9) -> dict:
    """Per cluster, the number of classes needed to cover `coverage` of its images (1 = pure; high = mixed).

    Returns {"per_cluster": [...], "mean": ...} over the non-empty clusters (sorted cluster ids).
    """
    per_cluster = _cover(_table(true_labels, cluster_ids).T, coverage)
    return {"per_cluster": per_cluster.tolist(), "mean": float(per_cluster.mean())}


def clustering_report(features, true_labels, k: int | None = None, seed: int = 0) -> dict:
    """Spherical k-means with K = C (default) on `features`, then homogeneity, completeness, fragmentation
    and mixing of that clustering; also returns the cluster ids (as a list) for figures."""
    from .metrics import kmeans_clusters

    y = _labels(true_labels)
    if not (y >= 0).any():
        raise ValueError("clustering_report scores a clustering against the classes, but no point has a label "
                         "(all are -1)")
    k = k or int(y[y >= 0].unique().numel())
    ids = kmeans_clusters(torch.as_tensor(features).float(), k, seed)
    frag, mix = fragmentation(y, ids), mixing(y, ids)
    return {**homogeneity_completeness(y, ids), "fragmentation": frag["mean"], "mixing": mix["mean"],
            "fragmentation_per_class": frag["per_class"], "mixing_per_cluster": mix["per_cluster"],
            "cluster_ids": ids.tolist()}


# --------------------------------------------------------------------------------------------------------
# Geometry of the features
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def cosine_distributions(features, labels, max_points: int = 2000, seed: int = 0) -> dict:
    """Cosines of all pairs i < j, split into same-class ("intra") and different-class ("inter") pairs.

    Over-clustering shows as a wide intra distribution reaching down into the inter one; under-clustering
    as an inter distribution shifted up towards the intra one. Summaries: their means, the gap, and
    `separation` = P(a random intra pair is more similar than a random inter pair) (an AUC; 0.5 = no
    separation). At most `max_points` points (a seeded subsample) keep it O(max_points²). Labelled points only;
    with one class (no inter pairs) or no two of a class (no intra pairs) the summaries are NaN.
    """
    x = F.normalize(torch.as_tensor(features).float().cpu(), dim=1)
    check_finite(x)
    y = _labels(labels)
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"features and labels differ in length ({x.shape[0]} vs {y.shape[0]})")
    x, y = x[y >= 0], y[y >= 0]
    if x.shape[0] < 2:
        raise ValueError(f"cosine distributions need at least 2 labelled points, got {x.shape[0]}")
    if x.shape[0] > max_points:
        keep = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]
        x, y = x[keep], y[keep]
    i, j = torch.triu_indices(x.shape[0], x.shape[0], offset=1)
    cos = (x @ x.t())[i, j]  # one n×n matrix; x[i] * x[j] would hold two (n²/2)×d copies of the features
    same = y[i] == y[j]
    intra, inter = cos[same].numpy(), cos[~same].numpy()
    # AUC by ranks (Mann–Whitney U): exact, O(n log n).
    from scipy.stats import rankdata

    if not (intra.size and inter.size):  # one of the two distributions is empty: nothing to compare
        mean = lambda a: float(a.mean()) if a.size else math.nan  # noqa: E731
        return {"intra": intra, "inter": inter, "intra_mean": mean(intra), "inter_mean": mean(inter),
                "gap": math.nan, "separation": math.nan}
    ranks = rankdata(np.concatenate([intra, inter]))
    auc = (ranks[: intra.size].sum() - intra.size * (intra.size + 1) / 2) / (intra.size * inter.size)
    return {"intra": intra, "inter": inter, "intra_mean": float(intra.mean()), "inter_mean": float(inter.mean()),
            "gap": float(intra.mean() - inter.mean()), "separation": float(auc)}


def alignment(z1, z2, alpha: float = 2.0) -> float:
    """Wang & Isola's alignment: E ‖ẑ1 − ẑ2‖^α over positive pairs (two views of one image). Lower = better;
    0 when both views map to the same point, 4 (α = 2) when they are antipodal."""
    a, b = F.normalize(torch.as_tensor(z1).float(), dim=1), F.normalize(torch.as_tensor(z2).float(), dim=1)
    if a.shape != b.shape:
        raise ValueError(f"alignment compares the two views of the same images: z1 and z2 must have one shape, got "
                         f"{tuple(a.shape)} and {tuple(b.shape)}")
    check_finite(a, "z1")
    check_finite(b, "z2")
    return float((a - b).norm(dim=1).pow(alpha).mean())


def uniformity(z, t: float = 2.0, max_points: int = 4000, seed: int = 0) -> float:
    """Wang & Isola's uniformity: log E_{i≠j} exp(−t ‖ẑ_i − ẑ_j‖²). Lower = more uniform on the sphere;
    0 at full collapse (all points equal); about −4 for uniform points on a high-dimensional sphere (t = 2)."""
    x = F.normalize(torch.as_tensor(z).float().cpu(), dim=1)
    check_finite(x)
    if x.shape[0] < 2:
        raise ValueError(f"uniformity compares pairs of points: it needs at least 2, got {x.shape[0]}")
    if max_points < 2:
        raise ValueError(f"uniformity compares pairs of points: max_points must be at least 2, got {max_points}")
    if x.shape[0] > max_points:
        x = x[torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))[:max_points]]
    sq = torch.pdist(x, p=2).pow(2)
    return float(torch.logsumexp(-t * sq, dim=0) - math.log(sq.numel()))
