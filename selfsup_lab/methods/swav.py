"""SwAV (Caron et al., 2020): swapped prediction with Sinkhorn-balanced targets (METHODS.md §4.2).

Same skeleton as naive.py — projector, K unit prototypes, cosine scores s_ik = ẑ_i·c_k, swapped
cross-entropy — with one change: the target of view v is not a softmax of its own row but the
Sinkhorn-Knopp projection of the whole batch's score matrix, which forces every cluster to receive an equal
share B/K of the batch:

    Q^(v) = sinkhorn(S^(v), ε = 0.05, 3 iterations)                      (sg; rows sum to 1, columns ≈ B/K)
    L = 1/2 Σ_{v=1,2} mean_i  −Σ_k q_ik^(v) log softmax(s_i^(3−v)/τ_s)_k,   τ_s = 0.1

Putting everyone in one cluster is no longer possible: the targets themselves are spread out.

Details that matter in practice:
* prototypes frozen during the first epoch (`freeze_prototypes_epochs`): at the start the scores are noise,
  and letting prototypes chase noisy balanced targets makes training unstable (SwAV freezes them for the
  first iterations);
* prototypes renormalised after every step (the layer also normalises on every forward pass);
* with B ≪ K the per-batch equipartition is a noisy constraint (a batch of 256 cannot fill 3000 clusters
  equally). The optional queue (`queue_length` > 0, from `queue_start_epoch`) keeps the last embeddings of
  the *global* batch (gathered over ranks, so every rank holds the same queue and checkpoints carry it) and
  adds their scores as extra rows to the Sinkhorn problem; only the batch rows are used as targets. It is
  off by default (`queue_length = 0`); METHODS.md's small-batch recipe is
  `--set queue_length=3840 queue_start_epoch=50`.
* K = 3000 requested, capped by `adaptive_num_clusters` (digits: 71; CIFAR-10: 2,500).

What you may see on small data: the loss sitting at log K with near-uniform targets (`target_max` ≈ 1/K).
While the two views of an image are not yet predictable from each other, the cheapest answer to balanced
targets is to hedge: every embedding moves to the direction that scores all prototypes alike, every row of
S becomes the same, and Sinkhorn can only answer with uniform rows — a second trivial solution, the
opposite of naive's. Measured on digits (CLI defaults, convnet): mean pairwise cosine of the projections
0.65 → 0.95 within 10 steps, loss = log 71 from epoch ~8 of 40, hard-argmax occupancy entropy ≈ 0.85 (the
argmax of a flat row is tie-breaking noise). A known SwAV behaviour (facebookresearch/swav#62); ExCB's
EMA teacher and k-means-initialised prototypes avoid it on the same data.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import distributed
from ..balancing import sinkhorn
from ..models import PrototypeLayer, mlp
from .base import Method, StepOutput, adaptive_num_clusters
from .naive import swapped_cross_entropy


@dataclass
class SwAVOptions:
    num_prototypes: int = 3000  # K requested (*CIFAR default*), capped to what the dataset can fill
    temperature: float = 0.1  # τ_s of the student softmax
    epsilon: float = 0.05  # ε of Sinkhorn: smaller = sharper targets
    sinkhorn_iterations: int = 3
    freeze_prototypes_epochs: int = 1
    queue_length: int = 0  # embeddings per view kept from earlier batches; 0 = no queue (SwAV: 3840)
    queue_start_epoch: int = 15  # SwAV's default; METHODS.md suggests ~50 for long CIFAR runs
    proj_hidden: int = 2048
    proj_dim: int = 128


class SwAV(Method):
    name = "swav"
    Options = SwAVOptions

    def __init__(self, backbone, options: SwAVOptions, context):
        super().__init__(backbone, options, context)
        self.num_clusters = adaptive_num_clusters(options.num_prototypes, context.num_train, context.num_classes)
        self.projector = mlp(backbone.feature_dim, options.proj_hidden, options.proj_dim)
        self.prototypes = PrototypeLayer(options.proj_dim, self.num_clusters)
        # The queue: one per view, newest first; `queue_filled` counts valid rows. Buffers, so --resume keeps them.
        self.register_buffer("queue", torch.zeros(2, options.queue_length, options.proj_dim))
        self.register_buffer("queue_filled", torch.zeros((), dtype=torch.long))
        self.epoch = 0

    def extra_info(self):
        return {"num_clusters": self.num_clusters}

    def on_epoch_start(self, epoch, trainer):
        self.epoch = epoch

    def scores(self, z: torch.Tensor, freeze: bool = False) -> torch.Tensor:
        """Cosines to the prototypes in float32 (even under bf16 autocast); `freeze` blocks their gradient."""
        with torch.autocast(z.device.type, enabled=False):
            return self.prototypes(z.float(), detach_prototypes=freeze)

    def training_step(self, views, indices):
        opts = self.options
        freeze = self.epoch < opts.freeze_prototypes_epochs
        z = [self.projector(self.backbone(v)) for v in views[:2]]
        s = [self.scores(zv, freeze) for zv in z]

        with torch.no_grad():
            queue_on = opts.queue_length > 0 and self.epoch >= opts.queue_start_epoch
            use_queue = queue_on and int(self.queue_filled) == opts.queue_length  # join once full, as SwAV
            q = []
            for v in range(2):
                queue_scores = self.scores(self.queue[v]) if use_queue else None
                q.append(sinkhorn(s[v].detach(), opts.epsilon, opts.sinkhorn_iterations, queue_scores))
            if queue_on:
                self._enqueue([F.normalize(zv.detach().float(), dim=1) for zv in z])

        loss = 0.5 * (swapped_cross_entropy(q[0], s[1], opts.temperature) +
                      swapped_cross_entropy(q[1], s[0], opts.temperature))
        logs = {"target_max": q[0].max(dim=1).values.mean()}
        return StepOutput(loss=loss, logs=logs, assignments=q[0].argmax(dim=1),
                          assignments_without_rule=s[0].detach().argmax(dim=1))

    @torch.no_grad()
    def _enqueue(self, embeddings: list[torch.Tensor]) -> None:
        """Push this step's global batch (gathered over ranks) in front of the queue; the oldest rows fall off."""
        for v, e in enumerate(embeddings):
            e = distributed.gather_no_grad(e)[: self.options.queue_length]
            self.queue[v] = torch.cat([e, self.queue[v][: self.options.queue_length - e.shape[0]]])
        added = self.queue_filled + embeddings[0].shape[0] * distributed.world_size()
        self.queue_filled.copy_(added.clamp(max=self.options.queue_length))

    def after_optimizer_step(self, progress):
        self.prototypes.normalize_()

    def assign_clusters(self, images):
        return self.scores(self.projector(self.backbone(images))).argmax(dim=1)
