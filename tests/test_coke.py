"""CoKe (METHODS.md §4.4): the pure dual/centre/assignment steps on toy tensors, then the method itself."""
import torch
import torch.nn.functional as F

import selfsup_lab
from ddp_utils import assert_same_state, one_step
from selfsup_lab.balancing import coke_assign, coke_center_step, coke_dual_step
from selfsup_lab.methods import MethodContext
from selfsup_lab.methods.coke import CoKe, CoKeOptions
from selfsup_lab.models import build_backbone


# --- the pure functions ---------------------------------------------------------------------------------

def test_dual_step_raises_underfilled_lowers_overfilled_and_stays_nonnegative():
    B, gamma, eta = 10, 0.9 / 3, 0.5  # K = 3 clusters, minimum share γ = 0.3
    duals = torch.tensor([0.0, 0.0, 0.0])
    counts = torch.tensor([0, 2, 8])  # shares 0, 0.2, 0.8 against a minimum of 0.3
    new = coke_dual_step(duals, counts, B, gamma, eta)
    assert torch.allclose(new, torch.tensor([eta * 0.3, eta * 0.1, 0.0]))  # the last would be −0.25: projected
    assert torch.equal(duals, torch.zeros(3))  # pure: the input is untouched
    start = torch.tensor([0.5, 0.5, 0.01])
    new = coke_dual_step(start, counts, B, gamma, eta)
    assert new[0] > start[0] and new[1] > start[1]  # under-filled: more bonus
    assert new[2] == 0.0  # over-filled: bonus falls, but never below zero
    over = coke_dual_step(torch.tensor([0.5, 0.5, 0.5]), torch.tensor([1, 1, 8]), B, gamma, eta)
    assert over[2] < 0.5 and (over >= 0).all()
    assert new.dtype == torch.float32


def test_assign_adds_duals_to_cosines():
    centers = torch.eye(3)
    features = F.normalize(torch.tensor([[1.0, 0.2, 0.0], [0.9, 0.0, 0.3]]), dim=1)
    assert coke_assign(features, centers, torch.zeros(3)).tolist() == [0, 0]
    assert coke_assign(features, centers, torch.tensor([0.0, 1.0, 0.0])).tolist() == [1, 1]


def test_center_step_is_batch_mean_from_zero_counts_then_a_running_mean():
    g = torch.Generator().manual_seed(0)
    K, d = 4, 5
    centers = F.normalize(torch.randn(K, d, generator=g), dim=1)
    feats = F.normalize(torch.randn(6, d, generator=g), dim=1)
    labels = torch.tensor([0, 0, 1, 1, 1, 3])  # cluster 2 is not hit
    one_hot = F.one_hot(labels, K).float()
    before = centers.clone()
    new_centers, counts = coke_center_step(centers, torch.zeros(K), one_hot.t() @ feats, one_hot.sum(0))
    assert torch.equal(centers, before)  # pure
    assert counts.tolist() == [2, 3, 0, 1]
    for k in (0, 1, 3):
        assert torch.allclose(new_centers[k], F.normalize(feats[labels == k].mean(0), dim=0), atol=1e-6)
    assert torch.equal(new_centers[2], centers[2])  # not hit: unchanged
    # a second batch: c ← normalise(c·N_old/N_new + Σf/N_new)
    feats2 = F.normalize(torch.randn(2, d, generator=g), dim=1)
    labels2 = torch.tensor([0, 2])
    oh2 = F.one_hot(labels2, K).float()
    c2, n2 = coke_center_step(new_centers, counts, oh2.t() @ feats2, oh2.sum(0))
    assert n2.tolist() == [3, 3, 1, 1]
    assert torch.allclose(c2[0], F.normalize(new_centers[0] * 2 / 3 + feats2[0] / 3, dim=0), atol=1e-6)
    assert torch.allclose(c2[2], feats2[1], atol=1e-6)
    assert torch.allclose(c2.norm(dim=1), torch.ones(K))


def test_duals_keep_every_cluster_near_its_minimum_share_on_a_skewed_stream():
    """80% of the features sit near centre 0: plain argmax starves the others, the duals do not."""
    g = torch.Generator().manual_seed(0)
    K, d, B, ratio = 5, 16, 64, 0.9
    gamma = ratio / K
    centers = F.normalize(torch.randn(K, d, generator=g), dim=1)

    def batch():
        which = torch.where(torch.rand(B, generator=g) < 0.8, 0, torch.randint(1, K, (B,), generator=g))
        return F.normalize(centers[which] + 0.3 * torch.randn(B, d, generator=g) / d ** 0.5, dim=1)

    duals = torch.zeros(K)
    dual_shares, plain_shares = [], []
    for step in range(300):
        f = batch()
        y = coke_assign(f, centers, duals)
        counts = torch.bincount(y, minlength=K)
        duals = coke_dual_step(duals, counts, B, gamma, step_size=0.1 * K)
        if step >= 100:  # after a burn-in
            dual_shares.append(counts.float() / B)
            plain_shares.append(torch.bincount(coke_assign(f, centers, torch.zeros(K)), minlength=K).float() / B)
    dual_share, plain_share = torch.stack(dual_shares).mean(0), torch.stack(plain_shares).mean(0)
    assert (dual_share >= 0.85 * gamma).all(), dual_share
    assert (plain_share[1:] < 0.5 * gamma).all(), plain_share  # without duals the minority clusters starve
    assert (duals >= 0).all() and duals[0] == 0  # the big cluster never needs a bonus


# --- the method -----------------------------------------------------------------------------------------

CONTEXT = dict(num_train=64, num_classes=4, batch_size=8, epochs=2, steps_per_epoch=8, image_size=16)


def build_coke():
    context = MethodContext(**CONTEXT)
    method = CoKe(build_backbone("convnet"), CoKeOptions(num_clusters=(2, 4), proj_hidden=32, proj_dim=16), context)
    # A mid-training state: last epoch's labels and some duals, so the step exercises every path.
    g = torch.Generator().manual_seed(3)
    method.labels.copy_(torch.randint(0, 2, method.labels.shape, generator=g))
    method.duals_1.copy_(torch.rand(4, generator=g) * 0.1)
    method.initialized.fill_(True)
    return method


def test_two_ranks_match_one_rank_including_duals_centres_and_labels():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    indices = torch.tensor([3, 60, 7, 12, 0, 33, 21, 48])
    single = one_step(build_coke, views, indices, world=1)
    double = one_step(build_coke, views, indices, world=2)
    assert_same_state(single["state"], double["state"])
    assert torch.equal(single["assignments"], double["assignments"])
    assert torch.equal(single["assignments_without_rule"], double["assignments_without_rule"])
    assert (single["state"]["counts_1"].sum() == 8) and not torch.equal(single["state"]["duals_1"], build_coke().duals_1)


def test_labels_are_stored_by_image_index_and_epoch_zero_has_learning_rate_zero():
    torch.manual_seed(0)
    method = CoKe(build_backbone("convnet"), CoKeOptions(num_clusters=(3, 10, 4), proj_hidden=32, proj_dim=16),
                  MethodContext(**CONTEXT))
    assert method.ks == [3, 4] and method.num_clusters == 4 and method.extra_info()["num_clusters_used"] == [3, 4]
    indices = torch.tensor([5, 17, 40, 63])
    out = method.training_step([torch.randn(4, 3, 16, 16) for _ in range(2)], indices)
    seen = torch.zeros(64, dtype=torch.bool)
    seen[indices] = True
    assert (method.labels[:, seen] >= 0).all() and (method.labels[:, ~seen] == -1).all()
    assert torch.equal(method.labels[method.tracked, indices], out.assignments)
    assert torch.isfinite(out.loss) and out.loss.requires_grad
    assert method.lr_scale(0) == 0.0 and method.lr_scale(1) == 1.0
    method.on_epoch_end(0, None)  # C_prev ← C_cur, counts reset
    assert torch.equal(method.centers_prev_1, method.centers_cur_1) and method.counts_1.sum() == 0
    assert method.assign(torch.randn(3, 3, 16, 16)).shape == (3,)


def test_only_a_head_with_as_many_clusters_as_classes_answers_assign():
    torch.manual_seed(0)
    images = torch.randn(5, 3, 16, 16)
    method = CoKe(build_backbone("convnet"), CoKeOptions(num_clusters=(2, 4), proj_hidden=32, proj_dim=16),
                  MethodContext(**CONTEXT))  # four classes: the K = 4 head answers
    method.eval()
    with torch.no_grad():
        z = F.normalize(method.projector(method.backbone(images)), dim=1)
    assert torch.equal(method.assign(images), (z @ method.centers_prev_1.t()).argmax(dim=1))
    without = CoKe(build_backbone("convnet"), CoKeOptions(num_clusters=(2, 3), proj_hidden=32, proj_dim=16),
                   MethodContext(**CONTEXT))
    assert without.assign(images) is None  # no K = C head: evaluation runs k-means with K = C


def test_assignments_without_rule_ignore_the_duals():
    torch.manual_seed(0)
    method = CoKe(build_backbone("convnet"), CoKeOptions(num_clusters=(4,), proj_hidden=32, proj_dim=16),
                  MethodContext(**CONTEXT))
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    with torch.no_grad():
        z1, z2 = (F.normalize(method.projector(method.backbone(v)), dim=1) for v in views)
    feats = (z1 + z2) / 2
    method.seed_centers(feats)  # centre i = image i's feature (i < 4): the plain argmax uses several clusters
    plain = (feats @ method.centers_cur_0.t()).argmax(dim=1)
    assert len(plain.unique()) > 1
    method.duals_0.copy_(torch.tensor([0.0, 0.0, 5.0, 0.0]))  # a bonus no cosine can beat
    out = method.training_step(views, torch.arange(8))
    assert (out.assignments == 2).all()  # the rule's choice: everything into the propped-up cluster
    assert torch.equal(out.assignments_without_rule, plain)  # the network's own: unchanged by ρ


def test_every_heads_dual_step_moves_its_bonus_at_the_same_speed():
    """η_K = dual_lr·K/10 and γ = ratio/K: a cluster empty in the first batch gets ρ = η_K·γ = dual_lr·ratio/10 on
    every head, whatever its K (the module docstring's reason: the bonus is a cosine, the same scale for all K)."""
    torch.manual_seed(0)
    options = CoKeOptions(num_clusters=(10, 20), proj_hidden=32, proj_dim=16)
    method = CoKe(build_backbone("convnet"), options, MethodContext(**{**CONTEXT, "num_train": 400}))
    assert method.ks == [10, 20]  # 400 images fill up to 20 clusters
    method.training_step([torch.randn(8, 3, 16, 16) for _ in range(2)], torch.arange(8))
    for h in range(2):  # 8 images cannot fill 10 or 20 clusters
        state = method.head(h)
        empty = state["counts"] == 0
        assert empty.any()
        assert torch.allclose(state["duals"][empty], torch.tensor(options.dual_lr * options.ratio / 10))


def test_short_training_keeps_occupancy_balanced(tmp_path):
    run = selfsup_lab.train("coke", dataset="synthetic:n=128,classes=4,size=16", epochs=3, batch_size=32,
                            backbone="convnet", device="cpu", progress=False, figures=False, out=str(tmp_path),
                            num_clusters=(4,), proj_hidden=64, proj_dim=32)
    assert run.history[0]["lr"] == 0.0  # the bootstrap epoch
    for record in run.history:
        assert record["occupancy"]["entropy_ratio"] > 0.8, record["occupancy"]
        assert record["occupancy"]["empty"] == 0


def test_step_clusters_the_mean_of_both_views_and_trains_against_last_epochs_centres():
    """One step by hand, per head: y = argmax(f·C_cur + ρ) on f = (ẑ₁ + ẑ₂)/2 (not renormalised), then the dual and
    centre steps; the loss is the mean over heads of ½[CE(q₁, ẑ₁C_prevᵀ/τ) + CE(q₂, ẑ₂C_prevᵀ/τ)] with
    q₁ = α·onehot(last epoch's label, today's where there is none) + (1 − α)·softmax(ẑ₂C_prevᵀ/τ), sg."""
    torch.manual_seed(0)
    method = build_coke()
    g = torch.Generator().manual_seed(4)
    for h, k in enumerate(method.ks):  # last epoch's centres differ from the ones being built
        method.head(h)["centers_prev"].copy_(F.normalize(torch.randn(k, 16, generator=g), dim=1))
        method.head(h)["counts"].copy_(torch.tensor([3.0] * k))
    indices = torch.tensor([3, 60, 7, 12, 0, 33, 21, 48])
    method.labels[:, indices[:3]] = -1  # never clustered yet
    before = {h: {n: t.clone() for n, t in method.head(h).items()} for h in range(2)}
    labels_before = method.labels.clone()
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    out = method.training_step(views, indices)
    out.loss.backward()
    step_grad = method.projector[0].weight.grad.clone()
    method.zero_grad()

    o = method.options
    z1, z2 = (F.normalize(method.projector(method.backbone(v)), dim=1) for v in views)  # training mode, as the step
    f = ((z1 + z2) / 2).detach()
    assert (f.norm(dim=1) < 0.999).all()  # the mean of two unit vectors is shorter
    losses = []
    for h, k in enumerate(method.ks):
        b = before[h]
        y = coke_assign(f, b["centers_cur"], b["duals"])
        counts = torch.bincount(y, minlength=k).float()
        centers, n = coke_center_step(b["centers_cur"], b["counts"], F.one_hot(y, k).float().t() @ f, counts)
        torch.testing.assert_close(method.head(h)["centers_cur"], centers, atol=1e-5, rtol=0)
        torch.testing.assert_close(method.head(h)["counts"], n)
        torch.testing.assert_close(method.head(h)["duals"], coke_dual_step(b["duals"], counts, 8, o.ratio / k,
                                                                           o.dual_lr * k / 10))
        assert torch.equal(method.head(h)["centers_prev"], b["centers_prev"])  # fixed during the epoch
        assert torch.equal(method.labels[h, indices], y)
        previous = torch.where(labels_before[h, indices] >= 0, labels_before[h, indices], y)
        l1, l2 = z1 @ b["centers_prev"].t() / o.temperature, z2 @ b["centers_prev"].t() / o.temperature
        hard = F.one_hot(previous, k).float()
        q1 = (o.alpha * hard + (1 - o.alpha) * l2.softmax(dim=1)).detach()
        q2 = (o.alpha * hard + (1 - o.alpha) * l1.softmax(dim=1)).detach()
        losses.append(0.5 * (-(q1 * l1.log_softmax(1)).sum(1).mean() - (q2 * l2.log_softmax(1)).sum(1).mean()))
        if h == method.tracked:
            assert torch.equal(out.assignments, y)
            assert torch.equal(out.assignments_without_rule, coke_assign(f, b["centers_cur"], torch.zeros(k)))
    by_hand = torch.stack(losses).mean()
    assert abs(out.loss.item() - by_hand.item()) < 1e-5
    by_hand.backward()  # the targets are constants: the gradient only flows through the predictions
    torch.testing.assert_close(step_grad, method.projector[0].weight.grad, atol=1e-6, rtol=1e-4)


def test_first_step_seeds_both_centre_sets_from_the_batch_once():
    """Fresh state: C_prev and C_cur start at the first global batch's features (rows k < B); later steps leave
    C_prev alone until the epoch ends."""
    torch.manual_seed(0)
    method = CoKe(build_backbone("convnet"), CoKeOptions(num_clusters=(2, 4), proj_hidden=32, proj_dim=16),
                  MethodContext(**CONTEXT))
    g = torch.Generator().manual_seed(6)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    method.training_step(views, torch.arange(8))
    with torch.no_grad():
        z1, z2 = (F.normalize(method.projector(method.backbone(v)), dim=1) for v in views)
    f = F.normalize((z1 + z2) / 2, dim=1)
    for h, k in enumerate(method.ks):
        torch.testing.assert_close(method.head(h)["centers_prev"], f[:k], atol=1e-5, rtol=0)
    seeded = [method.head(h)["centers_prev"].clone() for h in range(2)]
    method.training_step([torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)], torch.arange(8, 16))
    for h in range(2):
        assert torch.equal(method.head(h)["centers_prev"], seeded[h])


def test_epoch_end_makes_this_epochs_centres_last_epochs():
    torch.manual_seed(0)
    method = build_coke()
    method.training_step([torch.randn(8, 3, 16, 16) for _ in range(2)], torch.arange(8))
    built = method.centers_cur_1.clone()
    assert not torch.equal(built, method.centers_prev_1)
    method.on_epoch_end(0, None)
    assert torch.equal(method.centers_prev_1, built) and torch.equal(method.centers_cur_1, built)


def test_assign_uses_last_epochs_centres_and_bootstrap_can_be_switched_off():
    torch.manual_seed(0)
    method = build_coke().eval()
    images = torch.randn(16, 3, 16, 16)
    method.centers_cur_1.copy_(torch.roll(method.centers_prev_1, 1, dims=0))  # this epoch's centres, half built
    with torch.no_grad():
        z = F.normalize(method.projector(method.backbone(images)), dim=1)
    assert torch.equal(method.assign(images), (z @ method.centers_prev_1.t()).argmax(dim=1))
    assert not torch.equal(method.assign(images), (z @ method.centers_cur_1.t()).argmax(dim=1))
    no_bootstrap = CoKe(build_backbone("convnet"), CoKeOptions(num_clusters=(4,), proj_hidden=32, proj_dim=16,
                                                               bootstrap_epoch=False), MethodContext(**CONTEXT))
    assert no_bootstrap.lr_scale(0) == 1.0  # epoch 0 trains like any other


def test_documented_defaults():
    """METHODS.md §4.4, *CIFAR default* (SeCu): 10 heads K = 10…100, ratio 0.9, η = 0.1; the loss's τ = 0.05, α = 0.2."""
    o = CoKeOptions()
    assert o.num_clusters == tuple(range(10, 101, 10))
    assert (o.ratio, o.dual_lr, o.temperature, o.alpha) == (0.9, 0.1, 0.05, 0.2)
    assert o.bootstrap_epoch and o.seed_from_batch and o.proj_last_bn
