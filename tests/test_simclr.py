"""SimCLR's NT-Xent (METHODS.md §1) against the formula written out, and the positive rank it logs."""
import math

import pytest
import torch
import torch.nn.functional as F

from selfsup_lab.methods import MethodContext, simclr
from selfsup_lab.methods.simclr import SimCLR, SimCLROptions, nt_xent_loss
from selfsup_lab.models import build_backbone


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


def context():
    return MethodContext(num_train=64, num_classes=4, batch_size=8, epochs=1, steps_per_epoch=1, image_size=16)


def build_simclr(**options):
    return SimCLR(build_backbone("convnet"), SimCLROptions(proj_hidden=32, proj_dim=16, **options), context())


def test_step_logs_the_top1_and_top5_hit_rates_of_the_positive(monkeypatch):
    # 16 anchors whose positives rank 0, 0, 1, 4, 5, 6, ...: top-1 = rank 0 (2 of 16), top-5 = ranks 0..4 (4 of 16)
    ranks = torch.tensor([0, 0, 1, 4, 5, 6, 7, 9, 10, 11, 12, 13, 14, 14, 14, 14])
    monkeypatch.setattr(simclr, "nt_xent_loss", lambda z1, z2, temperature: ((z1 * z2).sum(), ranks))
    out = build_simclr().training_step([torch.randn(8, 3, 16, 16) for _ in range(2)], torch.arange(8))
    assert out.logs["pos_top1"].item() == pytest.approx(2 / 16)
    assert out.logs["pos_top5"].item() == pytest.approx(4 / 16)


def test_one_pass_encodes_both_views_together_and_is_off_by_default():
    torch.manual_seed(0)
    views = [torch.randn(8, 3, 16, 16), torch.randn(8, 3, 16, 16)]
    assert SimCLROptions().one_pass is False
    method = build_simclr(one_pass=True).train()
    z1, z2 = method.projector(method.backbone(torch.cat(views))).chunk(2)  # batch norm over all 2B images
    joint = nt_xent_loss(z1, z2, 0.2)[0]
    separate = nt_xent_loss(*(method.projector(method.backbone(v)) for v in views), 0.2)[0]
    assert method.training_step(views, torch.arange(8)).loss.item() == pytest.approx(joint.item(), rel=1e-5)
    assert joint.item() != pytest.approx(separate.item(), rel=1e-4)  # the two modes really differ here
    method.options.one_pass = False
    assert method.training_step(views, torch.arange(8)).loss.item() == pytest.approx(separate.item(), rel=1e-5)


def test_nt_xent_of_bf16_embeddings_is_computed_in_float32():
    # under autocast the projector hands over bf16 embeddings: the logits and the loss must still be float32
    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, 32, generator=g), torch.randn(16, 32, generator=g)
    half = nt_xent_loss(a.bfloat16(), b.bfloat16(), 0.2)
    full = nt_xent_loss(a.bfloat16().float(), b.bfloat16().float(), 0.2)
    assert half[0].dtype == torch.float32
    torch.testing.assert_close(half[0], full[0])
    assert torch.equal(half[1], full[1])


def test_default_options_are_the_methods_md_recipe():
    """τ = 0.2 and the projector 512→2048→128 (BN, ReLU) of METHODS.md §1."""
    options = SimCLROptions()
    assert (options.temperature, options.proj_hidden, options.proj_dim) == (0.2, 2048, 128)
    method = SimCLR(build_backbone("convnet"), options, context())
    linears = [m for m in method.projector if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(method.backbone.feature_dim, 2048), (2048, 128)]
