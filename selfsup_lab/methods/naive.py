"""Naive swapped prediction: clustering with no balancing at all — it collapses, on purpose (METHODS.md §4.1).

The skeleton every clustering method of §4 shares: a projector to d dims, K unit prototypes c_k, cosine
scores s_ik = ẑ_i·c_k, a target q_i computed without gradient from one view, and a cross-entropy that
makes the *other* view predict it (swapped prediction):

    q_i^(v) = sg softmax(s_i^(v)/τ_t)                                    (the target: no balancing)
    L = 1/2 Σ_{v=1,2} mean_i  −Σ_k q_ik^(v) log softmax(s_i^(3−v)/τ_s)_k

Nothing couples one image's target to the others', so the loss has a trivial minimum: map every image to
the same prototype with full confidence and both views always "agree". Gradient descent finds it within
a few epochs — most images end up in one or a handful of clusters (watch `occupancy.entropy_ratio` fall
towards 0; digits with CLI defaults: 0.25 after epoch 1, every image in one cluster from epoch 2). This
file is the "before" picture; swav.py, coke.py and excb.py change only how q is made.

Default τ_t = 0.05 is SwAV's ε: with it, `naive_targets(s, 0.05)` equals `sinkhorn(s, 0.05, iterations=0)`,
so naive *is* SwAV minus the balancing — a fair comparison. The sharp τ_t is not what makes the collapse:
with τ_t = τ_s = 0.1 (no sharpening) digits collapse just as fast (measured: max cluster share 0.996 after
2 epochs), only the targets stay soft (mean top target ≈ 0.08) instead of one-hot.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch

from ..balancing import naive_targets
from ..models import PrototypeLayer, mlp
from .base import Method, StepOutput, adaptive_num_clusters


@dataclass
class NaiveOptions:
    num_prototypes: int = 3000  # K requested; capped to what the dataset can fill (adaptive_num_clusters)
    student_temperature: float = 0.1  # τ_s
    teacher_temperature: float = 0.05  # τ_t = SwAV's ε, so naive = SwAV with 0 Sinkhorn iterations
    hard_targets: bool = False  # q = one-hot argmax instead of the softmax
    proj_hidden: int = 2048
    proj_dim: int = 128


def swapped_cross_entropy(target: torch.Tensor, scores: torch.Tensor, temperature: float) -> torch.Tensor:
    """mean_i −Σ_k q_ik log softmax(s_i/τ)_k, in float32."""
    return -(target * torch.log_softmax(scores.float() / temperature, dim=1)).sum(dim=1).mean()


class Naive(Method):
    name = "naive"
    Options = NaiveOptions

    def __init__(self, backbone, options: NaiveOptions, context):
        super().__init__(backbone, options, context)
        self.num_clusters = adaptive_num_clusters(options.num_prototypes, context.num_train, context.num_classes)
        self.projector = mlp(backbone.feature_dim, options.proj_hidden, options.proj_dim)
        self.prototypes = PrototypeLayer(options.proj_dim, self.num_clusters)

    def extra_info(self):
        return {"num_clusters": self.num_clusters}

    def scores(self, images: torch.Tensor) -> torch.Tensor:
        """Cosines to the prototypes, computed in float32 even under bf16 autocast."""
        z = self.projector(self.backbone(images))
        with torch.autocast(z.device.type, enabled=False):
            return self.prototypes(z.float())

    def training_step(self, views, indices):
        s1, s2 = (self.scores(v) for v in views[:2])
        with torch.no_grad():  # the targets: sg, and — the whole point — no balancing
            q1, q2 = (naive_targets(s, self.options.teacher_temperature) for s in (s1, s2))
            if self.options.hard_targets:
                q1, q2 = (torch.nn.functional.one_hot(q.argmax(1), q.shape[1]).float() for q in (q1, q2))
        tau = self.options.student_temperature
        loss = 0.5 * (swapped_cross_entropy(q1, s2, tau) + swapped_cross_entropy(q2, s1, tau))
        confidence = q1.max(dim=1).values.mean()  # → 1 as the targets harden
        hard = q1.argmax(dim=1)  # naive has no balancing rule: with and without it are the same
        return StepOutput(loss=loss, logs={"target_max": confidence}, assignments=hard, assignments_without_rule=hard)

    def assign_clusters(self, images):
        return self.scores(images).argmax(dim=1)
