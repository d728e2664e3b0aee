"""naive / swav / excb (METHODS.md §4.1, §4.2, §4.5): DDP exactness, resumable state, and the collapse picture."""
import functools
import math
import types

import pytest
import torch

import selfsup_lab
from ddp_utils import assert_same_state, free_port, one_step
from selfsup_lab.balancing import excb_balance_scores, excb_relative_sizes, sinkhorn
from selfsup_lab.methods import MethodContext
from selfsup_lab.methods.excb import ExCB, ExCBOptions
from selfsup_lab.methods.naive import Naive, NaiveOptions, swapped_cross_entropy
from selfsup_lab.methods.swav import SwAV, SwAVOptions
from selfsup_lab.models import build_backbone

CONTEXT = dict(num_train=400, num_classes=4, batch_size=8, epochs=1, steps_per_epoch=50, image_size=16)
HEADS = dict(proj_hidden=32, proj_dim=16, num_prototypes=8)


def build(kind: str, prefill_queue: bool = True, **options):
    """A tiny method; extra state is set here (after the seed the DDP helper fixes) so it is the same on all ranks."""
    context = MethodContext(**CONTEXT)
    backbone = build_backbone("convnet")
    if kind == "naive":
        return Naive(backbone, NaiveOptions(**HEADS, **options), context)
    if kind == "swav":
        method = SwAV(backbone, SwAVOptions(**HEADS, **options), context)
        if method.options.queue_length and prefill_queue:  # a full queue, so the step really uses it
            method.queue.copy_(torch.nn.functional.normalize(torch.randn_like(method.queue), dim=-1))
            method.queue_filled.fill_(method.options.queue_length)
        return method
    method = ExCB(backbone, ExCBOptions(**HEADS, pred_hidden=32, **options), context)
    method.sizes.copy_(torch.softmax(torch.randn(8), dim=0))  # uneven sizes: the balancing really acts
    return method


BUILDS = {
    "naive": functools.partial(build, "naive"),
    "swav": functools.partial(build, "swav"),
    "swav_queue": functools.partial(build, "swav", queue_length=16, queue_start_epoch=0, freeze_prototypes_epochs=0),
    # an empty queue: it counts the global batch (8 rows whether one rank sends 8 or two ranks 4 each)
    "swav_filling": functools.partial(build, "swav", prefill_queue=False, queue_length=16, queue_start_epoch=0),
    "excb": functools.partial(build, "excb"),
}


def _steps_on_two_ranks(rank, world, ports, names, views, indices, paths):
    """One process of the 2-rank run: the same step as ddp_utils.one_step, for every method in turn
    (one spawn for all four methods keeps the test fast)."""
    from ddp_utils import _one_step

    for name, port, path in zip(names, ports, paths):
        _one_step(rank, world, port, BUILDS[name], views, indices, path, 0.1)


def test_two_ranks_take_the_same_step_as_one(tmp_path):
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    indices = torch.arange(8)
    names = list(BUILDS)
    paths = [str(tmp_path / f"{name}.pt") for name in names]
    ports = [free_port() for _ in names]
    torch.multiprocessing.spawn(_steps_on_two_ranks, args=(2, ports, names, views, indices, paths), nprocs=2, join=True)
    for name, path in zip(names, paths):
        single = one_step(BUILDS[name], views, indices, world=1)
        double = torch.load(path, weights_only=False)
        assert_same_state(single["state"], double["state"])  # weights, teacher, size estimate, queue
        assert torch.equal(single["assignments"], double["assignments"]), name
        assert torch.equal(single["assignments_without_rule"], double["assignments_without_rule"]), name
        torch.manual_seed(0)
        initial = BUILDS[name]().state_dict()
        moved = {k: (single["state"][k] - initial[k]).abs().max().item()
                 for k in initial if initial[k].is_floating_point() and initial[k].numel()}
        assert max(moved.values()) > 1e-4, name
        if name == "excb":
            assert moved["sizes"] > 0 and moved["teacher.backbone.body.0.weight"] > 0  # r and the EMA teacher moved
            assert torch.allclose(single["state"]["sizes"].sum(), torch.tensor(1.0))
        if name == "swav":  # first epoch: prototypes frozen (only renormalisation rounding moves them)
            assert moved["prototypes.weight"] < 1e-6
        if name == "swav_queue":
            assert moved["prototypes.weight"] > 1e-4 and moved["queue"] > 0  # the new batch went into the queue
        if name == "swav_filling":
            assert int(double["state"]["queue_filled"]) == 8 and double["state"]["queue"][:, :8].norm(dim=-1).gt(0.99).all()


def test_state_lives_in_buffers_and_round_trips():
    for name, keys in [("swav_queue", {"queue", "queue_filled"}), ("excb", {"sizes", "teacher.prototypes.weight"})]:
        torch.manual_seed(0)
        method = BUILDS[name]()
        state = method.state_dict()
        assert keys <= state.keys()
        torch.manual_seed(1)
        fresh = BUILDS[name]()
        fresh.load_state_dict(state)
        for key in keys:
            assert torch.equal(fresh.state_dict()[key], state[key]), key


def test_number_of_clusters_adapts_to_the_dataset_and_is_recorded():
    context = MethodContext(**{**CONTEXT, "num_train": 1437, "num_classes": 10})
    assert SwAV(build_backbone("convnet"), SwAVOptions(proj_hidden=32, proj_dim=16), context).num_clusters == 71
    excb = ExCB(build_backbone("convnet"), ExCBOptions(proj_hidden=32, proj_dim=16, pred_hidden=32), context)
    assert excb.num_clusters == 35 and excb.extra_info()["num_clusters"] == 35  # ≈ num_train / 40
    assert excb.extra_info()["size_momentum"] == pytest.approx(1 - 1 / 500)  # 10 epochs of 50 steps
    # K = C: the method's own head answers `assign`; otherwise None (evaluation falls back to k-means)
    assert excb.assign(torch.randn(4, 3, 16, 16)) is None
    excb10 = ExCB(build_backbone("convnet"), ExCBOptions(proj_hidden=32, proj_dim=16, pred_hidden=32,
                                                         num_prototypes=10), context)
    excb10.eval()
    assert excb10.assign(torch.randn(4, 3, 16, 16)).shape == (4,)


def test_assignments_without_rule_are_the_plain_argmax_whatever_the_rule_does():
    torch.manual_seed(0)
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    excb = BUILDS["excb"]()
    plain = excb.teacher_scores(views[0]).argmax(dim=1)
    skewed = torch.full((8,), 1e-4)
    skewed[plain[0]] = 1.0  # image 0's cluster looks huge: balancing pushes images out of it
    excb.sizes.copy_(skewed / skewed.sum())
    out = excb.training_step(views, torch.arange(8))
    assert torch.equal(out.assignments_without_rule, plain)
    assert not torch.equal(out.assignments, plain)  # the rule did move some images

    swav = BUILDS["swav"]()
    s1 = swav.scores(swav.projector(swav.backbone(views[0])))
    out = swav.training_step(views, torch.arange(8))
    assert torch.equal(out.assignments_without_rule, s1.argmax(dim=1))
    naive = BUILDS["naive"]()
    out = naive.training_step(views, torch.arange(8))
    assert torch.equal(out.assignments_without_rule, out.assignments)  # naive has no rule


def test_swapped_cross_entropy_divides_the_scores_by_the_temperature():
    q = torch.tensor([[1.0, 0.0], [0.25, 0.75]])
    s = torch.tensor([[0.5, -0.5], [0.0, 0.2]])
    # row 0 by hand: −log(e^5 / (e^5 + e^−5)) = log(1 + e^−10); row 1: −Σ q log softmax(s/0.1)
    row1 = -(0.25 * math.log(1 / (1 + math.exp(2))) + 0.75 * math.log(1 / (1 + math.exp(-2))))
    assert swapped_cross_entropy(q, s, 0.1).item() == pytest.approx((math.log1p(math.exp(-10)) + row1) / 2, rel=1e-5)


def test_each_views_target_trains_the_other_views_scores():
    """SwAV: ½(ℓ(q¹, s²) + ℓ(q², s¹)); ExCB: teacher view i against student view 1−i, plus every predictor view."""
    torch.manual_seed(0)
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    swav = BUILDS["swav"]().train()
    loss = swav.training_step(views, torch.arange(8)).loss
    s = [swav.scores(swav.projector(swav.backbone(v))) for v in views]  # batch norm in training mode, as the step
    q = [sinkhorn(sv.detach(), swav.options.epsilon, swav.options.sinkhorn_iterations) for sv in s]
    ce = functools.partial(swapped_cross_entropy, temperature=swav.options.temperature)
    assert loss.item() == pytest.approx(0.5 * (ce(q[0], s[1]) + ce(q[1], s[0])).item(), abs=1e-5)
    assert abs(loss.item() - 0.5 * (ce(q[0], s[0]) + ce(q[1], s[1])).item()) > 1e-3  # not swapped: another value

    excb = BUILDS["excb"]().train()
    rho = excb_relative_sizes(excb.sizes)  # before the step updates the size estimate
    loss = excb.training_step(views, torch.arange(8)).loss
    o = excb.options
    z = [excb.projector(excb.backbone(v)) for v in views]
    student = [excb._scores(excb.prototypes, zv) for zv in z]
    predicted = [excb._scores(excb.prototypes, excb.predictor(zv)) for zv in z]
    q = [torch.softmax(excb_balance_scores(excb.teacher_scores(v), rho, o.boost) / o.teacher_temperature, dim=1)
         for v in views]
    ce = functools.partial(swapped_cross_entropy, temperature=o.student_temperature)
    terms = [ce(q[0], student[1]), ce(q[0], predicted[0]), ce(q[0], predicted[1]),
             ce(q[1], student[0]), ce(q[1], predicted[0]), ce(q[1], predicted[1])]
    assert loss.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-5)


# --- the collapse picture (short real training runs) -------------------------------------------------------

QUICK = dict(dataset="synthetic:n=256,classes=4,size=16", batch_size=64, backbone="convnet", device="cpu",
             progress=False, figures=False, proj_hidden=64)


def occupancy(run):
    return [r["occupancy"] for r in run.history]


def test_naive_collapses_while_excb_stays_balanced(tmp_path):
    naive = occupancy(selfsup_lab.train("naive", epochs=3, out=str(tmp_path / "naive"), **QUICK))
    excb = occupancy(selfsup_lab.train("excb", epochs=3, out=str(tmp_path / "excb"), pred_hidden=64, **QUICK))
    # measured (synthetic n=256, B=64, 3 epochs), entropy ratio epoch 1 → 3:
    # naive 0.43 → 0.00 (max share 1.0, K=12); excb 0.998 → 0.999 (max share 0.18, K=6)
    assert naive[-1]["entropy_ratio"] < 0.3 and naive[-1]["max_share"] > 0.7
    assert naive[-1]["entropy_ratio"] < naive[0]["entropy_ratio"] - 0.2  # it FALLS
    assert excb[-1]["entropy_ratio"] > 0.8 and excb[-1]["max_share"] < 0.4
    # batch by batch (the mean of each step's own statistics): never more even than the epoch in total —
    # the entropy of a mixture is at least the mean entropy of its parts, its largest share at most the mean
    for record in naive + excb:
        assert record["batch_entropy_ratio"] <= record["entropy_ratio"] + 1e-9
        assert record["batch_max_share"] >= record["max_share"] - 1e-9
    assert excb[-1]["batch_entropy_ratio"] > 0.7 and naive[-1]["batch_entropy_ratio"] < 0.3


def test_per_batch_occupancy_is_the_mean_of_each_steps_own_statistics(tmp_path):
    from selfsup_lab.metrics import occupancy_stats

    options = dict(QUICK, dataset="synthetic:n=96,classes=4,size=16", batch_size=32, proj_hidden=32)
    run = selfsup_lab.train("excb", epochs=2, out=str(tmp_path), occupancy_every=1, pred_hidden=32, **options)
    for epoch, record in enumerate(run.history):  # occupancy_every=1: the log holds every step's own counts
        steps = [occupancy_stats(w["counts"]) for w in run.trainer.occupancy_log["steps"] if w["epoch"] == epoch]
        assert len(steps) == 3
        assert record["occupancy"]["batch_entropy_ratio"] == pytest.approx(sum(s["entropy_ratio"] for s in steps) / 3)
        assert record["occupancy"]["batch_max_share"] == pytest.approx(sum(s["max_share"] for s in steps) / 3)


def test_history_and_metrics_carry_the_occupancy_without_the_rule(tmp_path):
    options = dict(QUICK, dataset="synthetic:n=64,classes=4,size=16", batch_size=32, proj_hidden=32)
    swav = selfsup_lab.train("swav", epochs=2, out=str(tmp_path / "swav"), **options)
    for record in swav.history:
        plain = record["occupancy_without_rule"]
        assert plain["num_clusters"] == swav.method.num_clusters and plain["total"] == 64  # two steps of 32
    assert swav.metrics["occupancy_without_rule"] == swav.history[-1]["occupancy_without_rule"]
    assert len(swav.trainer.occupancy_log["epochs_without_rule"]) == 2
    simclr = selfsup_lab.train("simclr", epochs=1, out=str(tmp_path / "simclr"), **options)
    assert "occupancy_without_rule" not in simclr.history[-1] and "occupancy_without_rule" not in simclr.metrics


def test_resuming_a_checkpoint_written_before_the_without_rule_log_existed(tmp_path):
    from selfsup_lab.train import CHECKPOINT, atomic_torch_save, load_checkpoint

    options = dict(QUICK, dataset="synthetic:n=64,classes=4,size=16", batch_size=32, proj_hidden=32)
    selfsup_lab.train("swav", epochs=1, out=str(tmp_path), **options)
    checkpoint = load_checkpoint(tmp_path / CHECKPOINT)
    del checkpoint["occupancy_log"]["epochs_without_rule"]  # as an older version wrote it
    atomic_torch_save(checkpoint, tmp_path / CHECKPOINT)
    run = selfsup_lab.train("swav", epochs=2, out=str(tmp_path), resume=True, **options)
    assert len(run.trainer.occupancy_log["epochs"]) == 2  # the old epoch's counts are kept
    assert len(run.trainer.occupancy_log["epochs_without_rule"]) == 1  # only the epoch trained since


@pytest.mark.parametrize("name", list(selfsup_lab.methods.METHODS))
def test_assign_answers_exactly_when_the_tracked_head_has_one_cluster_per_class(name):
    """One rule for every method: a K = C head is scored directly; any other K (or none) leaves it to k-means."""
    from selfsup_lab.methods import get_method_class, parse_options

    cls = get_method_class(name)
    fields = {f.name for f in __import__("dataclasses").fields(cls.Options)}
    small = {k: v for k, v in dict(proj_hidden=32, proj_dim=16, pred_hidden=32, ae_width=8).items() if k in fields}
    images = torch.randn(4, 3, 16, 16)
    for k, expect_head in ((4, True), (6, False)):  # CONTEXT has 4 classes
        sizes = {key: (k,) if key == "num_clusters" or name == "deepcluster" else k
                 for key in ("num_prototypes", "num_clusters") if key in fields}
        torch.manual_seed(0)
        method = cls(build_backbone("convnet"), parse_options(cls.Options, {**small, **sizes}, name),
                     MethodContext(**CONTEXT)).eval()
        clustering = bool(sizes)
        assert method.has_class_sized_head is (clustering and expect_head), (name, k)
        ids = method.assign(images)
        if method.has_class_sized_head:
            assert ids.shape == (4,) and ids.dtype == torch.long and 0 <= int(ids.min()) and int(ids.max()) < 4
        else:
            assert ids is None


@pytest.mark.parametrize("name", ["naive", "swav", "deepcluster"])
def test_assign_compares_cosines_in_float32_under_bf16_autocast(name):
    """METHODS.md: cluster statistics in float32 even under bf16 autocast. Two prototypes whose cosines with an
    embedding differ by 0.001 (below bf16's spacing of 0.004 near 0.5) must still be told apart in evaluation."""
    from selfsup_lab.methods import get_method_class, parse_options

    cls = get_method_class(name)
    sizes = {"num_prototypes": (4,) if name == "deepcluster" else 4}
    method = cls(build_backbone("convnet"), parse_options(cls.Options, {"proj_hidden": 32, "proj_dim": 16, **sizes}, name),
                 MethodContext(**CONTEXT)).eval()
    method.backbone, method.projector = torch.nn.Flatten(), torch.nn.Identity()  # the embedding is the input
    e = torch.eye(16)
    prototypes = torch.stack([0.5 * e[0] + (1 - 0.5 ** 2) ** 0.5 * e[1],
                              0.501 * e[0] + (1 - 0.501 ** 2) ** 0.5 * e[2], e[3], e[4]])
    layer = method.prototypes[method.tracked] if name == "deepcluster" else method.prototypes
    layer.set_prototypes(prototypes)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert method.assign(e[:1]).tolist() == [1]


# --- how each method wires its rule: targets, queue, size estimate, teacher ----------------------------------

def test_naive_targets_are_sharpened_softmaxes_of_the_other_view_with_no_gradient():
    """§4.1: q = sg softmax(s/τ_t) of the other view, τ_t = SwAV's ε = 0.05 (so naive = Sinkhorn with 0 iterations)."""
    assert NaiveOptions().teacher_temperature == SwAVOptions().epsilon == 0.05
    torch.manual_seed(0)
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    for hard_targets in (False, True):
        naive = build("naive", hard_targets=hard_targets).train()
        out = naive.training_step(views, torch.arange(8))
        out.loss.backward()
        step_grad = naive.projector[0].weight.grad.clone()
        naive.zero_grad()
        s = [naive.scores(v) for v in views]  # batch norm in training mode, as the step
        q = [sinkhorn(sv.detach(), 0.05, iterations=0) for sv in s]
        if hard_targets:
            q = [torch.nn.functional.one_hot(qv.argmax(1), 8).float() for qv in q]
        by_hand = 0.5 * (swapped_cross_entropy(q[0], s[1], 0.1) + swapped_cross_entropy(q[1], s[0], 0.1))
        assert out.loss.item() == pytest.approx(by_hand.item(), abs=1e-5)
        by_hand.backward()  # the targets are constants: only the predictions carry gradient
        torch.testing.assert_close(step_grad, naive.projector[0].weight.grad, atol=1e-6, rtol=1e-4)
        assert torch.equal(out.assignments, s[0].argmax(dim=1))  # view 1's choice


def test_swav_queue_fills_newest_first_and_joins_sinkhorn_only_once_full():
    """The queue switches on at `queue_start_epoch`; each step pushes both views' normalised embeddings in front
    (the oldest fall off) and `queue_filled` counts them; Sinkhorn uses the queue (each view its own) once full."""
    F = torch.nn.functional
    torch.manual_seed(0)
    swav = build("swav", queue_length=16, queue_start_epoch=1, freeze_prototypes_epochs=0).train()
    swav.queue.zero_()  # a fresh run's empty queue (`build` fills it)
    swav.queue_filled.zero_()
    o = swav.options
    g = torch.Generator().manual_seed(2)
    batches = [[torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)] for _ in range(4)]

    def step(views, queue=None):
        queue = None if queue is None else queue.clone()
        out = swav.training_step(views, torch.arange(8))
        with torch.no_grad():
            z = [swav.projector(swav.backbone(v)) for v in views]
        s = [swav.scores(zv) for zv in z]
        q = [sinkhorn(s[v].detach(), o.epsilon, o.sinkhorn_iterations,
                      None if queue is None else swav.scores(queue[v])) for v in range(2)]
        by_hand = 0.5 * (swapped_cross_entropy(q[0], s[1], o.temperature) + swapped_cross_entropy(q[1], s[0], o.temperature))
        assert out.loss.item() == pytest.approx(by_hand.item(), abs=1e-5)
        assert torch.equal(out.assignments, q[0].argmax(dim=1))  # the rule's choice (Sinkhorn), not the plain argmax
        return [F.normalize(zv.float(), dim=1) for zv in z]

    swav.on_epoch_start(0, None)
    step(batches[0])
    assert int(swav.queue_filled) == 0 and not swav.queue.any()  # before queue_start_epoch: untouched
    swav.on_epoch_start(1, None)
    first = step(batches[1])  # empty queue: Sinkhorn on the batch alone
    assert int(swav.queue_filled) == 8
    for v in range(2):
        torch.testing.assert_close(swav.queue[v, :8], first[v], atol=1e-5, rtol=0)
        assert not swav.queue[v, 8:].any()
    second = step(batches[2])  # half full: still the batch alone
    assert int(swav.queue_filled) == 16
    for v in range(2):  # newest in front, the previous batch behind it
        torch.testing.assert_close(swav.queue[v], torch.cat([second[v], first[v]]), atol=1e-5, rtol=0)
    full = swav.queue.clone()
    assert not torch.allclose(full[0], full[1])  # two views, two queues
    third = step(batches[3], queue=full)  # full: the queue rows join the Sinkhorn problem
    assert int(swav.queue_filled) == 16  # never more than the queue holds
    for v in range(2):  # the oldest batch fell off
        torch.testing.assert_close(swav.queue[v], torch.cat([third[v], second[v]]), atol=1e-5, rtol=0)


def test_swav_renormalises_its_prototypes_after_every_step():
    swav = build("swav")
    with torch.no_grad():
        swav.prototypes.weight.mul_(3.0)
    swav.after_optimizer_step(0.5)
    torch.testing.assert_close(swav.prototypes.weight.norm(dim=1), torch.ones(8))


def test_documented_defaults_of_the_clustering_methods():
    """METHODS.md §4.2 and §4.5 (ExCB's K and m_s are data-adaptive: tested above)."""
    swav = SwAVOptions()
    assert (swav.num_prototypes, swav.temperature, swav.epsilon, swav.sinkhorn_iterations) == (3000, 0.1, 0.05, 3)
    assert swav.freeze_prototypes_epochs == 1 and swav.queue_length == 0  # frozen for the first epoch; no queue
    excb = ExCBOptions()
    assert (excb.teacher_temperature, excb.student_temperature, excb.teacher_momentum, excb.boost) == (0.04, 0.1, 0.996, 1.01)
    assert excb.kmeans_init and excb.num_prototypes is None and excb.size_momentum is None


def test_excb_size_estimate_follows_the_balanced_hard_assignments_of_both_teacher_views():
    """r ← m_s·r + (1 − m_s)·f, f = share of each cluster among the teacher's *balanced* argmaxes of both views."""
    torch.manual_seed(0)
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    excb = BUILDS["excb"]().train()
    sizes, m = excb.sizes.clone(), excb.size_momentum
    rho = excb_relative_sizes(sizes)
    teacher = [excb.teacher_scores(v) for v in views]
    hard = torch.cat([excb_balance_scores(t, rho, excb.options.boost).argmax(dim=1) for t in teacher])
    assert not torch.equal(hard, torch.cat([t.argmax(dim=1) for t in teacher]))  # the balancing moves some images
    f = torch.bincount(hard, minlength=8).float() / 16
    excb.training_step(views, torch.arange(8))
    torch.testing.assert_close(excb.sizes, m * sizes + (1 - m) * f)
    # an explicit m_s is used as given, 0 included (r = this batch's shares)
    context = MethodContext(**CONTEXT)
    assert ExCB(build_backbone("convnet"), ExCBOptions(**HEADS, pred_hidden=32, size_momentum=0.0),
                context).size_momentum == 0.0


def test_excb_with_small_views_trains_predictors_of_every_view_on_global_teacher_targets_only():
    """Small crops get no teacher target; each global view's target trains the other global view's projection scores
    and every view's predictor scores — 2 × (1 + 3) terms for 3 views. `boost` is the option, not a constant."""
    torch.manual_seed(0)
    views = [torch.randn(8, 3, 16, 16) for _ in range(3)]
    excb = build("excb", num_small_views=1, boost=1.5).train()
    rho = excb_relative_sizes(excb.sizes)
    out = excb.training_step(views, torch.arange(8))
    o = excb.options
    z = [excb.projector(excb.backbone(v)) for v in views]
    student = [excb._scores(excb.prototypes, zv) for zv in z[:2]]
    predicted = [excb._scores(excb.prototypes, excb.predictor(zv)) for zv in z]
    q = [torch.softmax(excb_balance_scores(excb.teacher_scores(v), rho, 1.5) / o.teacher_temperature, dim=1)
         for v in views[:2]]
    ce = functools.partial(swapped_cross_entropy, temperature=o.student_temperature)
    terms = [ce(q[i], s) for i in range(2) for s in [student[1 - i], *predicted]]
    assert len(terms) == 8
    assert out.loss.item() == pytest.approx(torch.stack(terms).mean().item(), abs=1e-5)


def test_excb_prototypes_learn_only_from_the_projection_path():
    """The predictor's scores use detached prototypes: the prototypes' gradient is that of the two projection terms."""
    torch.manual_seed(0)
    views = [torch.randn(8, 3, 16, 16) for _ in range(2)]
    excb = BUILDS["excb"]().train()
    rho = excb_relative_sizes(excb.sizes)
    q = [torch.softmax(excb_balance_scores(excb.teacher_scores(v), rho, 1.01) / 0.04, dim=1) for v in views]
    excb.training_step(views, torch.arange(8)).loss.backward()
    step_grad = excb.prototypes.weight.grad.clone()
    excb.zero_grad()
    student = [excb._scores(excb.prototypes, excb.projector(excb.backbone(v))) for v in views]
    projection_terms = (swapped_cross_entropy(q[0], student[1], 0.1) + swapped_cross_entropy(q[1], student[0], 0.1)) / 6
    projection_terms.backward()  # the step's loss is the mean of 6 terms; 2 of them reach the prototypes
    torch.testing.assert_close(step_grad, excb.prototypes.weight.grad, atol=1e-6, rtol=1e-4)


def test_excb_teacher_follows_the_cosine_momentum_schedule():
    """m(t) from m0 = 0.996 at the start to 1 at the end: the teacher moves by 0.4% of the gap, then not at all."""
    excb = BUILDS["excb"]()
    with torch.no_grad():
        excb.backbone.body[0].weight.add_(1.0)  # the student moved away from the teacher
    before = excb.teacher["backbone"].body[0].weight.clone()
    student = excb.backbone.body[0].weight.detach().clone()
    excb.after_optimizer_step(1.0)
    assert torch.equal(excb.teacher["backbone"].body[0].weight, before)
    excb.after_optimizer_step(0.0)
    torch.testing.assert_close(excb.teacher["backbone"].body[0].weight, 0.996 * before + 0.004 * student)


class _FakeTrainer:
    """The little of the trainer that `on_train_start` uses: the training images, `features` and the seed."""

    def __init__(self, images, seed=0):
        self.train_set = types.SimpleNamespace(images=images)
        self.config = types.SimpleNamespace(seed=seed)

    def features(self, images, fn):
        return fn(images).float()


def test_excb_prototypes_start_as_kmeans_centroids_of_the_teachers_projections():
    from selfsup_lab.kmeans import spherical_kmeans

    images = torch.randn(40, 3, 16, 16, generator=torch.Generator().manual_seed(4))
    torch.manual_seed(0)
    excb = BUILDS["excb"]()
    random_prototypes = excb.prototypes.weight.detach().clone()
    excb.on_train_start(_FakeTrainer(images, seed=7))
    t = excb.teacher
    with torch.no_grad():
        t.train()  # batch statistics, as in `on_train_start`
        projections = t["projector"](t["backbone"](images))
    centroids, _ = spherical_kmeans(projections, 8, iters=10, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(excb.prototypes.weight.detach(), centroids, atol=1e-5, rtol=0)
    assert torch.equal(excb.teacher["prototypes"].weight, excb.prototypes.weight.detach())  # student = teacher
    assert not torch.allclose(excb.prototypes.weight.detach(), random_prototypes, atol=1e-2)

    torch.manual_seed(0)
    off = build("excb", kmeans_init=False)
    off.on_train_start(_FakeTrainer(images))
    assert torch.equal(off.prototypes.weight.detach(), random_prototypes)  # kmeans_init=False: left alone


def test_excb_assign_answers_with_the_teachers_unbalanced_argmax():
    torch.manual_seed(0)
    excb = ExCB(build_backbone("convnet"), ExCBOptions(proj_hidden=32, proj_dim=16, pred_hidden=32, num_prototypes=4),
                MethodContext(**CONTEXT)).eval()  # K = C = 4: its own head answers
    images = torch.randn(16, 3, 16, 16)
    with torch.no_grad():  # the student drifts from the teacher
        excb.prototypes.weight.copy_(torch.roll(excb.prototypes.weight, 1, dims=0))
    teacher = excb.teacher_scores(images).argmax(dim=1)
    assert torch.equal(excb.assign(images), teacher)
    assert not torch.equal(excb._scores(excb.prototypes, excb.projector(excb.backbone(images))).argmax(1), teacher)
