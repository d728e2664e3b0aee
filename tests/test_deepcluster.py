"""DeepCluster (METHODS.md §4.3): memory bank by index, k-means at epoch start, DDP equivalence, a short run."""
import types

import torch
import torch.nn.functional as F

import selfsup_lab
from ddp_utils import assert_same_state, one_step
from selfsup_lab.methods import MethodContext
from selfsup_lab.methods.deepcluster import DeepCluster, DeepClusterOptions
from selfsup_lab.models import build_backbone

CONTEXT = dict(num_train=64, num_classes=4, batch_size=8, epochs=2, steps_per_epoch=8, image_size=16)


def build_deepcluster():
    method = DeepCluster(build_backbone("convnet"), DeepClusterOptions(num_prototypes=(3, 4), proj_hidden=32,
                                                                       proj_dim=16), MethodContext(**CONTEXT))
    # The state an epoch start leaves behind: a filled bank, k-means on it, prototypes = centroids.
    g = torch.Generator().manual_seed(5)
    method.bank.copy_(F.normalize(torch.randn(method.bank.shape, generator=g), dim=1))
    method.on_epoch_start(1, None)
    return method


def test_epoch_start_clusters_the_bank_into_the_prototypes():
    torch.manual_seed(0)
    method = build_deepcluster()
    assert method.ks == [3, 4] and method.num_clusters == 4  # the K = C head is tracked
    for h, layer in enumerate(method.prototypes):
        assert not layer.weight.requires_grad  # set by k-means, not by the optimiser
        assert torch.bincount(method.assignments[h], minlength=method.ks[h]).min() > 0  # no empty cluster
        # every image is assigned to its most similar centroid
        assert torch.equal((method.bank @ layer.prototypes().t()).argmax(1), method.assignments[h])


def test_bank_is_written_by_index_and_targets_come_from_the_stored_assignments():
    torch.manual_seed(0)
    method = build_deepcluster()
    before = method.bank.clone()
    indices = torch.tensor([2, 9, 30, 61])
    out = method.training_step([torch.randn(4, 3, 16, 16) for _ in range(2)], indices)
    changed = (method.bank != before).any(dim=1)
    assert changed[indices].all() and changed.sum() == 4
    assert torch.allclose(method.bank[indices].norm(dim=1), torch.ones(4))
    assert torch.equal(out.assignments, method.assignments[method.tracked, indices])
    assert torch.isfinite(out.loss) and out.loss.requires_grad


def test_two_ranks_match_one_rank_including_the_bank():
    g = torch.Generator().manual_seed(1)
    views = [torch.randn(8, 3, 16, 16, generator=g) for _ in range(2)]
    indices = torch.tensor([3, 60, 7, 12, 0, 33, 21, 48])
    single = one_step(build_deepcluster, views, indices, world=1)
    double = one_step(build_deepcluster, views, indices, world=2)
    assert_same_state(single["state"], double["state"])
    assert torch.equal(single["assignments"], double["assignments"])
    assert torch.equal(single["assignments_without_rule"], double["assignments_without_rule"])


def test_short_training_fills_the_bank_and_keeps_clusters_in_use(tmp_path):
    run = selfsup_lab.train("deepcluster", dataset="synthetic:n=128,classes=4,size=16", epochs=2, batch_size=32,
                            backbone="convnet", device="cpu", progress=False, figures=False, out=str(tmp_path),
                            num_prototypes=(4, 6), proj_hidden=64, proj_dim=32)
    assert run.method.extra_info()["num_clusters_used"] == [4, 6]
    assert (run.method.bank.norm(dim=1) > 0.99).all()  # every image has a feature (epoch 0 filled it)
    for record in run.history:
        assert record["occupancy"]["empty"] == 0 and record["occupancy"]["entropy_ratio"] > 0.8
    assert run.metrics["clustering_from"] == "the method's own K = C head"  # the K = 4 head, 4 classes


def test_only_a_head_with_as_many_clusters_as_classes_answers_assign():
    torch.manual_seed(0)
    method = build_deepcluster()  # heads K = 3 and K = 4, four classes
    method.eval()
    images = torch.randn(5, 3, 16, 16)
    with torch.no_grad():
        nearest = method.prototypes[1](method.projector(method.backbone(images))).argmax(dim=1)
    assert torch.equal(method.assign(images), nearest)
    context = MethodContext(**{**CONTEXT, "num_train": 1437, "num_classes": 10})  # digits: heads capped at 71
    over_clustered = DeepCluster(build_backbone("convnet"), DeepClusterOptions(proj_hidden=32, proj_dim=16), context)
    assert over_clustered.ks == [71, 71, 71] and over_clustered.assign(images) is None  # evaluation runs k-means


def test_epoch_zero_bank_uses_batch_statistics_and_survives_a_last_chunk_of_one_image(tmp_path):
    """The bank pass runs batch norm in train mode (an untrained network in eval mode projects nearly every
    image to one direction). 1,025 images make the trainer's 1,024-image chunks end in a chunk of one image,
    on which a train-mode batch norm fails; the chunks must be split evenly instead."""
    run = selfsup_lab.train("deepcluster", dataset="synthetic:n=1025,classes=4,size=16", epochs=1, batch_size=256,
                            backbone="convnet", device="cpu", progress=False, figures=False, out=str(tmp_path),
                            num_prototypes=(4,), proj_hidden=64, proj_dim=32)
    assert (run.method.bank.norm(dim=1) > 0.99).all()
    # what the bank pass is for: the untrained network's projections are spread, not one direction
    method = DeepCluster(build_backbone("convnet"), DeepClusterOptions(num_prototypes=(4,), proj_hidden=64,
                                                                       proj_dim=32), MethodContext(**CONTEXT))
    images = torch.rand(64, 3, 16, 16)
    method.eval()
    with torch.no_grad():
        spread = method.bank_features(images)
        assert method.training  # it switched to batch statistics
        method.eval()
        collapsed = F.normalize(method.projector(method.backbone(images)), dim=1)
    assert (spread @ spread.t()).mean() < (collapsed @ collapsed.t()).mean()


def _seeded_bank_method(num_prototypes, num_train=64):
    context = MethodContext(**{**CONTEXT, "num_train": num_train})
    method = DeepCluster(build_backbone("convnet"),
                         DeepClusterOptions(num_prototypes=num_prototypes, proj_hidden=32, proj_dim=16), context)
    method.bank.copy_(F.normalize(torch.randn(method.bank.shape, generator=torch.Generator().manual_seed(5)), dim=1))
    method.on_epoch_start(1, None)  # cluster that bank
    return method


def test_the_memory_bank_holds_the_normalised_mean_of_both_views_by_image_index():
    torch.manual_seed(0)
    method = _seeded_bank_method((3, 4))
    g = torch.Generator().manual_seed(1)
    v1, v2 = torch.randn(4, 3, 16, 16, generator=g), torch.randn(4, 3, 16, 16, generator=g)
    indices = torch.tensor([2, 9, 30, 61])
    method.training_step([v1, v2], indices)
    with torch.no_grad():  # training mode, as in the step: batch statistics, so the projections are the step's own
        z1, z2 = (F.normalize(method.projector(method.backbone(v)), dim=1) for v in (v1, v2))
    torch.testing.assert_close(method.bank[indices], F.normalize(z1 + z2, dim=1), atol=1e-5, rtol=0)
    assert not torch.allclose(method.bank[indices], z1, atol=1e-3)


def test_heads_of_the_same_size_are_independent_clusterings():
    from sklearn.metrics import adjusted_rand_score

    torch.manual_seed(0)
    assignments = _seeded_bank_method((6, 6), num_train=200).assignments
    assert adjusted_rand_score(assignments[0].numpy(), assignments[1].numpy()) < 0.9  # measured 0.23; one seed: 1.0


def test_loss_is_the_mean_cross_entropy_to_the_stored_assignments_over_heads_and_views():
    """L = mean over heads h and views v of CE(a^h_i, softmax(ẑ·C^hᵀ/τ)); the step's own choice is view 1's nearest
    prototype of the tracked head."""
    torch.manual_seed(0)
    method = build_deepcluster()
    views = [torch.randn(8, 3, 16, 16, generator=torch.Generator().manual_seed(v)) for v in range(2)]
    indices = torch.tensor([1, 5, 9, 13, 17, 21, 25, 29])
    out = method.training_step(views, indices)
    with torch.no_grad():  # training mode, as in the step
        z = [method.projector(method.backbone(v)) for v in views]
    terms = [F.cross_entropy(layer(zv) / 0.1, method.assignments[h, indices])
             for h, layer in enumerate(method.prototypes) for zv in z]
    assert abs(out.loss.item() - torch.stack(terms).mean().item()) < 1e-5
    assert torch.equal(out.assignments_without_rule, method.prototypes[method.tracked](z[0]).argmax(dim=1))
    assert not torch.equal(out.assignments_without_rule, method.prototypes[method.tracked](z[1]).argmax(dim=1))


class _FakeTrainer:
    """What `on_epoch_start` reads from the trainer: the training images, `features` and the run's seed."""

    def __init__(self, images):
        self.train_images = images
        self.config = types.SimpleNamespace(seed=0)
        self.calls = 0

    def features(self, images, fn):
        self.calls += 1
        return fn(images)


def test_only_epoch_zero_fills_the_bank_from_the_untrained_network():
    torch.manual_seed(0)
    method = DeepCluster(build_backbone("convnet"), DeepClusterOptions(num_prototypes=(4,), proj_hidden=32,
                                                                       proj_dim=16), MethodContext(**CONTEXT))
    trainer = _FakeTrainer(torch.randn(64, 3, 16, 16, generator=torch.Generator().manual_seed(1)))
    method.on_epoch_start(0, trainer)
    assert trainer.calls == 1 and torch.allclose(method.bank.norm(dim=1), torch.ones(64))
    with torch.no_grad():
        assert torch.allclose(method.bank, method.bank_features(trainer.train_images), atol=1e-5)
    # later epochs cluster the bank that training wrote: no extra pass over the data
    method.bank.copy_(F.normalize(torch.randn(method.bank.shape, generator=torch.Generator().manual_seed(2)), dim=1))
    written = method.bank.clone()
    method.on_epoch_start(1, trainer)
    assert trainer.calls == 1 and torch.equal(method.bank, written)


def test_documented_defaults():
    """METHODS.md §4.3: solo-learn's 3 heads of 3000 on CIFAR, τ = 0.1, ~10 k-means iterations."""
    options = DeepClusterOptions()
    assert (options.num_prototypes, options.temperature, options.kmeans_iters) == ((3000, 3000, 3000), 0.1, 10)
