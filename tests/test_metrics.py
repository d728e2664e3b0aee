"""Tests for selfsup_lab.metrics and selfsup_lab.kmeans: small, hand-checkable cases that fail on wrong code."""

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from selfsup_lab.kmeans import spherical_kmeans
from selfsup_lab.metrics import (
    assignment_counts,
    cluster_accuracy,
    clustering_scores,
    kmeans_clustering_scores,
    knn_accuracy,
    knn_predict,
    linear_probe,
    occupancy_stats,
)


def blobs(n_per_class, centers, noise, seed):
    """Gaussian blobs around the given centers; returns (features, labels) shuffled."""
    g = torch.Generator().manual_seed(seed)
    centers = torch.as_tensor(centers, dtype=torch.float32)
    labels = torch.arange(len(centers)).repeat_interleave(n_per_class)
    features = centers[labels] + noise * torch.randn(len(labels), centers.shape[1], generator=g)
    perm = torch.randperm(len(labels), generator=g)
    return features[perm], labels[perm]


def orthogonal_directions(n, d, seed):
    q, _ = torch.linalg.qr(torch.randn(d, n, generator=torch.Generator().manual_seed(seed)))
    return q.T  # (n, d), orthonormal rows


# ------------------------------------------------------------------------------------------------ kNN


def test_knn_separated_blobs_is_perfect():
    centers = 5 * orthogonal_directions(2, 8, seed=0)
    x_train, y_train = blobs(50, centers, noise=0.3, seed=1)
    x_test, y_test = blobs(30, centers, noise=0.3, seed=2)
    assert knn_accuracy(x_train, y_train, x_test, y_test, k=20) == 1.0
    # numpy inputs give the same answer
    assert knn_accuracy(x_train.numpy(), y_train.numpy(), x_test.numpy(), y_test.numpy(), k=20) == 1.0


# One class-0 neighbour at cosine 1 against two class-1 neighbours at cosine 0.8 (query = e_1).
# Votes: class 0: exp(1/τ), class 1: 2·exp(0.8/τ). Class 0 wins iff exp(0.2/τ) > 2, i.e. τ < 0.2/ln 2 ≈ 0.289.
WEIGHTED_BANK = torch.tensor([[1.0, 0.0], [0.8, 0.6], [0.8, -0.6]])
WEIGHTED_LABELS = torch.tensor([0, 1, 1])
QUERY = torch.tensor([[3.0, 0.0]])  # not unit norm on purpose: cosine must normalise it


@pytest.mark.parametrize("temperature, expected", [(0.1, 0), (0.25, 0), (0.35, 1), (10.0, 1)])
def test_knn_weighting_matches_hand_computation(temperature, expected):
    pred = knn_predict(WEIGHTED_BANK, WEIGHTED_LABELS, QUERY, k=3, temperature=temperature)
    assert pred.tolist() == [expected]


def test_knn_k_larger_than_bank_and_tiny_temperature():
    # k = 200 > N = 3 is clipped; τ = 1e-3 would overflow exp(s/τ) without the max-subtraction.
    pred = knn_predict(WEIGHTED_BANK, WEIGHTED_LABELS, QUERY, k=200, temperature=1e-3)
    assert pred.tolist() == [0]
    assert pred.dtype == torch.int64


def test_knn_infinite_temperature_is_scikit_learns_plain_vote():
    """τ = ∞ weighs every neighbour 1: the protocol of KNeighborsClassifier(metric="cosine"), which the 83.2 %
    SimCLR reference reports (benchmarks/knn_protocols.py)."""
    from sklearn.neighbors import KNeighborsClassifier

    g = torch.Generator().manual_seed(4)
    x_train, y_train = torch.randn(400, 12, generator=g), torch.randint(0, 4, (400,), generator=g)
    x_test = torch.randn(200, 12, generator=g)
    ours = knn_predict(x_train, y_train, x_test, k=10, temperature=math.inf)
    theirs = KNeighborsClassifier(n_neighbors=10, metric="cosine").fit(x_train.numpy(), y_train.numpy())
    assert ours.tolist() == theirs.predict(x_test.numpy()).tolist()
    # ...and it is a different protocol from the weighted vote: on random labels they disagree somewhere
    assert not torch.equal(ours, knn_predict(x_train, y_train, x_test, k=10, temperature=0.1))


def test_knn_chunking_does_not_change_predictions():
    g = torch.Generator().manual_seed(3)
    x_train, y_train = torch.randn(300, 16, generator=g), torch.randint(0, 5, (300,), generator=g)
    x_test = torch.randn(257, 16, generator=g)
    full = knn_predict(x_train, y_train, x_test, k=25, chunk=10_000)
    for chunk in (1, 7, 64):
        assert torch.equal(knn_predict(x_train, y_train, x_test, k=25, chunk=chunk), full)
    assert full.shape == (257,)


# ------------------------------------------------------------------------------------------------ linear probe


def test_linear_probe_separable_data():
    g = torch.Generator().manual_seed(4)
    w = torch.randn(10, 3, generator=g)
    x_train, x_test = torch.randn(600, 10, generator=g), torch.randn(400, 10, generator=g)
    # Labels from a linear rule (plus a scale/shift the standardisation must absorb).
    y_train, y_test = (x_train @ w).argmax(1), (x_test @ w).argmax(1)
    x_train, x_test = 50 * x_train + 7, 50 * x_test + 7
    acc = linear_probe(x_train, y_train, x_test, y_test, epochs=100)
    assert acc >= 0.95
    # deterministic, and it leaves the caller's global RNG alone
    state = torch.get_rng_state()
    assert linear_probe(x_train, y_train, x_test, y_test, epochs=100) == acc
    assert torch.equal(torch.get_rng_state(), state)


def test_linear_probe_random_labels_is_near_chance():
    g = torch.Generator().manual_seed(5)
    x_train, y_train = torch.randn(400, 20, generator=g), torch.randint(0, 4, (400,), generator=g)
    x_test, y_test = torch.randn(2000, 20, generator=g), torch.randint(0, 4, (2000,), generator=g)
    acc = linear_probe(x_train, y_train, x_test, y_test, epochs=50)
    assert abs(acc - 0.25) < 0.06  # chance = 1/4; 6 points ≈ 6 standard errors at n = 2000


def test_linear_probe_works_under_no_grad():
    x, y = blobs(20, 4 * orthogonal_directions(2, 4, seed=6), noise=0.2, seed=7)
    with torch.no_grad():
        assert linear_probe(x, y, x, y, epochs=20) == 1.0


# ------------------------------------------------------------------------------------------------ clustering


def test_cluster_accuracy_permuted_perfect_clustering():
    labels = torch.randint(0, 5, (200,), generator=torch.Generator().manual_seed(8))
    clusters = torch.tensor([13, 11, 10, 14, 12])[labels]  # a relabelling with arbitrary ids
    assert cluster_accuracy(labels, clusters) == 1.0


def test_cluster_accuracy_hand_computed():
    # Contingency table (rows = clusters, cols = classes): [[3, 2], [2, 0]], N = 7.
    # Greedy (cluster 0 → class 0) gives 3/7; the one-to-one optimum maps 0 → 1, 1 → 0: (2 + 2)/7.
    labels = [0, 0, 0, 1, 1, 0, 0]
    clusters = [0, 0, 0, 0, 0, 1, 1]
    assert cluster_accuracy(labels, clusters) == pytest.approx(4 / 7)


def test_cluster_accuracy_more_clusters_than_classes():
    # Three clusters, two classes: only two clusters can be matched, the third counts as wrong (a many-to-one
    # map would score 1.0 here).
    assert cluster_accuracy(np.array([0, 0, 1, 1]), np.array([0, 1, 2, 2])) == pytest.approx(3 / 4)
    # and fewer clusters than classes
    assert cluster_accuracy([0, 1, 2], [5, 5, 5]) == pytest.approx(1 / 3)


def test_clustering_scores_perfect_and_merged():
    labels = torch.arange(4).repeat_interleave(25)
    perfect = clustering_scores(labels, (labels + 1) % 4)
    assert perfect == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})
    merged = clustering_scores(labels, torch.zeros_like(labels))
    assert merged["nmi"] == pytest.approx(0.0, abs=1e-12)
    assert merged["ari"] == pytest.approx(0.0, abs=1e-12)
    assert merged["acc"] == pytest.approx(0.25)
    json.dumps(perfect)
    assert all(type(v) is float for v in perfect.values())


def test_kmeans_clustering_scores_on_separated_directions():
    x, y = blobs(40, 3 * orthogonal_directions(4, 12, seed=9), noise=0.2, seed=10)
    scores = kmeans_clustering_scores(x, y)
    assert scores == pytest.approx({"acc": 1.0, "nmi": 1.0, "ari": 1.0})
    assert kmeans_clustering_scores(x, y, seed=3) == scores


# ------------------------------------------------------------------------------------------------ occupancy


def test_occupancy_uniform():
    stats = occupancy_stats(torch.full((8,), 5))
    assert stats["entropy_ratio"] == pytest.approx(1.0)
    assert stats["effective_clusters"] == pytest.approx(8.0)
    assert stats["max_share"] == pytest.approx(1 / 8)
    assert (stats["empty"], stats["num_clusters"], stats["total"]) == (0, 8, 40)


def test_occupancy_one_hot_collapse():
    counts = torch.zeros(10, dtype=torch.long)
    counts[3] = 77
    stats = occupancy_stats(counts)
    assert stats["entropy_ratio"] == pytest.approx(0.0, abs=1e-12)
    assert stats["effective_clusters"] == pytest.approx(1.0)
    assert stats["max_share"] == 1.0
    assert stats["empty"] == 9


def test_occupancy_hand_computed_and_json_ready():
    # shares (1/2, 1/4, 1/4, 0): H = 1.5 bits, log2 K = 2 → ratio 0.75, effective 2^1.5.
    stats = occupancy_stats(torch.tensor([2, 1, 1, 0]))
    assert stats["entropy_ratio"] == pytest.approx(0.75)
    assert stats["effective_clusters"] == pytest.approx(2**1.5)
    assert stats["max_share"] == pytest.approx(0.5)
    assert stats["empty"] == 1
    assert json.loads(json.dumps(stats)) == stats
    assert type(stats["empty"]) is int and type(stats["total"]) is int


def test_occupancy_degenerate_inputs_stay_finite():
    single = occupancy_stats(torch.tensor([12]))
    zeros = occupancy_stats(torch.zeros(5, dtype=torch.long))
    for stats in (single, zeros):
        assert all(math.isfinite(v) for v in stats.values())
    assert single["entropy_ratio"] == 1.0 and single["effective_clusters"] == 1.0
    assert zeros["empty"] == 5 and zeros["total"] == 0


def test_assignment_counts():
    counts = assignment_counts(torch.tensor([0, 2, 2, 2]), num_clusters=4)
    assert counts.tolist() == [1, 0, 3, 0]
    assert counts.dtype == torch.int64
    with pytest.raises(ValueError):
        assignment_counts(torch.tensor([0, 4]), num_clusters=4)


# ------------------------------------------------------------------------------------------------ k-means


@pytest.mark.parametrize("seed", range(5))
def test_spherical_kmeans_recovers_directions(seed):
    directions = orthogonal_directions(3, 16, seed=11)
    x, y = blobs(60, directions, noise=0.15, seed=12)
    x = x * torch.rand(len(x), 1, generator=torch.Generator().manual_seed(13)).add(0.5)  # norms must not matter
    centroids, assignments = spherical_kmeans(x, 3, generator=torch.Generator().manual_seed(seed),
                                              init="k-means++")
    assert cluster_accuracy(y, assignments) == 1.0
    assert centroids.shape == (3, 16) and assignments.shape == (180,) and assignments.dtype == torch.int64
    assert torch.allclose(centroids.norm(dim=1), torch.ones(3), atol=1e-5)
    # each centroid points along one of the true directions
    assert (centroids @ directions.T).max(dim=1).values.min() > 0.95
    # assignments are the nearest (largest-cosine) returned centroid
    cos = F.normalize(x, dim=1) @ centroids.T
    assert torch.equal(assignments, cos.argmax(dim=1))


def test_spherical_kmeans_is_deterministic_given_generator():
    x = torch.randn(500, 8, generator=torch.Generator().manual_seed(14))
    for init in ("random", "k-means++"):
        a = spherical_kmeans(x, 7, generator=torch.Generator().manual_seed(0), init=init, chunk=64)
        b = spherical_kmeans(x, 7, generator=torch.Generator().manual_seed(0), init=init, chunk=64)
        assert torch.equal(a[0], b[0]) and torch.equal(a[1], b[1])


@pytest.mark.parametrize("seed", range(8))
def test_spherical_kmeans_no_empty_clusters(seed):
    # 6 distinct directions, each repeated 15 times: random init almost always picks duplicate seeds, so
    # k = 6 can only end with no empty cluster if re-seeding works (and must then split the data exactly).
    distinct = torch.randn(6, 5, generator=torch.Generator().manual_seed(15))
    x = distinct.repeat(15, 1)
    _, assignments = spherical_kmeans(x, 6, iters=3, generator=torch.Generator().manual_seed(seed))
    assert torch.bincount(assignments, minlength=6).min() > 0
    assert cluster_accuracy(torch.arange(6).repeat(15), assignments) == 1.0


def test_spherical_kmeans_k_equals_n_and_too_large_k():
    x = torch.randn(10, 4, generator=torch.Generator().manual_seed(16))
    _, assignments = spherical_kmeans(x, 10, generator=torch.Generator().manual_seed(0))
    assert sorted(assignments.tolist()) == list(range(10))
    with pytest.raises(ValueError, match="k=11"):
        spherical_kmeans(x, 11)


def test_spherical_kmeans_half_precision_input():
    x, y = blobs(30, 3 * orthogonal_directions(3, 8, seed=17), noise=0.1, seed=18)
    centroids, assignments = spherical_kmeans(x.bfloat16(), 3, generator=torch.Generator().manual_seed(0),
                                              init="k-means++")
    assert centroids.dtype == torch.float32
    assert cluster_accuracy(y, assignments) == 1.0


def test_batch_balance_is_occupancy_stats_on_the_device_without_leaving_it():
    from selfsup_lab.metrics import batch_balance

    generator = torch.Generator().manual_seed(0)
    cases = [torch.randint(0, 20, (7,), generator=generator) for _ in range(5)]
    cases += [torch.tensor([5, 5, 5, 5]), torch.tensor([20, 0, 0, 0]), torch.tensor([0, 0, 0]), torch.tensor([7])]
    for counts in cases:
        stats = occupancy_stats(counts)
        balance = batch_balance(counts)
        assert balance.dtype == torch.float64 and balance.device == counts.device
        assert balance.tolist() == pytest.approx([stats["entropy_ratio"], stats["max_share"]], abs=1e-12)
    assert str(batch_balance(torch.tensor([9, 0]))[0].item()) == "0.0"  # not -0.0 in history.jsonl


def test_linear_probe_standardises_the_test_features_with_the_train_statistics():
    """Class 0 near −1, class 1 near +1 in the train split; every test point lies on the class-1 side. Standardised
    with its own mean (1.25), half of the test points would cross the boundary."""
    g = torch.Generator().manual_seed(0)
    y_train = torch.arange(200) % 2
    x_train = (2.0 * y_train - 1).float()[:, None] + 0.1 * torch.randn(200, 1, generator=g)
    x_test, y_test = torch.tensor([[0.5], [1.0], [1.5], [2.0]]), torch.ones(4, dtype=torch.long)
    assert linear_probe(x_train, y_train, x_test, y_test, epochs=50) == 1.0


# --- spherical k-means -----------------------------------------------------------------------------------------

def test_one_lloyd_iteration_moves_each_centroid_to_its_members_normalised_mean():
    x = torch.randn(200, 6, generator=torch.Generator().manual_seed(1))
    seeds, assigned = spherical_kmeans(x, 5, iters=0, generator=torch.Generator().manual_seed(0))
    centroids, _ = spherical_kmeans(x, 5, iters=1, generator=torch.Generator().manual_seed(0))
    xn = F.normalize(x, dim=1)
    assert torch.bincount(assigned, minlength=5).min() > 0
    expected = F.normalize(torch.stack([xn[assigned == j].sum(0) for j in range(5)]), dim=1)
    torch.testing.assert_close(centroids, expected, atol=1e-5, rtol=0)
    assert not torch.allclose(centroids, seeds, atol=1e-3)  # it really moved off the seed points


def test_an_empty_cluster_is_reseeded_from_a_point_of_the_largest_cluster():
    from selfsup_lab.kmeans import _assign_without_empty

    g, e = torch.Generator().manual_seed(0), torch.eye(3)
    small = F.normalize(e[0] + 0.05 * torch.randn(3, 3, generator=g), dim=1)  # 3 points near e0
    big = F.normalize(e[1] + 0.05 * torch.randn(8, 3, generator=g), dim=1)  # 8 points near e1
    centroids = torch.stack([e[0], e[1], -F.normalize(e[0] + e[1], dim=0)])  # the third gets none
    counts = torch.bincount(_assign_without_empty(torch.cat([small, big]), centroids,
                                                  torch.Generator().manual_seed(0), chunk=64), minlength=3)
    assert counts.min() > 0 and counts[0] == 3  # the small cluster is left whole
    assert float(centroids[2] @ e[1]) > 0.9  # the new seed is one of the largest cluster's points


def test_kmeans_plus_plus_seeds_cover_the_data_better_than_random_seeds():
    directions = orthogonal_directions(8, 16, seed=0)
    labels = torch.arange(8).repeat_interleave(torch.tensor([60, 40, 30, 20, 10, 10, 5, 5]))
    noise = 0.1 * torch.randn(len(labels), 16, generator=torch.Generator().manual_seed(1))
    x = F.normalize(directions[labels] + noise, dim=1)

    def mean_potential(init):  # Σ_i (1 − max_k cos(x_i, c_k)) over 20 seeds
        total = 0.0
        for seed in range(20):
            centroids, _ = spherical_kmeans(x, 8, iters=0, init=init, generator=torch.Generator().manual_seed(seed))
            total += float((1 - (x @ centroids.T).max(dim=1).values).sum())
        return total / 20

    assert mean_potential("k-means++") < 0.7 * mean_potential("random")  # measured 25.7 against 53.9


def test_random_init_draws_distinct_data_points_from_the_generator():
    x = torch.randn(100, 8, generator=torch.Generator().manual_seed(1))
    xn = F.normalize(x, dim=1)
    inits = [spherical_kmeans(x, 4, iters=0, generator=torch.Generator().manual_seed(s))[0] for s in range(5)]
    for c in inits:
        assert ((c @ xn.T).max(dim=1).values > 1 - 1e-6).all()  # every seed is a data point
    assert any(not torch.equal(inits[0], c) for c in inits[1:])  # ...chosen by the generator
    assert any(not torch.allclose(c, xn[:4]) for c in inits)  # ...not simply the first k rows


# --- inputs a researcher can plausibly pass (an audit, 2026-11-24) -----------------------------------------

def _blobs(n_per_class=10, classes=3, seed=0):
    g = torch.Generator().manual_seed(seed)
    centres = F.normalize(torch.randn(classes, 8, generator=g), dim=1) * 5
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    return centres[labels] + 0.1 * torch.randn(len(labels), 8, generator=g), labels


def test_one_nan_row_is_refused_instead_of_skewing_knn_kmeans_and_the_probe():
    from selfsup_lab import metrics

    x, y = _blobs()
    assert metrics.knn_accuracy(x, y, x, y, k=5) == 1.0
    broken = x.clone()
    broken[3, 1] = float("nan")  # topk would rank this row nearest to every query
    for call in (lambda: metrics.knn_accuracy(broken, y, x, y, k=5),
                 lambda: metrics.kmeans_clustering_scores(broken, y),
                 lambda: metrics.linear_probe(broken, y, x, y, epochs=5)):
        with pytest.raises(ValueError, match="NaN or infinite values in 1 of 30 rows"):
            call()


def test_the_probe_refuses_features_of_two_widths_in_one_sentence():
    from selfsup_lab import metrics

    x, y = _blobs()
    with pytest.raises(ValueError, match="train_features have 8 dimensions but test_features 3"):
        metrics.linear_probe(x, y, x[:, :3], y, epochs=5)


def test_clustering_scores_leave_unlabelled_points_out():
    from selfsup_lab import metrics

    labelled_only = metrics.clustering_scores([0, 0, 1, 1], [0, 0, 1, 1])
    assert metrics.clustering_scores([0, 0, 1, 1, -1, -1], [0, 0, 1, 1, 0, 1]) == labelled_only == {
        "acc": 1.0, "nmi": 1.0, "ari": 1.0}
    with pytest.raises(ValueError, match="no point has a label"):
        metrics.clustering_scores([-1, -1], [0, 1])
    x, y = _blobs()
    y_with_unlabelled = y.clone()
    y_with_unlabelled[::5] = -1
    assert metrics.kmeans_clustering_scores(x, y_with_unlabelled)["acc"] == 1.0  # K = 3 classes, not 4
