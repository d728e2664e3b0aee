"""SimCLR's NT-Xent (METHODS.md §1) against the formula written out, and the positive rank it logs."""
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup_lab.methods.simclr import nt_xent_loss


def test_nt_xent_is_the_formula_written_out():
    """ℓ_i = −log exp(sim(i, pos)/τ) / Σ_{j≠i} exp(sim(i, j)/τ), averaged over the 2B anchors."""
    g = torch.Generator().manual_seed(0)
    z1, z2 = torch.randn(5, 8, generator=g), torch.randn(5, 8, generator=g)
    tau = 0.3
    z = F.normalize(torch.cat([z1, z2]), dim=1).tolist()
    cos = lambda a, b: sum(x * y for x, y in zip(a, b))  # noqa: E731
    losses = []
    for i in range(10):
        partner = (i + 5) % 10
        denominator = sum(math.exp(cos(z[i], z[j]) / tau) for j in range(10) if j != i)
        losses.append(-math.log(math.exp(cos(z[i], z[partner]) / tau) / denominator))
    loss, _ = nt_xent_loss(z1, z2, tau)
    assert loss.item() == pytest.approx(sum(losses) / 10, rel=1e-5)


def test_positive_rank_counts_the_candidates_scoring_above_the_positive():
    z = torch.randn(8, 32, generator=torch.Generator().manual_seed(0))
    _, rank = nt_xent_loss(z, z.clone(), 0.5)
    assert rank.tolist() == [0] * 16  # identical views: every partner is its anchor's top candidate
    # Anchor (1,0,0): its partner (0,1,0) scores 0, the other image's second view (.6,0,.8) scores 0.6 above it,
    # the other image's first view (0,0,1) ties the partner at 0 and does not count. The other anchors' partners win.
    z1 = torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 1.0]])
    z2 = torch.tensor([[0.0, 1.0, 0.0], [0.6, 0.0, 0.8]])
    _, rank = nt_xent_loss(z1, z2, 0.5)
    assert rank.tolist() == [1, 0, 0, 0]
