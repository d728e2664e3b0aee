"""Backbones, heads and the prototype layer.

Every method in `selfsup_lab.methods` is assembled from three kinds of parts:

* a **backbone** that turns an image into a feature vector (what we evaluate with kNN / linear probe);
* **MLP heads** (projector, predictor) that map features into the space where the loss lives;
* for clustering methods, a **prototype layer**: K unit-norm vectors c_k, scoring an embedding z by the
  cosine s_k = ẑ·c_k.

Backbones: ResNet-18/34 from torchvision with the *CIFAR stem* (a 3×3 stride-1 first convolution and no
max-pool — on 32×32 images the ImageNet stem throws away 15/16 of the pixels before the first block,
which costs about 10 points of kNN accuracy), and a small ConvNet for CPU runs and tests.
"""
from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from .errors import UserError

BACKBONES = {
    "resnet18": "ResNet-18, CIFAR stem (3x3 conv, stride 1, no max-pool), 512-d features",
    "resnet34": "ResNet-34, CIFAR stem, 512-d features",
    "convnet": "small 4-block ConvNet, 256-d features: minutes on a laptop CPU",
    "auto": "convnet on a CPU, resnet18 on a GPU",
}


def resnet_cifar(depth: int = 18) -> nn.Module:
    """torchvision's ResNet with the CIFAR stem and the classifier removed (output: 512-d features)."""
    builder = {18: torchvision.models.resnet18, 34: torchvision.models.resnet34}[depth]
    net = builder(weights=None)
    net.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
    net.maxpool = nn.Identity()
    net.fc = nn.Identity()
    net.feature_dim = 512
    return net


class SmallConvNet(nn.Module):
    """Four conv-BN-ReLU blocks (32→64→128→256 channels), each halving the resolution but the last,
    then global average pooling. About 0.4 M parameters: fast enough to train on a CPU in minutes."""

    def __init__(self, width: int = 32):
        super().__init__()
        chans = [3, width, 2 * width, 4 * width, 8 * width]
        blocks = []
        for i in range(4):
            blocks += [
                nn.Conv2d(chans[i], chans[i + 1], 3, padding=1, bias=False),
                nn.BatchNorm2d(chans[i + 1]),
                nn.ReLU(inplace=True),
            ]
            if i < 3:
                blocks.append(nn.MaxPool2d(2))
        self.body = nn.Sequential(*blocks)
        self.feature_dim = chans[-1]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.adaptive_avg_pool2d(self.body(x), 1).flatten(1)


# The smallest image side a backbone takes: the ConvNet halves its input three times (ResNets take any size).
MIN_IMAGE_SIDE = {"convnet": 8}


def resolve_backbone_name(name: str, device: torch.device | str) -> str:
    """`auto` follows the device: the small ConvNet on a CPU, ResNet-18 on a GPU."""
    if name == "auto":
        return "resnet18" if torch.device(device).type == "cuda" else "convnet"
    return name


def build_backbone(name: str) -> nn.Module:
    """A backbone by name; its `feature_dim` attribute tells the heads their input size."""
    if name == "resnet18":
        return resnet_cifar(18)
    if name == "resnet34":
        return resnet_cifar(34)
    if name == "convnet":
        return SmallConvNet()
    raise UserError(f"unknown backbone '{name}'; choose one of: {', '.join(BACKBONES)}")


def mlp(in_dim: int, hidden_dim: int, out_dim: int, num_layers: int = 2, last_bn: bool = False) -> nn.Sequential:
    """Linear-BN-ReLU blocks and a final Linear (optionally followed by a BN without affine, as SimCLR v2).

    `num_layers` counts Linear layers: 2 gives in→hidden→out, 3 gives in→hidden→hidden→out.
    """
    layers: list[nn.Module] = []
    dim = in_dim
    for _ in range(num_layers - 1):
        layers += [nn.Linear(dim, hidden_dim, bias=False), nn.BatchNorm1d(hidden_dim), nn.ReLU(inplace=True)]
        dim = hidden_dim
    layers.append(nn.Linear(dim, out_dim, bias=not last_bn))
    if last_bn:
        layers.append(nn.BatchNorm1d(out_dim, affine=False))
    return nn.Sequential(*layers)


class PrototypeLayer(nn.Module):
    """K prototypes c_k with unit-norm rows; scores are cosines s_ik = ẑ_i·c_k in [-1, 1].

    The rows are normalised on every forward pass (rather than only after each step), so the scores
    are cosines whatever the optimiser did to the raw weights. `normalize_()` also writes the unit
    rows back, which k-means initialisation and centroid copies use.
    """

    def __init__(self, dim: int, num_prototypes: int):
        super().__init__()
        self.weight = nn.Parameter(F.normalize(torch.randn(num_prototypes, dim), dim=1))

    @property
    def num_prototypes(self) -> int:
        return self.weight.shape[0]

    def prototypes(self) -> torch.Tensor:
        return F.normalize(self.weight, dim=1)

    def forward(self, z: torch.Tensor, detach_prototypes: bool = False) -> torch.Tensor:
        c = self.prototypes()
        if detach_prototypes:
            c = c.detach()
        return F.normalize(z, dim=1) @ c.t()

    @torch.no_grad()
    def set_prototypes(self, centroids: torch.Tensor) -> None:
        self.weight.copy_(F.normalize(centroids, dim=1))

    @torch.no_grad()
    def normalize_(self) -> None:
        self.weight.copy_(F.normalize(self.weight, dim=1))


# --- teacher networks (BYOL, ExCB, ...) --------------------------------------------------------------

def make_teacher(student: nn.Module) -> nn.Module:
    """A frozen copy of `student` that will follow it by exponential moving average."""
    import copy

    teacher = copy.deepcopy(student)
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def cosine_momentum(base_momentum: float, progress: float) -> float:
    """m(t) = 1 − (1 − m0)(1 + cos(π t/T))/2: from m0 at the start to 1 at the end (`progress` = t/T)."""
    import math

    return 1.0 - (1.0 - base_momentum) * (1.0 + math.cos(math.pi * min(max(progress, 0.0), 1.0))) / 2.0


@torch.no_grad()
def ema_update(teacher: nn.Module, student: nn.Module, momentum: float) -> None:
    """θ_teacher ← m·θ_teacher + (1 − m)·θ_student, for the parameters only.

    Buffers are not copied: the teacher's batch norms keep the running statistics of the teacher's *own*
    activations, gathered by its forward passes in train mode (as MoCo and DINO do). The student's statistics
    describe a different network — the teacher lags behind by the EMA — and with them an evaluation-mode
    teacher mis-normalises its features. Measured on digits (ExCB with K = 10, 20 epochs, B = 256, seed 0,
    2026-11-23; training itself is unaffected, the teacher runs in train mode): with the student's statistics the
    teacher's plain argmax put 99% of the training images into one cluster (test ACC 0.114, NMI 0.026); with its
    own, the largest cluster held 26% (ACC 0.444, NMI 0.416).
    """
    for t, s in zip(teacher.parameters(), student.parameters()):
        t.mul_(momentum).add_(s.detach(), alpha=1.0 - momentum)


# --- batch norm over the global batch ----------------------------------------------------------------

class GatheredBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm whose statistics come from the *global* batch, on any backend (CPU `gloo` included).

    It gathers the activations of all ranks (with gradient), normalises them as one batch and keeps this
    rank's rows. torch's SyncBatchNorm does the same more cheaply but only on GPUs; this one makes the
    CPU multi-process tests exact. Single process: plain batch norm.
    """

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected 2-D or 4-D input, got {x.dim()}-D")

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from . import distributed

        if not self.training or distributed.world_size() == 1:
            return super().forward(x)
        local = x.shape[0]
        start = distributed.global_offset(local)
        return super().forward(distributed.gather(x))[start : start + local]


def convert_sync_batchnorm(module: nn.Module) -> nn.Module:
    """Make every batch norm use global-batch statistics: torch's SyncBatchNorm on CUDA, ours elsewhere."""
    if torch.cuda.is_available() and next(module.parameters()).is_cuda:
        return nn.SyncBatchNorm.convert_sync_batchnorm(module)
    for name, child in module.named_children():
        if isinstance(child, nn.modules.batchnorm._BatchNorm) and not isinstance(child, GatheredBatchNorm):
            new = GatheredBatchNorm(child.num_features, child.eps, child.momentum, child.affine,
                                    child.track_running_stats)
            new.load_state_dict(child.state_dict())  # the running statistics
            if child.affine:  # the same Parameter objects, as torch's converter keeps: a frozen EMA copy stays frozen
                new.weight, new.bias = child.weight, child.bias
            new.train(child.training)
            setattr(module, name, new)
        else:
            convert_sync_batchnorm(child)
    return module
