"""How good are the features, and how are the clusters used? (METHODS.md §5)

Three families of numbers:

* Feature quality — `knn_accuracy` (weighted cosine kNN, k = 200, τ = 0.1) and `linear_probe` (logistic
  regression on frozen, standardised features).
* Clustering quality against the true classes — `cluster_accuracy` (Hungarian-matched ACC),
  `clustering_scores` (ACC, NMI, ARI), and `kmeans_clusters` / `kmeans_clustering_scores` for methods without
  clusters of their own.
* Occupancy — `assignment_counts`, `occupancy_stats` and, batch by batch, `batch_balance`: how evenly the
  hard assignments spread over the K clusters, the picture that shows collapse and what each balancing
  method does about it.

Every function accepts torch tensors (numpy arrays too) and returns plain Python numbers or dicts of them,
ready for `json.dump`. Heavy work runs on the features' device in float32.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from scipy.optimize import linear_sum_assignment
from sklearn.metrics import adjusted_rand_score, normalized_mutual_info_score
from torch import Tensor

from .kmeans import spherical_kmeans

# --------------------------------------------------------------------------------------------------------
# Small input helpers
# --------------------------------------------------------------------------------------------------------


def _as_tensor(x, dtype: torch.dtype | None = None) -> Tensor:
    """A tensor view of `x` (tensor, numpy array or list), detached from any autograd graph."""
    t = x.detach() if isinstance(x, Tensor) else torch.as_tensor(np.asarray(x))
    return t if dtype is None else t.to(dtype)


def _as_numpy_labels(x, name: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, Tensor) else np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be a 1-D array of labels, got shape {a.shape}.")
    return a


def _check_features(features: Tensor, name: str) -> None:
    if features.dim() != 2:
        raise ValueError(f"{name} must be a 2-D (N, d) array, got shape {tuple(features.shape)}.")
    if features.shape[0] == 0:
        raise ValueError(f"{name} is empty.")
    check_finite(features, name)


def check_finite(features: Tensor, name: str = "features") -> None:
    """One NaN row would rank nearest to every query (kNN), pull a k-means centre, or make every summary NaN:
    refuse non-finite features rather than return a number that looks like a result."""
    finite = torch.isfinite(torch.as_tensor(features)).reshape(len(features), -1).all(dim=1)
    if not bool(finite.all()):
        raise ValueError(f"{name} hold NaN or infinite values in {int((~finite).sum())} of {len(finite)} rows "
                         f"(a diverged run?); evaluate finite features only.")


def _check_labels(labels: Tensor, n: int, name: str) -> None:
    if labels.dim() != 1 or labels.shape[0] != n:
        raise ValueError(f"{name} must be a 1-D array with one label per row ({n}), got shape "
                         f"{tuple(labels.shape)}.")
    if n and int(labels.min()) < 0:
        raise ValueError(f"{name} must be non-negative class indices 0..C-1.")


# --------------------------------------------------------------------------------------------------------
# Weighted kNN
# --------------------------------------------------------------------------------------------------------


@torch.no_grad()
def knn_predict(
    train_features,
    train_labels,
    test_features,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
    chunk: int = 1024,
) -> Tensor:
    """Weighted k-nearest-neighbour classification by cosine similarity (Wu et al. 2018, as in lightly/solo).

    For a query q with its k most similar training features x_1..x_k (cosine s_i = q̂ · x̂_i), each neighbour
    votes for its label with weight exp(s_i / τ):

        score(c) = Σ_{i ≤ k, y_i = c}  exp(s_i / τ),        prediction = argmax_c score(c)

    A small τ makes the closest neighbours dominate; τ = math.inf is a plain majority vote (scikit-learn's
    KNeighborsClassifier with metric="cosine", the protocol of some published kNN numbers).

    Args:
        train_features: (N, d) memory bank (train split, no augmentation). Its device is where the work runs.
        train_labels: (N,) int class indices 0..C-1.
        test_features: (M, d) queries.
        k: neighbours per query; clipped to N so a small bank still works.
        temperature: τ in the vote weights.
        num_classes: C; default max(train_labels) + 1.
        chunk: queries per matmul, so memory is O(chunk·N), never O(M·N).

    Returns:
        (M,) int64 predicted labels on the test features' device. Ties go to the smallest class index.
    """
    bank = _as_tensor(train_features)
    queries = _as_tensor(test_features)
    _check_features(bank, "train_features")
    _check_features(queries, "test_features")
    if bank.shape[1] != queries.shape[1]:
        raise ValueError(f"train and test features differ in dimension ({bank.shape[1]} vs {queries.shape[1]}).")
    labels = _as_tensor(train_labels, torch.long).to(bank.device)
    _check_labels(labels, bank.shape[0], "train_labels")
    if k < 1 or chunk < 1 or temperature <= 0:
        raise ValueError("k and chunk must be at least 1 and temperature must be positive.")
    if num_classes is None:
        num_classes = int(labels.max()) + 1
    elif int(labels.max()) >= num_classes:
        raise ValueError(f"train_labels go up to {int(labels.max())} but num_classes={num_classes}.")

    bank = F.normalize(bank.float(), dim=1)
    k = min(k, bank.shape[0])
    preds = []
    for start in range(0, queries.shape[0], chunk):
        q = F.normalize(queries[start : start + chunk].to(bank.device).float(), dim=1)
        sims, idx = (q @ bank.T).topk(k, dim=1)  # (b, k), sorted: sims[:, 0] is the largest
        # exp(s/τ) can overflow float32 for small τ (τ = 0.01 gives e^100). Dividing every weight of a row
        # by the same exp(s_max/τ) changes no argmax, so subtract the row's largest similarity first.
        weights = torch.exp((sims - sims[:, :1]) / temperature)
        scores = torch.zeros(q.shape[0], num_classes, device=bank.device)
        scores.scatter_add_(1, labels[idx], weights)
        preds.append(scores.argmax(dim=1))
    return torch.cat(preds).to(queries.device)


@torch.no_grad()
def knn_accuracy(
    train_features,
    train_labels,
    test_features,
    test_labels,
    k: int = 200,
    temperature: float = 0.1,
    chunk: int = 1024,
) -> float:
    """Top-1 accuracy in [0, 1] of `knn_predict` (cosine, weights exp(s/τ)) on the test split."""
    preds = knn_predict(train_features, train_labels, test_features, k=k, temperature=temperature, chunk=chunk)
    truth = _as_tensor(test_labels, torch.long).to(preds.device)
    _check_labels(truth, preds.shape[0], "test_labels")
    return float((preds == truth).float().mean())


# --------------------------------------------------------------------------------------------------------
# Linear probe
# --------------------------------------------------------------------------------------------------------


def linear_probe(
    train_features,
    train_labels,
    test_features,
    test_labels,
    epochs: int = 100,
    weight_decay: float = 1e-4,
) -> float:
    """Multinomial logistic regression on frozen features; returns test top-1 accuracy in [0, 1].

    Features are standardised with the *train* mean μ and standard deviation σ (applied to both splits):
    x ← (x − μ)/σ, so one weight decay suits every backbone whatever its feature scale. Then a linear layer
    (W, b) minimises, full batch,

        L(W, b) = (1/N) Σ_i  −log softmax(W x_i + b)_{y_i}  +  (λ/2) ‖W‖²        (λ = weight_decay)

    (the bias is not decayed, as in sklearn's LogisticRegression). L is convex, so we start from W = 0, b = 0
    and use L-BFGS with a strong-Wolfe line search: no learning rate to tune, converged in tens of
    iterations, and deterministic without any random seed. `epochs` is the number of L-BFGS iterations
    (each one a full pass, plus a few more for the line search).
    """
    x_train = _as_tensor(train_features)
    x_test = _as_tensor(test_features)
    _check_features(x_train, "train_features")
    _check_features(x_test, "test_features")
    device = x_train.device
    y_train = _as_tensor(train_labels, torch.long).to(device)
    y_test = _as_tensor(test_labels, torch.long).to(device)
    _check_labels(y_train, x_train.shape[0], "train_labels")
    _check_labels(y_test, x_test.shape[0], "test_labels")
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train_features have {x_train.shape[1]} dimensions but test_features "
                         f"{x_test.shape[1]}; use features from the same network layer.")
    num_classes = int(max(int(y_train.max()), int(y_test.max()))) + 1

    x_train = x_train.float()
    mean = x_train.mean(dim=0)
    # A constant feature has σ = 0; the floor maps it to 0 instead of NaN.
    std = x_train.std(dim=0).clamp_min(1e-6) if x_train.shape[0] > 1 else torch.ones_like(mean)
    x_train = (x_train - mean) / std
    x_test = (x_test.to(device).float() - mean) / std

    # Gradients are needed here even if the caller is inside torch.no_grad() (e.g. an evaluation loop).
    with torch.enable_grad():
        # Plain zero tensors rather than nn.Linear: its random init would draw from (and so disturb) the
        # caller's global RNG, only to be overwritten.
        weight = torch.zeros(num_classes, x_train.shape[1], device=device, requires_grad=True)
        bias = torch.zeros(num_classes, device=device, requires_grad=True)
        optimizer = torch.optim.LBFGS([weight, bias], lr=1.0, max_iter=epochs, history_size=20,
                                      line_search_fn="strong_wolfe")

        def closure() -> Tensor:
            optimizer.zero_grad()
            logits = F.linear(x_train, weight, bias)
            loss = F.cross_entropy(logits, y_train) + 0.5 * weight_decay * weight.pow(2).sum()
            loss.backward()
            return loss

        if epochs > 0:
            optimizer.step(closure)

    with torch.no_grad():
        predictions = F.linear(x_test, weight, bias).argmax(dim=1)
        return float((predictions == y_test).float().mean())


# --------------------------------------------------------------------------------------------------------
# Clustering quality against the true classes
# --------------------------------------------------------------------------------------------------------


def cluster_accuracy(true_labels, cluster_ids) -> float:
    """Clustering accuracy: the best one-to-one map from clusters to classes, then plain accuracy.

    With the contingency table n[c, y] = #{i : cluster_i = c, label_i = y},

        ACC = max over one-to-one maps m: clusters → classes of  (1/N) Σ_c n[c, m(c)]

    found exactly by the Hungarian algorithm (scipy's linear_sum_assignment maximising Σ n). If there are
    more clusters than classes, only C clusters can be matched and points in the others count as wrong —
    so over-clustering is penalised rather than rewarded by mapping many clusters onto one class. Labels
    and cluster ids may be any integers (they are relabelled to 0..C-1 first); points labelled −1 (unlabelled)
    are left out, as everywhere in the lab.
    """
    y, c = _labelled(true_labels, cluster_ids)
    if y.size == 0:
        raise ValueError("cannot score an empty clustering.")
    classes, y_idx = np.unique(y, return_inverse=True)
    clusters, c_idx = np.unique(c, return_inverse=True)
    table = np.zeros((clusters.size, classes.size), dtype=np.int64)
    np.add.at(table, (c_idx, y_idx), 1)
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / y.size)


def _labelled(true_labels, cluster_ids) -> tuple[np.ndarray, np.ndarray]:
    """(labels, cluster ids) of the labelled points (label ≥ 0), checked to pair up."""
    y = _as_numpy_labels(true_labels, "true_labels")
    c = _as_numpy_labels(cluster_ids, "cluster_ids")
    if y.shape != c.shape:
        raise ValueError(f"true_labels and cluster_ids differ in length ({y.shape[0]} vs {c.shape[0]}).")
    if y.size and not (y >= 0).any():
        raise ValueError("no point has a label (all are -1): a clustering can only be scored against labels.")
    return y[y >= 0], c[y >= 0]


def clustering_scores(true_labels, cluster_ids) -> dict:
    """{"acc", "nmi", "ari"} of a clustering against the true classes, as plain floats.

    * acc — Hungarian-matched accuracy (`cluster_accuracy`).
    * nmi — normalised mutual information I(Y; C) / ((H(Y) + H(C))/2): 1 for a relabelled perfect clustering,
      0 when the clusters say nothing about the classes (e.g. one cluster for everything).
    * ari — adjusted Rand index: agreement over pairs of points, corrected so that a random clustering
      scores 0 in expectation (it can go slightly negative); 1 for perfect.
    Points labelled −1 (unlabelled) are left out.
    """
    y, c = _labelled(true_labels, cluster_ids)
    return {
        "acc": cluster_accuracy(y, c),
        "nmi": float(normalized_mutual_info_score(y, c)),
        "ari": float(adjusted_rand_score(y, c)),
    }


def kmeans_clusters(features, k: int, seed: int = 0, iters: int = 30) -> Tensor:
    """The evaluation's clustering of methods that have no clusters of their own: spherical k-means with
    k-means++ seeding, `iters` iterations, deterministic given `seed`; (N,) cluster ids on the CPU.

    k-means++ because with so few clusters (K = C) a bad random start (two seeds in one class) is common and would
    make the scores measure the seed rather than the features. The metrics, the analysis report and the
    embedding explorer all cluster through here, so they agree on the same features.
    """
    generator = torch.Generator().manual_seed(seed)
    check_finite(_as_tensor(features))
    _, assignments = spherical_kmeans(_as_tensor(features), k, iters=iters, generator=generator, init="k-means++")
    return assignments.cpu()


def kmeans_clustering_scores(features, true_labels, k: int | None = None, seed: int = 0,
                             iters: int = 30) -> dict:
    """`clustering_scores` of `kmeans_clusters` on `features` — for methods that have no clusters of their own.
    k defaults to the number of distinct true classes (K = C, METHODS.md §5)."""
    y = _as_numpy_labels(true_labels, "true_labels")
    if k is None:
        k = int(np.unique(y[y >= 0]).size)  # the classes; unlabelled points (−1) are clustered, not scored
    return clustering_scores(y, kmeans_clusters(features, k, seed, iters))


# --------------------------------------------------------------------------------------------------------
# Occupancy
# --------------------------------------------------------------------------------------------------------


def assignment_counts(assignments, num_clusters: int) -> Tensor:
    """(K,) int64 count of points hard-assigned to each cluster, zeros included.

    Counted by a scatter rather than `bincount`, whose output size depends on the data: on a GPU either that or
    a range check would make the host wait for the GPU every training step. The range is checked on the CPU
    only (on a GPU an assignment outside 0..K−1 stops with a device-side assertion instead)."""
    a = _as_tensor(assignments, torch.long).flatten()
    if a.device.type == "cpu" and a.numel() and (int(a.min()) < 0 or int(a.max()) >= num_clusters):
        raise ValueError(f"assignments must lie in 0..{num_clusters - 1}, got values in "
                         f"{int(a.min())}..{int(a.max())}.")
    return torch.zeros(num_clusters, dtype=torch.long, device=a.device).scatter_add_(0, a, torch.ones_like(a))


def occupancy_stats(counts) -> dict:
    """How evenly hard assignments spread over K clusters, from their counts n_1..n_K.

    With shares p_k = n_k / Σ n and entropy H = −Σ_k p_k log p_k (natural log, 0 log 0 = 0):

    * entropy_ratio = H / log K ∈ [0, 1]: 1 for a perfectly even split, 0 when everything is in one cluster.
    * effective_clusters = exp(H) ∈ [1, K]: the number of equally used clusters with the same entropy.
    * max_share = max_k p_k: the largest cluster's share (1/K at best, 1 at full collapse).
    * empty: clusters with no points; num_clusters: K; total: Σ n.

    Edge cases stay finite: K = 1 gives entropy_ratio 1 (a single cluster is trivially balanced); all-zero
    counts give entropy_ratio 0, effective_clusters 0, max_share 0.
    """
    n = _as_tensor(counts).flatten().double().cpu()
    if n.numel() == 0:
        raise ValueError("counts must have at least one cluster.")
    if bool((n < 0).any()):
        raise ValueError("counts must be non-negative.")
    k = n.numel()
    total = float(n.sum())
    empty = int((n == 0).sum())
    if total == 0:
        return {"entropy_ratio": 0.0, "effective_clusters": 0.0, "max_share": 0.0,
                "empty": empty, "num_clusters": k, "total": 0}
    p = n / total
    # xlogy gives 0·log 0 = 0, so empty clusters contribute nothing instead of NaN.
    entropy = float(-torch.special.xlogy(p, p).sum()) + 0.0  # + 0.0 turns -0.0 (one cluster) into 0.0
    return {
        # The clamps only remove float rounding (a uniform split can give 1.0000000000000002).
        "entropy_ratio": min(max(entropy / math.log(k), 0.0), 1.0) if k > 1 else 1.0,
        "effective_clusters": min(max(math.exp(entropy), 1.0), float(k)),
        "max_share": float(p.max()),
        "empty": empty,
        "num_clusters": k,
        "total": int(total) if total.is_integer() else total,
    }


def batch_balance(counts: Tensor) -> Tensor:
    """(entropy_ratio, max_share) of ONE batch's counts, as a float64 tensor on the counts' device.

    The trainer adds it up every step, without moving anything to the host, and reports the epoch's mean
    beside the epoch's `occupancy_stats`: an epoch can be balanced in total while each batch sits mostly in
    one cluster, a different one every step (a balancing rule that over-corrects), and only this shows it.
    Same definitions and edge cases as `occupancy_stats`.
    """
    n = counts.flatten().double()
    k = n.numel()
    total = n.sum()
    p = n / total.clamp_min(1)
    entropy_ratio = -torch.special.xlogy(p, p).sum() / math.log(k) if k > 1 else (total > 0).double()
    return torch.stack([entropy_ratio.clamp(0.0, 1.0) + 0.0, p.max()])  # + 0.0: no -0.0 for one cluster
