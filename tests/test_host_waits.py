"""The augmentation, losses and balancing rules a training step runs never make the host wait for the GPU.

On an H100 a ResNet-18 step on CIFAR's 32-px images is bound by the host launching kernels (benchmarks/
RESULTS.md), so the host must keep queueing while the GPU works. Each function is traced here with fake CUDA
tensors (tests/fake_cuda.py), which needs no GPU: a value read back from the GPU, an output whose size depends
on the data, or a tensor copied from host memory would each show up, and fail the test. (Found this way and
fixed: SimCLR's loss indexed with indices made on the host; Sinkhorn and the truncated triplet made a number
on the host; the cluster counts used bincount and a range check. SwAV still reads its queue's fill level from
the GPU once per step, when a queue is on.)
"""
import pytest
import torch
import torch.nn.functional as F

from fake_cuda import fake_cuda, host_waits
from selfsup_lab import augment, balancing, metrics
from selfsup_lab.methods.byol import normalized_mse
from selfsup_lab.methods.coke import coke_swapped_loss
from selfsup_lab.methods.naive import swapped_cross_entropy
from selfsup_lab.methods.simclr import nt_xent_loss
from selfsup_lab.methods.triplet import truncated_triplet_loss

B, K, D = 16, 5, 8
STEP_FUNCTIONS = {
    "SimCLR's NT-Xent": lambda z, s, q, a, v: nt_xent_loss(z, z.flip(0), 0.2),
    "BYOL's normalised MSE": lambda z, s, q, a, v: normalized_mse(z, z.flip(0)),
    "truncated triplet": lambda z, s, q, a, v: truncated_triplet_loss(z, z.flip(0), 2, 5),
    "naive targets": lambda z, s, q, a, v: balancing.naive_targets(s, 0.1),
    "swapped cross-entropy": lambda z, s, q, a, v: swapped_cross_entropy(F.softmax(s, dim=1), s, 0.1),
    "Sinkhorn": lambda z, s, q, a, v: balancing.sinkhorn(s),
    "Sinkhorn with a queue": lambda z, s, q, a, v: balancing.sinkhorn(s, queue_scores=q),
    "CoKe's assignment": lambda z, s, q, a, v: balancing.coke_assign(z, s.t() @ z, v),
    "CoKe's dual step": lambda z, s, q, a, v: balancing.coke_dual_step(v, v, B, 0.1, 0.1),
    "CoKe's centre step": lambda z, s, q, a, v: balancing.coke_center_step(s.t() @ z, v, s.t() @ z, v),
    "CoKe's swapped loss": lambda z, s, q, a, v: coke_swapped_loss(s, s.flip(0), a, 0.5),
    "ExCB's size update": lambda z, s, q, a, v: balancing.excb_update_sizes(v, v, 0.99),
    "ExCB's balanced scores": lambda z, s, q, a, v: balancing.excb_balance_scores(s, balancing.excb_relative_sizes(v)),
    "cluster counts": lambda z, s, q, a, v: metrics.assignment_counts(a, K),
    "one batch's balance": lambda z, s, q, a, v: metrics.batch_balance(metrics.assignment_counts(a, K)),
}


@pytest.mark.parametrize("name", STEP_FUNCTIONS)
def test_a_step_function_never_waits_for_the_gpu(name):
    with fake_cuda():
        z = F.normalize(torch.randn(B, D, device="cuda"), dim=1)
        inputs = (z, torch.randn(B, K, device="cuda"), torch.randn(8, K, device="cuda"),
                  torch.randint(0, K, (B,), device="cuda"), torch.rand(K, device="cuda"))
        assert host_waits(STEP_FUNCTIONS[name], *inputs) == []


def test_augmenting_a_batch_never_waits_for_the_gpu(monkeypatch):
    # The colour operations' order comes from the CUDA generator's state, which lives on the host (no wait); a
    # fake trace has no CUDA generator, so a fixed order stands in for that draw.
    monkeypatch.setattr(augment, "_batch_order", lambda n, generator: list(range(n)))
    with fake_cuda():
        images = torch.zeros(B, 3, 32, 32, dtype=torch.uint8, device="cuda")
        for config in (augment.cifar_preset(), augment.AugmentConfig(blur_p=0.5, solarize_p=0.2),
                       augment.small_crop_preset(16, augment.cifar_preset())):
            augmenter = augment.Augmenter(config)
            augmenter.views(images, 2)  # the first call copies mean and std to the GPU, once
            assert host_waits(augmenter.views, images, 2) == []


def test_the_tracer_sees_each_kind_of_wait():
    # what the functions above once did; the test above would not notice a tracer that sees nothing
    with fake_cuda():
        x = torch.randn(B, K, device="cuda")
        a = torch.randint(0, K, (B,), device="cuda")
        assert host_waits(lambda: x[torch.arange(B), a]) != []  # an index made on the host
        assert host_waits(lambda: x + torch.tensor(1.0, device="cuda")) != []  # a number copied from the host
        assert host_waits(lambda: int(a.max())) != []  # a value read back
        assert host_waits(lambda: torch.bincount(a, minlength=K)) != []  # an output size set by the data
        assert host_waits(lambda: x + torch.full((), 1.0, device="cuda") + 1.0) == []  # made on the GPU, or a number


def test_cluster_counts_are_the_same_by_scatter_and_still_refuse_a_bad_assignment_on_the_cpu():
    a = torch.tensor([0, 2, 2, 4, 2])
    assert metrics.assignment_counts(a, 6).tolist() == torch.bincount(a, minlength=6).tolist() == [1, 0, 3, 0, 1, 0]
    assert metrics.assignment_counts(torch.zeros(0, dtype=torch.long), 3).tolist() == [0, 0, 0]
    with pytest.raises(ValueError, match=r"assignments must lie in 0..2, got values in 0..4"):
        metrics.assignment_counts(a, 3)
