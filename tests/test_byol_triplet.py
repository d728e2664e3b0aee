"""BYOL and the truncated triplet: the loss equals its closed form, the rank rule reproduces the paper's
window, the EMA target follows the online network, and two processes take the step one process takes."""
import math

import pytest
import torch
import torch.nn.functional as F

from ddp_utils import assert_same_state, one_step
from selfsup_lab.errors import UserError
from selfsup_lab.methods import MethodContext, StepOutput
from selfsup_lab.methods.byol import BYOL, BYOLOptions, normalized_mse
from selfsup_lab.methods.triplet import (TripletOptions, TruncatedTriplet, deputy_window, rank_window,
                                         truncated_triplet_loss)
from selfsup_lab.models import build_backbone

SMALL = dict(proj_hidden=32, proj_dim=16, pred_hidden=32)


def context(batch_size=8):
    return MethodContext(num_train=64, num_classes=4, batch_size=batch_size, epochs=1, steps_per_epoch=1, image_size=16)


def build_byol():
    return BYOL(build_backbone("convnet"), BYOLOptions(**SMALL), context())


def build_triplet():
    return TruncatedTriplet(build_backbone("convnet"), TripletOptions(**SMALL, r_lo=2, r_hi=4), context())


# --- the rank rule -------------------------------------------------------------------------------------------

def test_rank_rule_reproduces_the_official_window_on_imagenet():
    assert rank_window(196, 1000) == (2, 10)


def test_rank_rule_moves_far_up_for_cifar10_at_batch_512():
    r_lo, r_hi = rank_window(512, 10)
    assert 60 <= r_lo <= 70 and r_hi == r_lo + 8


def test_rank_rule_is_the_binomial_tail_quantile():
    from scipy.stats import binom

    for batch, classes in [(64, 10), (256, 10), (512, 100), (1024, 1000)]:
        r_lo, _ = rank_window(batch, classes, epsilon=0.05)
        tail = lambda r: binom.sf(r - 1, batch - 1, 1 / classes)  # P(X ≥ r)
        assert tail(r_lo) <= 0.05 < tail(r_lo - 1)
    # a tiny ε: the tail is summed from the top, not taken as 1 − P(X < r), which cannot go below ~1e-16
    for batch, classes, epsilon in [(4096, 10, 1e-14), (100_000, 1000, 1e-12), (512, 10, 1e-30)]:
        r_lo, _ = rank_window(batch, classes, epsilon=epsilon)
        tail = lambda r: binom.sf(r - 1, batch - 1, 1 / classes)  # noqa: E731
        assert r_lo < batch - 1 and tail(r_lo) <= epsilon < tail(r_lo - 1), (batch, classes, epsilon, r_lo)


def test_deputy_choices_and_clipping():
    opts = TripletOptions(expected_classes=10)
    assert deputy_window(opts, 256) == (2, 10)
    assert deputy_window(TripletOptions(deputy="rank-rule", expected_classes=10), 256) == rank_window(256, 10)
    assert deputy_window(TripletOptions(deputy="median"), 257) == (128, 128)  # 256 negatives: ranks 1..256
    assert deputy_window(TripletOptions(deputy="median"), 256) == (128, 128)  # 255 negatives: the middle one
    assert deputy_window(opts, 6) == (2, 5)  # a batch of 6 has only 5 negatives
    with pytest.raises(UserError, match="unknown deputy"):
        deputy_window(TripletOptions(deputy="best"), 64)
    for deputy in ("window", "median", "rank-rule"):  # no negative at all: said once, whatever the deputy
        with pytest.raises(UserError, match="at least 2 images per batch"):
            deputy_window(TripletOptions(deputy=deputy), 1)


@pytest.mark.parametrize("window", [(1, 5), (2, 6), (0, 3), (3, 2), (0, 0)])
def test_triplet_loss_refuses_a_window_outside_the_negatives(window):
    """5 images have 4 negatives: rank 5 would be the anchor's own −inf entry, rank 0 or r_lo > r_hi nothing."""
    p, t = torch.randn(5, 4), torch.randn(5, 4)
    with pytest.raises(ValueError, match=r"1 ≤ r_lo ≤ r_hi ≤ 4"):
        truncated_triplet_loss(p, t, *window)
    assert torch.isfinite(truncated_triplet_loss(p, t, 1, 4)[0])  # the widest valid window


# --- the losses -------------------------------------------------------------------------------------------------

def test_triplet_loss_matches_its_closed_form():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(12, 5, generator=g, requires_grad=True), torch.randn(12, 5, generator=g)
    loss, _, _ = truncated_triplet_loss(p, t, r_lo=2, r_hi=5, gamma=2.0)
    pn, tn = F.normalize(p.detach(), dim=1), F.normalize(t, dim=1)
    expected, hinge = [], []
    for i in range(12):
        pos = float(pn[i] @ tn[i])
        negs = sorted((float(pn[i] @ tn[j]) for j in range(12) if j != i), reverse=True)
        window = sum(negs[1:5]) / 4  # ranks 2..5, 1-based
        expected.append(-4 * pos + 2 * window)
        d_ap, d_an = -2 * pos, -2 * window
        hinge.append(max(0.0, 2 * d_ap - d_an + 100.0))  # the paper's hinge, margin 100
    assert loss.item() == pytest.approx(sum(expected) / 12, abs=1e-5)
    assert loss.item() == pytest.approx(sum(hinge) / 12 - 100.0, abs=1e-4)  # equal up to the constant
    loss.backward()
    assert p.grad is not None and p.grad.abs().sum() > 0


def test_triplet_gamma_weights_only_the_positive_term():
    """−2γ·cos(pos): one more unit of γ lowers the loss by 2·mean cos(pos), whatever the window."""
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(12, 5, generator=g), torch.randn(12, 5, generator=g)
    losses = {gamma: truncated_triplet_loss(p, t, 2, 5, gamma=gamma) for gamma in (1.0, 2.0, 3.0)}
    positive = losses[2.0][1].mean()
    assert (losses[3.0][0] - losses[2.0][0]).item() == pytest.approx(-2 * positive.item(), abs=1e-5)
    assert (losses[2.0][0] - losses[1.0][0]).item() == pytest.approx(-2 * positive.item(), abs=1e-5)


def test_byol_loss_is_symmetric_normalised_mse():
    torch.manual_seed(0)
    method = build_byol().train()
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    out = method.training_step(views, torch.arange(8))
    # Recompute from the parts: the target's BN runs in training mode on the same views, as in the step.
    p1, p2, t1, t2 = method.predictions_and_targets(views)
    cos = lambda a, b: F.cosine_similarity(a, b, dim=1)
    expected = ((2 - 2 * cos(p1, t2)) + (2 - 2 * cos(p2, t1))).mean()
    assert out.loss.dtype == torch.float32
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # The logged positive cosine is the mean of the two directions' cosines.
    assert out.logs["pos_cos"].item() == pytest.approx(((cos(p1, t2) + cos(p2, t1)) / 2).mean().item(), abs=1e-5)
    out.loss.backward()
    assert all(p.grad is None for p in method.target_backbone.parameters())  # stop-gradient
    assert any(p.grad is not None for p in method.predictor.parameters())


def test_target_follows_the_online_network_by_ema():
    method = build_byol()
    with torch.no_grad():
        for p in method.backbone.parameters():
            p.add_(1.0)
    before = [t.clone() for t in method.target_backbone.parameters()]
    method.after_optimizer_step(0.0)  # m = m0 = 0.99
    for b, t, s in zip(before, method.target_backbone.parameters(), method.backbone.parameters()):
        assert torch.allclose(t, 0.99 * b + 0.01 * s, atol=1e-6)
    frozen = [t.clone() for t in method.target_backbone.parameters()]
    method.after_optimizer_step(1.0)  # m = 1 at the end: the target stops moving
    assert all(torch.equal(a, b) for a, b in zip(frozen, method.target_backbone.parameters()))
    assert math.isclose(float(method.momentum), 1.0)


def test_triplet_logs_and_records_its_window():
    torch.manual_seed(0)
    method = TruncatedTriplet(build_backbone("convnet"), TripletOptions(**SMALL, deputy="rank-rule", expected_classes=2),
                              context(16))
    out = method.training_step([torch.randn(16, 3, 16, 16) for _ in range(2)], torch.arange(16))
    r_lo, r_hi = rank_window(16, 2)
    assert (out.logs["deputy_r_lo"], out.logs["deputy_r_hi"]) == (r_lo, min(r_hi, 15))
    assert method.extra_info()["deputy_window"] == [r_lo, min(r_hi, 15)]
    assert "our reconstruction" in method.extra_info()["deputy_rule"]


# --- two processes = one process ----------------------------------------------------------------------------------

class BothMethods(torch.nn.Module):
    """BYOL and the triplet side by side, so one pair of spawned processes checks both (spawning is the slow
    part). Their parameters are disjoint, so the summed loss gives each exactly its own gradient."""

    def __init__(self):
        super().__init__()
        self.byol, self.triplet = build_byol(), build_triplet()

    def training_step(self, views, indices):
        return StepOutput(loss=self.byol.training_step(views, indices).loss + self.triplet.training_step(views, indices).loss)

    def after_optimizer_step(self, progress):
        self.byol.after_optimizer_step(progress)
        self.triplet.after_optimizer_step(progress)


def build_both():
    return BothMethods()


def test_two_ranks_match_one_rank():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    indices = torch.arange(8)
    single = one_step(build_both, views, indices, world=1)
    double = one_step(build_both, views, indices, world=2)
    assert_same_state(single["state"], double["state"])  # online, predictor, EMA target and BN buffers
    torch.manual_seed(0)
    initial = build_both().state_dict()
    moved = lambda prefix: max((single["state"][k] - initial[k]).abs().max().item()
                               for k in initial if k.startswith(prefix) and initial[k].is_floating_point())
    assert moved("byol.target_backbone") > 1e-6 and moved("triplet.predictor") > 1e-4


def test_losses_are_computed_in_float32_under_bf16_autocast():
    """Under the trainer's bf16 autocast (CUDA; CPU autocast behaves the same for matmuls), the cosines that
    NT-Xent turns into logits and the triplet ranks must not be rounded to bf16: two negatives 0.004 apart
    would tie and swap ranks."""
    from selfsup_lab.methods.simclr import nt_xent_loss
    from selfsup_lab.methods.triplet import truncated_triplet_loss

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(64, 32, generator=g), torch.randn(64, 32, generator=g)
    plain_simclr = nt_xent_loss(a, b, 0.2)
    plain_triplet = truncated_triplet_loss(a, b, 3, 9)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        mixed_simclr = nt_xent_loss(a, b, 0.2)
        mixed_triplet = truncated_triplet_loss(a, b, 3, 9)
    assert mixed_simclr[0].dtype == torch.float32 and mixed_triplet[0].dtype == torch.float32
    torch.testing.assert_close(mixed_simclr[0], plain_simclr[0])
    assert torch.equal(mixed_simclr[1], plain_simclr[1])  # the positive's rank
    for mixed, plain in zip(mixed_triplet, plain_triplet):
        torch.testing.assert_close(mixed, plain)


# --- added by the mutation round: what the steps compare, defaults, validation ------------------------------------

def test_each_prediction_is_compared_with_the_other_views_target():
    # recomputed from online()/target() directly, not from predictions_and_targets (which the step itself uses)
    torch.manual_seed(0)
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    byol = build_byol().train()
    out = byol.training_step(views, torch.arange(8))
    p1, p2, t1, t2 = byol.online(views[0]), byol.online(views[1]), byol.target(views[0]), byol.target(views[1])
    expected = (normalized_mse(p1, t2) + normalized_mse(p2, t1)).mean()
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-5)
    # the triplet: the two directions' losses added (default γ = 2), their cosines averaged in the logs
    triplet = build_triplet().train()
    out = triplet.training_step(views, torch.arange(8))
    p1, p2, t1, t2 = triplet.online(views[0]), triplet.online(views[1]), triplet.target(views[0]), triplet.target(views[1])
    loss12, pos12, dep12 = truncated_triplet_loss(p1, t2, 2, 4, gamma=2.0)
    loss21, pos21, dep21 = truncated_triplet_loss(p2, t1, 2, 4, gamma=2.0)
    assert out.loss.item() == pytest.approx((loss12 + loss21).item(), rel=1e-5)
    assert out.logs["pos_cos"].item() == pytest.approx(((pos12.mean() + pos21.mean()) / 2).item(), abs=1e-5)
    assert out.logs["deputy_cos"].item() == pytest.approx(((dep12.mean() + dep21.mean()) / 2).item(), abs=1e-5)


def test_the_whole_target_follows_by_ema_and_checkpoints_carry_the_momentum():
    method = build_byol()
    with torch.no_grad():
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.add_(1.0)
    before = [t.clone() for t in method.target_projector.parameters()]
    method.after_optimizer_step(0.5)  # m(T/2) = 1 − 0.01·(1 + cos(π/2))/2 = 0.995
    for b, t, s in zip(before, method.target_projector.parameters(), method.projector.parameters()):
        assert torch.allclose(t, 0.995 * b + 0.005 * s, atol=1e-6)
    assert float(method.state_dict()["momentum"]) == pytest.approx(0.995)
    out = method.train().training_step([torch.randn(8, 3, 16, 16) for _ in range(2)], torch.arange(8))
    assert float(out.logs["ema_momentum"]) == pytest.approx(0.995)  # the log shows the current m, not m0


def test_target_is_the_ema_copy_not_the_online_network():
    torch.manual_seed(0)
    method = build_byol().eval()  # eval: batch norm uses the (equal) running statistics, not the batch
    view = torch.randn(8, 3, 16, 16)
    before = method.target(view)
    torch.testing.assert_close(before, method.projector(method.backbone(view)))  # starts as an exact copy
    with torch.no_grad():
        for p in list(method.backbone.parameters()) + list(method.projector.parameters()):
            p.mul_(1.5)
    torch.testing.assert_close(method.target(view), before)  # the online network moved, the target did not


def test_normalized_mse_is_float32_for_bf16_inputs():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(16, 8, generator=g).bfloat16(), torch.randn(16, 8, generator=g).bfloat16()
    loss = normalized_mse(p, t)
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, 2 - 2 * F.cosine_similarity(p.float(), t.float(), dim=1))


def test_default_options_are_the_methods_md_recipe():
    """Projector 512→4096→256 (no BN at the output), predictor 256→4096→256, m0 0.99; the deputy window [2, 10],
    γ = 2, the rank rule's ε = 0.05, width 9 and prior C = 10 (METHODS.md §3)."""
    method = BYOL(build_backbone("convnet"), BYOLOptions(), context())
    shapes = lambda net: [(m.in_features, m.out_features) for m in net if isinstance(m, torch.nn.Linear)]  # noqa: E731
    assert shapes(method.projector) == [(method.backbone.feature_dim, 4096), (4096, 256)]
    assert isinstance(method.projector[-1], torch.nn.Linear)  # no BN after the last layer
    assert shapes(method.predictor) == [(256, 4096), (4096, 256)]
    options = TripletOptions()
    assert (options.deputy, options.r_lo, options.r_hi, options.gamma) == ("window", 2, 10, 2.0)
    assert (options.epsilon, options.window_width, options.expected_classes) == (0.05, 9, 10)
    assert options.base_momentum == 0.99


def test_rank_rule_edge_cases_and_refusals():
    assert rank_window(16, 1) == (15, 15)  # one class: every negative shares it, only the last rank is left
    assert rank_window(3, 2) == (2, 2)  # P(X ≥ 2) = 1/4 > ε even at the last rank: the last rank
    for bad in [dict(batch_size=1), dict(expected_classes=0), dict(epsilon=0.0), dict(epsilon=1.0),
                dict(epsilon=1.5), dict(width=0)]:
        args = dict(batch_size=64, expected_classes=10, epsilon=0.05, width=9) | bad
        with pytest.raises(UserError, match="rank_window needs"):
            rank_window(**args)


def test_deputy_window_refuses_an_empty_window_and_clips_to_the_batch():
    for r_lo, r_hi in [(0, 5), (5, 3)]:
        with pytest.raises(UserError, match="1 ≤ r_lo ≤ r_hi"):
            deputy_window(TripletOptions(r_lo=r_lo, r_hi=r_hi), 64)
        with pytest.raises(UserError, match="1 ≤ r_lo ≤ r_hi"):  # the method fails when built, not at the first step
            TruncatedTriplet(build_backbone("convnet"), TripletOptions(**SMALL, r_lo=r_lo, r_hi=r_hi), context())
    assert deputy_window(TripletOptions(r_lo=8, r_hi=10), 6) == (5, 5)  # 5 negatives: the window moves to the last


def test_triplet_gradient_reaches_only_the_prediction():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(6, 4, generator=g, requires_grad=True), torch.randn(6, 4, generator=g, requires_grad=True)
    truncated_triplet_loss(p, t, 1, 3)[0].backward()
    assert p.grad is not None and t.grad is None  # the target side is stop-gradient inside the loss


def test_triplet_step_on_a_smaller_batch_clips_its_window():
    # built for batches of 8 with window [2, 4]; a last batch of 4 images has 3 negatives: [2, 3]
    torch.manual_seed(0)
    method = build_triplet().train()
    out = method.training_step([torch.randn(4, 3, 16, 16) for _ in range(2)], torch.arange(4))
    assert (out.logs["deputy_r_lo"], out.logs["deputy_r_hi"]) == (2, 3) and torch.isfinite(out.loss)
    assert method.extra_info()["deputy_window"] == [2, 4]  # the window recorded is the full batch's


def test_rank_rule_description_names_the_prior_and_epsilon():
    method = TruncatedTriplet(build_backbone("convnet"),
                              TripletOptions(**SMALL, deputy="rank-rule", expected_classes=3, epsilon=0.02), context(16))
    rule = method.extra_info()["deputy_rule"]
    assert "1/3" in rule and "0.02" in rule
