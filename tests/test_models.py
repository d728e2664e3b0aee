import pytest
import torch

from selfsup_lab.errors import UserError
from selfsup_lab.models import (PrototypeLayer, build_backbone, cosine_momentum, ema_update, make_teacher, mlp,
                                resolve_backbone_name)


@pytest.mark.parametrize("name, dim", [("convnet", 256), ("resnet18", 512)])
def test_backbones_give_feature_vectors(name, dim):
    net = build_backbone(name)
    assert net.feature_dim == dim
    assert net(torch.randn(2, 3, 32, 32)).shape == (2, dim)


@pytest.mark.parametrize("name, blocks", [("resnet18", [2, 2, 2, 2]), ("resnet34", [3, 4, 6, 3])])
def test_resnet_has_cifar_stem(name, blocks):
    net = build_backbone(name)
    assert net.conv1.kernel_size == (3, 3) and net.conv1.stride == (1, 1)
    assert isinstance(net.maxpool, torch.nn.Identity)
    assert [len(getattr(net, f"layer{i}")) for i in range(1, 5)] == blocks  # resnet34 is not a ResNet-18


def test_auto_backbone_follows_device():
    assert resolve_backbone_name("auto", "cpu") == "convnet"
    assert resolve_backbone_name("auto", "cuda") == "resnet18"
    # any GPU, however it is named (the trainer's device, one per rank under torchrun)
    assert resolve_backbone_name("auto", "cuda:1") == "resnet18"
    assert resolve_backbone_name("auto", torch.device("cuda", 0)) == "resnet18"
    assert resolve_backbone_name("resnet34", "cpu") == "resnet34"
    with pytest.raises(UserError, match="unknown backbone"):
        build_backbone("vgg")


def test_prototypes_give_cosines():
    layer = PrototypeLayer(8, 5)
    with torch.no_grad():
        layer.weight.mul_(7.0)  # whatever the raw scale, scores stay cosines
    z = torch.randn(4, 8)
    scores = layer(z)
    expected = torch.nn.functional.normalize(z, dim=1) @ torch.nn.functional.normalize(layer.weight, dim=1).t()
    assert torch.allclose(scores, expected, atol=1e-6)
    assert scores.abs().max() <= 1 + 1e-6


def test_mlp_layers():
    head = mlp(16, 32, 8, num_layers=3)
    assert sum(isinstance(m, torch.nn.Linear) for m in head) == 3
    assert head(torch.randn(4, 16)).shape == (4, 8)


def test_prototype_rows_are_written_back_unit_norm():
    """set_prototypes (k-means centroids) and normalize_ store unit rows c_k, keeping their directions."""
    torch.manual_seed(0)
    layer = PrototypeLayer(8, 5)
    centroids = 3.0 * torch.randn(5, 8)
    layer.set_prototypes(centroids)
    assert torch.allclose(layer.weight.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.allclose(layer.weight, torch.nn.functional.normalize(centroids, dim=1), atol=1e-6)
    with torch.no_grad():
        layer.weight.mul_(torch.arange(1.0, 6.0).unsqueeze(1))  # rows of different lengths, as after optimiser steps
    directions = layer.prototypes().clone()
    layer.normalize_()
    assert torch.allclose(layer.weight.norm(dim=1), torch.ones(5), atol=1e-6)
    assert torch.allclose(layer.weight, directions, atol=1e-6)


def test_mlp_blocks_and_the_optional_last_batch_norm():
    """Linear-BN-ReLU blocks, a final Linear, and with last_bn a BN without affine (SimCLR v2) that standardises
    each output over the batch; the final Linear then has no bias (the BN would remove it)."""
    torch.manual_seed(0)
    plain = mlp(16, 32, 8)
    assert sum(p.numel() for p in plain.parameters()) == 16 * 32 + 2 * 32 + 32 * 8 + 8  # the hidden BN's γ, β
    head = mlp(16, 32, 8, last_bn=True)
    assert sum(p.numel() for p in head.parameters()) == 16 * 32 + 2 * 32 + 32 * 8  # nothing learnable after it
    out = head(torch.randn(64, 16) + 3.0)  # train mode: batch statistics
    assert torch.allclose(out.mean(dim=0), torch.zeros(8), atol=1e-5)
    assert torch.allclose(out.std(dim=0, unbiased=False), torch.ones(8), atol=1e-3)


def test_ema_moves_teacher_towards_student():
    student = torch.nn.Linear(3, 3)
    teacher = make_teacher(student)
    assert not any(p.requires_grad for p in teacher.parameters())
    with torch.no_grad():
        student.weight.add_(1.0)
    before = teacher.weight.clone()
    ema_update(teacher, student, momentum=0.9)
    assert torch.allclose(teacher.weight, 0.9 * before + 0.1 * student.weight)
    assert cosine_momentum(0.99, 0.0) == pytest.approx(0.99) and cosine_momentum(0.99, 1.0) == pytest.approx(1.0)
    # between the ends a cosine, not a straight line: at t/T = 1/4, 1 − 0.01·(1 + cos(π/4))/2 (a line gives 0.9925)
    assert cosine_momentum(0.99, 0.25) == pytest.approx(0.99146446609, abs=1e-10)


def test_ema_leaves_the_teachers_batch_norm_statistics_its_own():
    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    teacher = make_teacher(student)
    student(torch.randn(32, 4) + 5.0)  # train mode: the student's running mean moves towards its inputs' 5
    teacher(torch.randn(32, 4) - 5.0)  # and the teacher's towards its own
    own_mean = teacher[1].running_mean.clone()
    ema_update(teacher, student, momentum=0.9)
    assert torch.equal(teacher[1].running_mean, own_mean)  # not overwritten by the student's
    assert not torch.allclose(teacher[1].running_mean, student[1].running_mean)


def test_gathered_batch_norm_keeps_what_each_batch_norm_was():
    # The CPU converter (used under torchrun without CUDA) must not thaw an EMA teacher's frozen weights (the
    # optimiser would then hold them), nor reset statistics or mode
    from selfsup_lab.models import GatheredBatchNorm, convert_sync_batchnorm

    torch.manual_seed(0)
    student = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.BatchNorm1d(4))
    student(torch.randn(16, 4) + 3.0)  # running statistics away from their initial 0 and 1
    teacher = make_teacher(student).eval()
    pair = torch.nn.ModuleDict({"student": student, "teacher": teacher})
    trainable = [name for name, p in pair.named_parameters() if p.requires_grad]
    weights, means = {n: p for n, p in pair.named_parameters()}, [m[1].running_mean.clone() for m in (student, teacher)]
    convert_sync_batchnorm(pair)
    assert all(isinstance(m[1], GatheredBatchNorm) for m in (student, teacher))
    assert [name for name, p in pair.named_parameters() if p.requires_grad] == trainable == [
        "student.0.weight", "student.0.bias", "student.1.weight", "student.1.bias"]
    assert all(p is weights[n] for n, p in pair.named_parameters())  # the same parameters, not copies
    assert all(torch.equal(m[1].running_mean, mean) for m, mean in zip((student, teacher), means))
    assert student[1].training and not teacher[1].training
