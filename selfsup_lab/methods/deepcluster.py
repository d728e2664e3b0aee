"""DeepCluster-style offline re-clustering (Caron et al., 2018; the v2 variant of SwAV's paper) (METHODS.md §4.3).

Balancing by brute force: once per epoch, cluster the *whole dataset* and train the network to predict
those clusters. k-means over all N images cannot collapse the way a per-batch rule can — an empty cluster is
re-seeded by splitting the largest one — but it costs a full pass over a memory bank every epoch.

    memory bank      m_i = normalise( (ẑ_i^(1) + ẑ_i^(2)) / 2 )      written during training, by image index
    epoch start      (C^h, a^h) = spherical_kmeans({m_i}, K_h, ~10 iterations)      for each head h
                     prototypes of head h ← C^h (frozen during the epoch);   a^h_i stored per image
    loss             L = mean over heads h and views v of  CE( a^h_i , softmax(ẑ_i^(v) · C^hᵀ / τ) ),   τ = 0.1

Epoch 0 fills the bank from the un-augmented images first (the untrained network's projections), so its
targets exist from the first step. The bank holds features from the previous epoch's (moving) network — the
staleness DeepCluster accepts in exchange for clusters over the whole dataset.

Several heads (solo-learn: 3 × 3000 on CIFAR, capped here to what the data can fill) give several
independent clusterings of the same bank; their losses are averaged.

DDP: each rank writes the *gathered* features into its bank, so all banks — and the seeded k-means on
them — are identical. Evaluation (METHODS.md §5): the default heads are over-clustered (K ≫ C), so
clustering scores come from k-means with K = C on the backbone features; a head with K = C
(`--set num_prototypes=10,3000`) answers `assign` itself (nearest prototype).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import distributed
from ..kmeans import spherical_kmeans
from ..models import PrototypeLayer, mlp
from .base import Method, StepOutput, adaptive_num_clusters


@dataclass
class DeepClusterOptions:
    num_prototypes: tuple[int, ...] = (3000, 3000, 3000)  # K per head (solo-learn CIFAR), adaptively capped
    temperature: float = 0.1  # τ of the prototype scores
    kmeans_iters: int = 10
    proj_hidden: int = 2048
    proj_dim: int = 128


class DeepCluster(Method):
    name = "deepcluster"
    Options = DeepClusterOptions

    def __init__(self, backbone, options: DeepClusterOptions, context):
        super().__init__(backbone, options, context)
        self.projector = mlp(backbone.feature_dim, options.proj_hidden, options.proj_dim)
        self.ks = [adaptive_num_clusters(k, context.num_train, context.num_classes) for k in options.num_prototypes]
        self.prototypes = torch.nn.ModuleList(PrototypeLayer(options.proj_dim, k) for k in self.ks)
        for p in self.prototypes.parameters():
            p.requires_grad_(False)  # set by k-means each epoch, never by the optimiser
        self.register_buffer("bank", torch.zeros(context.num_train, options.proj_dim))
        self.register_buffer("assignments", torch.zeros(len(self.ks), context.num_train, dtype=torch.long))
        # Occupancy and `assign` use the K = C head when there is one (Method.has_class_sized_head), else the first.
        self.tracked = self.ks.index(context.num_classes) if context.num_classes in self.ks else 0
        self.num_clusters = self.ks[self.tracked]

    def bank_features(self, images: torch.Tensor) -> torch.Tensor:
        # Batch statistics, as the network sees them in training: an untrained batch norm's running statistics
        # are the identity, and in eval mode nearly every image projects to the same direction (mean cosine
        # 0.996 on digits), so epoch 0's k-means would find little structure (NMI with the classes 0.32,
        # against 0.51 with batch statistics). As ExCB's k-means initialisation; the running statistics this
        # pass leaves are those of the un-augmented images, soon replaced in training.
        self.train()
        return F.normalize(self.projector(self.backbone(images)).float(), dim=1)

    @torch.no_grad()
    def on_epoch_start(self, epoch, trainer):
        if epoch == 0 and trainer is not None:
            self.bank.copy_(trainer.features(trainer.train_images, fn=self.bank_features))
        seed = trainer.config.seed if trainer is not None else 0
        for h, (k, layer) in enumerate(zip(self.ks, self.prototypes)):
            # Seeded by (run seed, epoch, head): every rank draws the same k-means on the same bank.
            generator = torch.Generator().manual_seed(seed * 1_000_003 + epoch * 101 + h)
            centroids, assignment = spherical_kmeans(self.bank, k, iters=self.options.kmeans_iters, generator=generator)
            layer.set_prototypes(centroids)
            self.assignments[h].copy_(assignment)

    def training_step(self, views, indices):
        z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])
        with torch.autocast(z1.device.type, enabled=False):  # losses in float32
            z1, z2 = z1.float(), z2.float()
            with torch.no_grad():
                mean = F.normalize(F.normalize(z1, dim=1) + F.normalize(z2, dim=1), dim=1)
                self.bank[distributed.gather_no_grad(indices.to(mean.device))] = distributed.gather_no_grad(mean)
            targets = self.assignments[:, indices]  # (heads, b): this epoch's k-means clusters of my images
            loss, agree, own = 0.0, 0.0, None
            for h, layer in enumerate(self.prototypes):
                for z in (z1, z2):
                    scores = layer(z) / self.options.temperature
                    loss = loss + F.cross_entropy(scores, targets[h])
                    if h == self.tracked:
                        agree = agree + (scores.argmax(dim=1) == targets[h]).float().mean() / 2
                        if own is None:  # view 1's nearest prototype: the network's choice, not k-means'
                            own = scores.detach().argmax(dim=1)
            loss = loss / (2 * len(self.ks))
        return StepOutput(loss=loss, logs={"agree_kmeans": agree}, assignments=targets[self.tracked],
                          assignments_without_rule=own)

    @torch.no_grad()
    def assign_clusters(self, images):
        """The nearest prototype of the K = C head (this epoch's k-means centroids), compared in float32."""
        z = self.projector(self.backbone(images))
        with torch.autocast(z.device.type, enabled=False):
            return self.prototypes[self.tracked](z.float()).argmax(dim=1)

    def extra_info(self):
        return {"num_clusters_used": self.ks, "tracked_k": self.num_clusters}
