"""Spherical k-means: k-means on the unit sphere, where "closest" means "largest cosine".

Used twice in the lab: DeepCluster re-clusters its memory bank with it at every epoch start (METHODS.md §4.3),
and the evaluation runs it with K = C on the features of methods that have no clusters of their own (§5).

Given unit vectors x_1..x_N and k unit centroids c_1..c_k, spherical k-means maximises

    Σ_i  x_i · c_{a(i)}        (the total cosine between each point and its centroid)

by alternating two steps (Lloyd's algorithm, Dhillon & Modha 2001):

    assignment:  a(i) = argmax_j  x_i · c_j
    update:      c_j  = Σ_{i: a(i)=j} x_i  /  ‖Σ_{i: a(i)=j} x_i‖

The update is the plain mean re-projected onto the sphere: that is the unit vector maximising the summed
cosine to the cluster's members. Each step can only increase the objective, so it converges, to a local
optimum that depends on the initial centroids.

Everything runs on the features' device; the random choices are drawn from `generator` (on its own device)
so that a run is reproducible given the generator's seed.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

# Two unit vectors whose cosine is within this of 1 are treated as the same direction when re-seeding
# empty clusters (see `_reseed_empty`). It is far above float32 rounding of a dot product (~1e-7).
_SAME_DIRECTION_TOL = 1e-5

# How many re-seed rounds one assignment may take before we accept an empty cluster. One round fixes every
# empty cluster except in contrived cases (re-seeding stole all points of another cluster); a handful is
# plenty, and the cap keeps a degenerate input (fewer distinct directions than k) from looping for long.
_MAX_RESEED_ROUNDS = 10


@torch.no_grad()
def spherical_kmeans(
    features: Tensor,
    k: int,
    iters: int = 10,
    generator: torch.Generator | None = None,
    chunk: int = 8192,
    init: str = "random",
) -> tuple[Tensor, Tensor]:
    """Cluster `features` into `k` groups by cosine similarity.

    Args:
        features: (N, d) tensor on any device, any float dtype; rows are L2-normalised here (in float32).
        k: number of clusters, 1 ≤ k ≤ N.
        iters: Lloyd iterations (assignment + update). ~10 is the DeepCluster default; 0 returns the
            initial centroids and the assignment to them.
        generator: source of every random choice, so a run is deterministic given its seed. It may live
            on the CPU while the features live on the GPU. None uses torch's global RNG.
        chunk: rows of `features` per similarity matmul, so memory is O(chunk·k), not O(N·k).
        init: "random" — k distinct data points chosen uniformly (cheap; what DeepCluster/faiss do), or
            "k-means++" — each next seed drawn with probability ∝ 1 − max_j cos(x, c_j), which spreads the
            seeds out (Arthur & Vassilvitskii 2007; on the sphere ‖x − c‖² = 2(1 − cos), so this is exactly
            the D² rule; greedy variant, see `_kmeans_plus_plus`). It costs k sequential passes over the
            data: worth it for small k (evaluation, K = C), not for DeepCluster's thousands of clusters.

    Returns:
        centroids: (k, d) float32, unit-norm, on the features' device.
        assignments: (N,) int64 on the features' device; assignments[i] = argmax_j x_i · c_j for the
            returned centroids.

    Empty clusters are re-seeded (the DeepCluster trick): an empty centroid is moved onto a random point
    of the currently largest cluster, which splits that cluster in two. So as long as the data hold at least
    k distinct directions, no returned cluster is empty (up to float ties, e.g. TF32 matmuls on the GPU
    blurring two directions closer than ~1e-3 in cosine).
    """
    if features.dim() != 2:
        raise ValueError(f"features must be a 2-D (N, d) tensor, got shape {tuple(features.shape)}.")
    n = features.shape[0]
    if k < 1:
        raise ValueError(f"k must be at least 1, got k={k}.")
    if k > n:
        raise ValueError(f"Cannot make k={k} clusters from only N={n} points; use k ≤ N.")
    if chunk < 1:
        raise ValueError(f"chunk must be at least 1, got chunk={chunk}.")
    if init not in ("random", "k-means++"):
        raise ValueError(f'init must be "random" or "k-means++", got {init!r}.')

    # float32 even for bf16/fp16 features: sums of thousands of unit vectors lose too much in half precision.
    x = F.normalize(features.detach().float(), dim=1)

    if init == "random":
        centroids = x[_randperm(n, generator)[:k].to(x.device)]  # distinct indices
    else:
        centroids = _kmeans_plus_plus(x, k, generator, chunk)

    assignments = _assign_without_empty(x, centroids, generator, chunk)
    for _ in range(iters):
        # Re-seeding left every cluster with members (unless the data hold fewer than k distinct
        # directions), so the mean direction is defined; a cluster that is still empty, or whose members
        # sum to zero, keeps its old centroid rather than becoming NaN.
        sums = _cluster_sums(x, assignments, k, chunk)
        nonempty = sums.norm(dim=1) > 0
        centroids = torch.where(nonempty[:, None], F.normalize(sums, dim=1), centroids)
        assignments = _assign_without_empty(x, centroids, generator, chunk)
    return centroids, assignments


def _gen_device(generator: torch.Generator | None) -> torch.device:
    # Random numbers must be drawn on the generator's own device; we then move the result to the data.
    return generator.device if generator is not None else torch.device("cpu")


def _randperm(n: int, generator: torch.Generator | None) -> Tensor:
    return torch.randperm(n, generator=generator, device=_gen_device(generator))


def _randint(high: int, generator: torch.Generator | None) -> int:
    return int(torch.randint(high, (1,), generator=generator, device=_gen_device(generator)).item())


def _assign(x: Tensor, centroids: Tensor, chunk: int) -> Tensor:
    """a(i) = argmax_j x_i · c_j, one chunk of rows at a time so the (N, k) similarity matrix never exists."""
    out = torch.empty(x.shape[0], dtype=torch.long, device=x.device)
    for start in range(0, x.shape[0], chunk):
        out[start : start + chunk] = (x[start : start + chunk] @ centroids.T).argmax(dim=1)
    return out


def _cluster_sums(x: Tensor, assignments: Tensor, k: int, chunk: int) -> Tensor:
    """Σ_{i: a(i)=j} x_i for every j, as one_hot(a)ᵀ · x summed over chunks.

    `index_add_` would be the obvious way, but on CUDA it uses float atomics whose order varies from run to
    run, so the same seed could give different clusterings. A one-hot matmul is deterministic and, at
    O(N·k·d), no more expensive than the assignment step.
    """
    sums = torch.zeros(k, x.shape[1], dtype=x.dtype, device=x.device)
    for start in range(0, x.shape[0], chunk):
        a = assignments[start : start + chunk]
        one_hot = torch.zeros(a.shape[0], k, dtype=x.dtype, device=x.device)
        one_hot.scatter_(1, a[:, None], 1.0)
        sums += one_hot.T @ x[start : start + chunk]
    return sums


def _assign_without_empty(
    x: Tensor, centroids: Tensor, generator: torch.Generator | None, chunk: int
) -> Tensor:
    """Assign every point to its nearest centroid, re-seeding (in place) any centroid left with no points."""
    k = centroids.shape[0]
    assignments = _assign(x, centroids, chunk)
    for _ in range(_MAX_RESEED_ROUNDS):
        counts = torch.bincount(assignments, minlength=k)
        # A twin of an earlier centroid (same direction, e.g. both seeded on copies of one point) counts as
        # empty: the two only share points by float ties, which argmax breaks differently from machine to
        # machine, and a pair of twins leaves some other cluster unsplit.
        empty = ((counts == 0) | _twins(centroids)).nonzero().flatten().tolist()
        if not empty:
            break
        if not _reseed_empty(x, centroids, assignments, counts, empty, generator):
            break  # fewer than k distinct directions: nothing left to split
        assignments = _assign(x, centroids, chunk)
    return assignments


def _twins(centroids: Tensor) -> Tensor:
    """Whether each centroid points the same way (within _SAME_DIRECTION_TOL) as a centroid of lower index."""
    # Entry (i, j) of the upper triangle is centroid i < j against centroid j (k ≤ a few thousand: ≤ 36 MB).
    # Cost: 3% of a k-means at DeepCluster's CIFAR-10 scale on a 2-core CPU (benchmarks/RESULTS_kmeans.md).
    cos_with_earlier = torch.triu(centroids @ centroids.T, diagonal=1)
    return (cos_with_earlier >= 1 - _SAME_DIRECTION_TOL).any(dim=0)


def _reseed_empty(
    x: Tensor,
    centroids: Tensor,
    assignments: Tensor,
    counts: Tensor,
    empty: list[int],
    generator: torch.Generator | None,
) -> bool:
    """Move each empty centroid onto a random point of the currently largest cluster (DeepCluster).

    Why the largest cluster: splitting it is what an unconstrained k-means most needs, and it always has a
    point to spare. Why "a point not identical to its centroid": a point lying exactly on its own centroid
    would tie with it, and argmax would hand it back to the old cluster, leaving the new one empty again.
    Points in the direction of an earlier new seed are ruled out for the same reason. Because a chosen
    point x was closer to its old centroid than to any other, and is now a centroid itself (cos = 1), the
    next assignment gives it to the re-seeded cluster. Returns False when no point could be moved.
    """
    counts = counts.clone()
    # Cosine of each point to its own centroid, computed row by row (not by matmul) so it is exact float32
    # even where matmuls use TF32 on the GPU.
    own_cos = (x * centroids[assignments]).sum(dim=1)
    movable = own_cos < 1 - _SAME_DIRECTION_TOL
    moved_any = False
    for j in empty:
        # The largest cluster that still has a movable point.
        has_movable = torch.bincount(assignments[movable], minlength=counts.numel()) > 0
        if not bool(has_movable.any()):
            break
        big = int(torch.where(has_movable, counts, -1).argmax())
        candidates = ((assignments == big) & movable).nonzero().flatten()
        chosen = int(candidates[_randint(candidates.numel(), generator)])
        centroids[j] = x[chosen]
        counts[big] -= 1
        counts[j] += 1
        moved_any = True
        # No later seed may share this direction (it would tie with this one).
        movable &= (x * x[chosen]).sum(dim=1) < 1 - _SAME_DIRECTION_TOL
    return moved_any


def _kmeans_plus_plus(x: Tensor, k: int, generator: torch.Generator | None, chunk: int) -> Tensor:
    """Greedy k-means++ seeding on the sphere.

    Plain k-means++ draws the next seed with P(x_i) ∝ D_i = 1 − max_j x_i · c_j (cosine to the nearest seed
    so far). With few clusters that still puts two seeds in one true cluster fairly often, and Lloyd's
    iterations cannot undo it. The greedy variant (as in scikit-learn) draws 2 + ⌊ln k⌋ candidates this way
    and keeps the one that most reduces the potential Σ_i D_i.
    """
    n = x.shape[0]
    trials = 2 + int(math.log(k))
    centroids = torch.empty(k, x.shape[1], dtype=x.dtype, device=x.device)
    centroids[0] = x[_randint(n, generator)]
    best_cos = _max_cos(x, centroids[:1], chunk)
    for j in range(1, k):
        cdf = torch.cumsum((1 - best_cos).clamp_min(0), dim=0)
        if float(cdf[-1]) <= 0:
            # Every point already sits on a seed (duplicated data): fall back to a uniform draw.
            cdf = torch.arange(1, n + 1, dtype=x.dtype, device=x.device)
        # Inverse-CDF sampling from uniforms u ∈ [0, 1) drawn on the generator's device, so a CPU generator
        # can drive GPU data without copying the weights across. right=True picks the first i with
        # cdf[i] > u·total, which always has D_i > 0: a point already chosen as a seed is never re-drawn.
        u = torch.rand(trials, generator=generator, device=_gen_device(generator)).to(x.device)
        candidates = torch.searchsorted(cdf, u * cdf[-1], right=True).clamp_max(n - 1)
        # Potential after adding each candidate; keep the best.
        new_cos = torch.maximum(best_cos[:, None], _cos_to(x, x[candidates], chunk))  # (N, trials)
        best = int((1 - new_cos).clamp_min(0).sum(dim=0).argmin())
        centroids[j] = x[candidates[best]]
        best_cos = new_cos[:, best].contiguous()
    return centroids


def _cos_to(x: Tensor, points: Tensor, chunk: int) -> Tensor:
    """(N, m) cosines x · pointsᵀ, chunked over rows (m is small here)."""
    return torch.cat([x[start : start + chunk] @ points.T for start in range(0, x.shape[0], chunk)])


def _max_cos(x: Tensor, points: Tensor, chunk: int) -> Tensor:
    return _cos_to(x, points, chunk).max(dim=1).values
