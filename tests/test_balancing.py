"""Properties of the balancing rules (selfsup_lab.balancing, METHODS.md §4) on small toy tensors."""
import pytest
import torch
import torch.nn.functional as F

from selfsup_lab.balancing import (excb_balance_scores, excb_relative_sizes, excb_update_sizes, naive_targets,
                                   sinkhorn)


def cosines(n: int, k: int, d: int = 8, seed: int = 0, skew: float = 0.0) -> torch.Tensor:
    """(n, k) cosines between random unit vectors; `skew` > 0 pulls the points towards prototype 0."""
    g = torch.Generator().manual_seed(seed)
    c = F.normalize(torch.randn(k, d, generator=g), dim=1)
    x = F.normalize(torch.randn(n, d, generator=g) + skew * c[0], dim=1)
    return x @ c.t()


def column_share(q: torch.Tensor) -> torch.Tensor:
    """Each column's mass relative to the equal share B/K (1 = perfectly balanced)."""
    return q.sum(dim=0) / (q.shape[0] / q.shape[1])


# --- naive ---------------------------------------------------------------------------------------------

def test_naive_targets_are_row_softmax_and_equal_sinkhorn_without_iterations():
    s = cosines(16, 5)
    q = naive_targets(s, 0.05)
    assert torch.allclose(q.sum(dim=1), torch.ones(16))
    assert torch.allclose(q, torch.softmax(s / 0.05, dim=1))
    assert torch.allclose(q, sinkhorn(s, epsilon=0.05, iterations=0), atol=1e-6)  # naive = SwAV minus balancing


# --- Sinkhorn ------------------------------------------------------------------------------------------

def test_sinkhorn_rows_sum_to_one_and_columns_hold_equal_shares():
    s = cosines(64, 8, skew=1.0)
    for iterations in (1, 3, 30):
        q = sinkhorn(s, epsilon=0.05, iterations=iterations)
        assert q.shape == s.shape and q.dtype == torch.float32
        assert (q >= 0).all()
        assert torch.allclose(q.sum(dim=1), torch.ones(64), atol=1e-5)
    share = column_share(sinkhorn(s, epsilon=0.05, iterations=30))
    assert torch.allclose(share, torch.ones(8), atol=0.02), share
    share3 = column_share(sinkhorn(s, epsilon=0.05, iterations=3))  # SwAV's 3 iterations: close, not exact
    assert (share3 - 1).abs().max() < 0.6, share3  # measured 0.46 (the softmax alone: 2.27)


def test_sinkhorn_is_more_balanced_than_the_softmax_on_skewed_scores():
    s = cosines(128, 10, skew=1.5)
    soft = column_share(naive_targets(s, 0.05))
    balanced = column_share(sinkhorn(s, epsilon=0.05, iterations=3))
    assert soft.max() > 3.0  # the skew really puts most of the mass into one cluster (measured 4.5)
    assert balanced.max() < 1.75 and balanced.min() > 0.6  # measured 1.51 and 0.74 after 3 iterations
    assert (balanced - 1).abs().max() < 0.25 * (soft - 1).abs().max()
    assert balanced.std() < 0.3 * soft.std()


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_sinkhorn_has_no_nan_for_half_precision_cosines(dtype):
    # exp(1/0.05) = 4.9e8 overflows float16 (max 65504): the implementation must work in float32 after
    # subtracting the maximum. Include exact ±1 cosines and near-duplicate rows.
    s = cosines(32, 6).to(dtype)
    s[0] = 1.0
    s[1] = -1.0
    s[2:4] = s[4]
    q = sinkhorn(s, epsilon=0.05, iterations=3)
    assert q.dtype == torch.float32 and torch.isfinite(q).all()
    assert torch.allclose(q.sum(dim=1), torch.ones(32), atol=1e-5)
    # the very sharp end too: ε so small that exp(S/ε) without the shift would overflow even float32
    q = sinkhorn(s, epsilon=0.001, iterations=3)
    assert torch.isfinite(q).all() and torch.allclose(q.sum(dim=1), torch.ones(32), atol=1e-4)


def test_sinkhorn_refuses_an_epsilon_of_zero_instead_of_returning_nan():
    with pytest.raises(ValueError, match="epsilon > 0"):
        sinkhorn(cosines(8, 3), epsilon=0.0)
    with pytest.raises(ValueError, match=r"\(B, K\) scores"):
        sinkhorn(torch.randn(8))


def test_sinkhorn_queue_rows_are_dropped_and_pull_small_batches_towards_the_full_data_balance():
    s = cosines(512, 32, skew=1.0)
    full = sinkhorn(s, epsilon=0.05, iterations=3)  # equipartition over the whole "dataset"
    batch, queue = s[-16:], s[:-16]
    # With the rest of the data as the queue the batch gets exactly its rows of the full-data solution.
    with_all = sinkhorn(batch, epsilon=0.05, iterations=3, queue_scores=queue)
    assert with_all.shape == (16, 32)
    assert torch.allclose(with_all, full[-16:], atol=1e-5)
    # A batch of 16 for 32 clusters alone is forced to spread over all 32 clusters (noisy); a queue of 256
    # earlier rows lets the constraint act on 272 rows, so its targets are far closer to the full solution.
    errors_alone, errors_queue = [], []
    for start in range(256, 512, 16):
        b = s[start : start + 16]
        errors_alone.append((sinkhorn(b) - full[start : start + 16]).abs().sum(dim=1).mean())
        with_queue = sinkhorn(b, queue_scores=s[start - 256 : start])
        errors_queue.append((with_queue - full[start : start + 16]).abs().sum(dim=1).mean())
    assert torch.stack(errors_queue).mean() < 0.5 * torch.stack(errors_alone).mean()
    # and the combined problem is balanced: queue + batch columns ≈ N/K each
    both = torch.cat([s[:256], s[256:272]])
    q_all = sinkhorn(both, epsilon=0.05, iterations=30)
    assert torch.allclose(column_share(q_all), torch.ones(32), atol=0.05)


# --- ExCB ----------------------------------------------------------------------------------------------

def test_relative_sizes_sum_to_k_and_are_guarded():
    r = torch.tensor([0.5, 0.3, 0.2, 0.0])
    rho = excb_relative_sizes(r)
    assert torch.allclose(rho.sum(), torch.tensor(4.0), atol=1e-6)
    assert torch.allclose(rho[:3], torch.tensor([2.0, 1.2, 0.8]))
    assert rho[3] > 0  # ρ = 0 guarded by eps
    assert torch.allclose(excb_relative_sizes(torch.full((7,), 1 / 7)), torch.ones(7))
    assert torch.allclose(excb_relative_sizes(torch.tensor([3.0, 1.0])), torch.tensor([1.5, 0.5]))  # r needn't sum to 1


def test_balance_raises_small_clusters_lowers_big_ones_and_keeps_average_ones():
    s = cosines(50, 3)
    rho = torch.tensor([0.5, 1.0, 2.0])  # too small, average, too big
    out = excb_balance_scores(s, rho, boost=1.0)
    assert (out[:, 0] >= s[:, 0] - 1e-6).all() and (out[:, 0] > s[:, 0]).float().mean() > 0.9
    assert torch.allclose(out[:, 1], s[:, 1])
    assert (out[:, 2] <= s[:, 2] + 1e-6).all() and (out[:, 2] < s[:, 2]).float().mean() > 0.9
    # the exact maps
    assert torch.allclose(out[:, 0], 1 - (1 - s[:, 0]) * 0.5, atol=1e-6)
    assert torch.allclose(out[:, 2], (1 + s[:, 2]) / 2.0 - 1, atol=1e-6)
    # order within a cluster is kept: balancing changes which cluster wins, not who is most typical
    for k in range(3):
        assert torch.equal(out[:, k].argsort(), s[:, k].argsort())


def test_balance_output_stays_in_range_for_extreme_sizes():
    s = cosines(64, 4)
    s[0] = torch.tensor([1.0, -1.0, 0.999, -0.999])
    for rho in ([1e-8, 1.0, 50.0, 4.0], [0.01, 0.01, 0.01, 3.97]):
        out = excb_balance_scores(s, torch.tensor(rho))
        assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1


def test_top1_boost_multiplies_each_rows_best_score_only():
    s = cosines(20, 6) * 0.9  # room below 1 for the boost
    out = excb_balance_scores(s, torch.ones(6), boost=1.01)
    top = s.argmax(dim=1)
    expected = s.clone()
    expected[torch.arange(20), top] *= 1.01
    assert torch.allclose(out, expected.clamp(-1, 1), atol=1e-6)
    # and the boosted entry is clamped at 1
    s[0, 0] = 0.999
    s[0, 1:] = 0.0
    assert excb_balance_scores(s, torch.ones(6))[0, 0] == 1.0
    # the boost goes to the winner *after* balancing: cluster 0 leads the raw scores but is too big
    out = excb_balance_scores(torch.tensor([[0.5, 0.4]]), torch.tensor([2.0, 0.5]), boost=1.01)
    assert torch.allclose(out, torch.tensor([[1.5 / 2 - 1, (1 - 0.6 * 0.5) * 1.01]]), atol=1e-6)


def test_balance_computes_in_float32_from_bf16_scores():
    s = cosines(8, 4).bfloat16()
    out = excb_balance_scores(s, torch.tensor([0.5, 1.0, 1.5, 1.0]))
    assert out.dtype == torch.float32


def test_size_estimate_converges_to_the_true_frequencies_of_a_stationary_stream():
    g = torch.Generator().manual_seed(0)
    p = torch.tensor([0.4, 0.25, 0.15, 0.1, 0.05, 0.05])
    r = torch.full((6,), 1 / 6)
    for _ in range(3000):
        batch = torch.multinomial(p, 256, replacement=True, generator=g)
        fractions = torch.bincount(batch, minlength=6).float() / 256
        r = excb_update_sizes(r, fractions, momentum=0.99)
    assert torch.allclose(r.sum(), torch.tensor(1.0), atol=1e-4)  # stays a distribution
    assert (r - p).abs().max() < 0.01, r
    assert torch.allclose(excb_relative_sizes(r), 6 * p, atol=0.06)
    # the update itself is exactly the EMA
    assert torch.allclose(excb_update_sizes(torch.tensor([0.5, 0.5]), torch.tensor([1.0, 0.0]), 0.9),
                          torch.tensor([0.55, 0.45]))
