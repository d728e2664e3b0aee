"""BYOL (Grill et al., 2020): predict a slowly moving target's view of the same image (METHODS.md §3).

No negatives at all. An *online* network (backbone → projector → predictor) looks at view 1 and predicts
what a *target* network (an EMA copy of backbone → projector, no predictor) outputs for view 2:

    p_i = q(g(f(v1_i)))            online prediction             (gradient flows here)
    t_i = sg(g'(f'(v2_i)))         target projection             (stop-gradient; f', g' = EMA of f, g)
    ℓ(p, t) = ‖p̂ − t̂‖² = 2 − 2·p̂·t̂                               (normalised MSE)
    L = mean_i [ ℓ(p1_i, t2_i) + ℓ(p2_i, t1_i) ]                  (symmetrised over the two views)

After every optimiser step θ' ← m·θ' + (1 − m)·θ with m rising from m0 = 0.99 to 1 on a cosine schedule.

Why it does not collapse even without negatives: the predictor plus the slowly moving target make the
constant solution unstable in practice (the paper's argument is empirical; the EMA and the predictor are
both needed). The loss only looks at one image at a time, so under DDP the sole cross-sample statistic is
batch norm, which the trainer makes global.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..models import cosine_momentum, ema_update, make_teacher, mlp
from .base import Method, StepOutput


@dataclass
class BYOLOptions:
    proj_hidden: int = 4096  # projector 512→4096→256 at CIFAR scale (BN+ReLU inside, none at the output)
    proj_dim: int = 256
    pred_hidden: int = 4096  # predictor 256→4096→256
    base_momentum: float = 0.99  # m0 of the target's EMA (CIFAR: 0.99–0.996)


def normalized_mse(p: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """ℓ(p, t) = ‖p̂ − t̂‖² = 2 − 2 cos(p, t) per row, in float32 (bf16 cosines are too coarse for a loss)."""
    return 2.0 - 2.0 * F.cosine_similarity(p.float(), t.float(), dim=1)


class BYOL(Method):
    name = "byol"
    Options = BYOLOptions

    def __init__(self, backbone, options: BYOLOptions, context):
        super().__init__(backbone, options, context)
        self.projector = mlp(backbone.feature_dim, options.proj_hidden, options.proj_dim)
        self.predictor = mlp(options.proj_dim, options.pred_hidden, options.proj_dim)
        # The target starts as an exact copy and is never touched by the optimiser (requires_grad=False).
        self.target_backbone = make_teacher(self.backbone)
        self.target_projector = make_teacher(self.projector)
        self.register_buffer("momentum", torch.tensor(options.base_momentum))  # current m, for the logs

    def online(self, view: torch.Tensor) -> torch.Tensor:
        return self.predictor(self.projector(self.backbone(view)))

    @torch.no_grad()
    def target(self, view: torch.Tensor) -> torch.Tensor:
        return self.target_projector(self.target_backbone(view))

    def predictions_and_targets(self, views):
        """(p1, p2, t1, t2) of the first two views: online predictions and stop-gradient target projections."""
        v1, v2 = views[:2]
        return self.online(v1), self.online(v2), self.target(v1), self.target(v2)

    def training_step(self, views, indices):
        p1, p2, t1, t2 = self.predictions_and_targets(views)
        # Each view's prediction is compared with the *other* view's target, then the two directions added.
        per_image = normalized_mse(p1, t2) + normalized_mse(p2, t1)
        logs = {"pos_cos": 1.0 - per_image.detach().mean() / 4.0, "ema_momentum": self.momentum}
        return StepOutput(loss=per_image.mean(), logs=logs)

    def after_optimizer_step(self, progress: float) -> None:
        m = cosine_momentum(self.options.base_momentum, progress)
        ema_update(self.target_backbone, self.backbone, m)
        ema_update(self.target_projector, self.projector, m)
        self.momentum.fill_(m)
