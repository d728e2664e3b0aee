"""SimCLR (Chen et al., 2020): contrast each view against every other view in the batch (METHODS.md §1).

For the 2B normalised embeddings ẑ of a batch of B images seen twice, anchor i's positive p(i) is its
partner view and its negatives are the other 2B − 2 embeddings. The NT-Xent loss is

    L = 1/2B Σ_i −log( exp(ẑ_i·ẑ_p(i)/τ) / Σ_{j≠i} exp(ẑ_i·ẑ_j/τ) ).

Under DDP the candidates j come from the *global* batch (`distributed.gather`), so two ranks of B/2
train exactly the model that one rank of B trains.

A label-free signal worth watching: where the positive ranks among the 2B − 1 candidates (top-1 = the
partner is the most similar embedding). It rises fast at first and tells you the task is being solved.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import distributed
from ..models import mlp
from .base import Method, StepOutput


@dataclass
class SimCLROptions:
    temperature: float = 0.2  # τ; 0.5 in the paper's CIFAR setting, 0.2 usually better for kNN
    proj_hidden: int = 2048
    proj_dim: int = 128
    # Encode both views in one backbone call of 2B images, as SimCLR's reference code does, so batch norm
    # normalises over both views together (off: two calls of B, each view with its own statistics). The loss
    # is computed as before; fewer, larger kernels make the step faster on a GPU that waits on the CPU.
    one_pass: bool = False


def nt_xent_loss(z1: torch.Tensor, z2: torch.Tensor, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
    """NT-Xent over this rank's 2b anchors against the global 2B candidates.

    Returns (loss, positive_rank) where positive_rank[i] = how many candidates score above anchor i's
    positive (0 = the positive is the top candidate).
    """
    z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
    local = z1.shape[0]
    offset = distributed.global_offset(local)
    g1, g2 = distributed.gather(z1), distributed.gather(z2)  # (B, d) each
    global_batch = g1.shape[0]
    candidates = torch.cat([g1, g2])  # (2B, d): view-1 block then view-2 block

    anchors = torch.cat([z1, z2])  # (2b, d)
    rows = torch.arange(local, device=z1.device) + offset
    anchor_rows = torch.arange(2 * local, device=z1.device)  # on the device: a CPU index would make a GPU wait
    self_index = torch.cat([rows, rows + global_batch])  # where each anchor sits among the candidates
    positive_index = torch.cat([rows + global_batch, rows])  # its partner view

    with torch.autocast(z1.device.type, enabled=False):  # float32 logits even under bf16 autocast
        logits = anchors @ candidates.t() / temperature
    logits[anchor_rows, self_index] = float("-inf")  # j ≠ i
    loss = F.cross_entropy(logits, positive_index)

    with torch.no_grad():
        positive_logit = logits[anchor_rows, positive_index]
        positive_rank = (logits > positive_logit[:, None]).sum(dim=1)
    return loss, positive_rank


class SimCLR(Method):
    name = "simclr"
    Options = SimCLROptions

    def __init__(self, backbone, options: SimCLROptions, context):
        super().__init__(backbone, options, context)
        self.projector = mlp(backbone.feature_dim, options.proj_hidden, options.proj_dim)

    def training_step(self, views, indices):
        if self.options.one_pass:
            z1, z2 = self.projector(self.backbone(torch.cat(views[:2]))).chunk(2)
        else:
            z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])
        loss, rank = nt_xent_loss(z1, z2, self.options.temperature)
        logs = {"pos_top1": (rank == 0).float().mean(), "pos_top5": (rank < 5).float().mean()}
        return StepOutput(loss=loss, logs=logs)
