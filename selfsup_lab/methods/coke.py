"""CoKe (Qian et al., 2022): online constrained k-means, decoupled from the discrimination loss (METHODS.md §4.4).

Clustering and representation learning take turns at two time scales. *Within* an epoch the network is
trained against the clusters of the previous epoch (centres C_prev, fixed); *alongside*, each batch is
clustered online into centres C_cur that become C_prev at the epoch's end. Several heads with different K
do this in parallel and the loss is averaged over them. Per head, for the global batch's clustering
features f_i (mean of the two views' normalised projections ẑ):

    assign        y_i = argmax_k ( f_i·c_k^cur + ρ_k )                          (balancing.coke_assign)
    dual step     ρ_k ← max(0, ρ_k + η (γ − n_k/B)),   γ = ratio/K               (balancing.coke_dual_step)
    centre step   c_k ← normalise(c_k N_k^old/N_k^new + Σ_{y_i=k} f_i / N_k^new)  (balancing.coke_center_step)
    loss          L = ½ [ CE( q_1, softmax(ẑ_1 C_prevᵀ/τ) ) + the same for view 2 ], with the target
                  q_1 = α onehot(ỹ_i) + (1 − α) softmax(ẑ_2 C_prevᵀ/τ)   (sg),    ỹ_i = i's label of last epoch

The duals ρ are the Lagrange multipliers of k-means with a *minimum* cluster size: an under-filled cluster
gets a bonus until it is chosen often enough, an over-filled one loses its bonus but is never penalised —
big clusters stay allowed. Labels are stored per image (by dataset index), so the target of an image is
where it was clustered one epoch ago. Epoch 0 runs at learning rate 0: it only clusters the random network's
features, to bootstrap centres and labels. It still counts in the schedule: a warm-up of W epochs
(min(10, epochs/10) by default) includes it, so the first update, at epoch 1, already takes about 1/W of the
base learning rate (all of it when W is 0), and CoKe gets one epoch of updates fewer than the other methods.

Step size: the constraint gap γ − n_k/B is of order 1/K, while ρ lives in cosine units, so a head with K
clusters uses η_K = dual_lr·K/10 (η/K constant): every head's bonus moves at the same speed, in cosine per
step. This matches both official settings within 1.5×: η = 0.1 for the CIFAR K = 10 head (η/K = 0.01) and
η = 20 for ImageNet's K = 3000 (η/K = 0.007). (A constant η — the official code shares one η over heads —
would make the K = 100 head's duals 10× slower than the K = 10 head's.)

Two details from the official code that the equations do not show: the projector ends in a batch norm
(without it the soft swapped targets let every image drift to the same feature, and the duals then just
rotate whole batches from cluster to cluster), and the centres are seeded from the first batch's features
(`seed_centers`: the paper's random directions need ~100 dual steps to be reached — fine for CIFAR's
390-step epoch 0, hopeless for the 5 steps of digits at B = 256).

What you may see on small data (digits, convnet, B = 64, measured 2026-11-22): balanced occupancy from the
first epoch (H/log K ≈ 0.99), but features *worse* than the random network's for many epochs (kNN 0.84 at
initialisation, 0.89 with batch-norm statistics calibrated on the data → 0.30–0.40 after 5 epochs → ~0.6 after
15–20). The logged `agree_last_epoch` — the share of images whose cluster this epoch matches last epoch's
label (1.0 in the first epoch, which has no earlier labels) — stays at 0.1–0.25 for the K = 10 head, barely
above chance (1/K). At initialisation two independent draws of an image's clustering feature f_i (each the mean
of two augmented views' projections) have a mean cosine of only 0.14, so an image's label is decided by its
augmentation, not by its content. CoKe's published runs give the labels hundreds of epochs of hundreds of steps
each to become meaningful. Tried on digits (10 epochs, B = 64): α = 1, τ = 0.1, η/10, no output BN, and the
official code's extra predictor path; none made the labels consistent (agreement ≤ 0.2 in every case).

The near-random labels are *not* what costs the features, though we long thought so: with α = 0 — no label
term at all, only the swapped soft targets against C_prev — kNN is no better (digits, 20 epochs, B = 256, three
seeds, 2026-11-23: 0.504 ± 0.052 against 0.463 ± 0.042 for α = 0.2 and 0.450 ± 0.104 for α = 1; untrained
0.883), nor with τ = 0.1 (0.544), a single K = 10 head (0.541) or a 4× smaller learning rate (0.480); without
the output BN the K = 10 head uses 5 of its 10 clusters (benchmarks/results_balancing.md, "CoKe ablation").
Prototypes that move slowly (C_prev moved 10% of the way to this epoch's centres instead of replaced) and
sharper soft targets (at τ/2) — two throw-away tests — were no better either. Only a softer temperature moves
kNN (α = 0.2, three seeds, 2026-11-23: τ = 0.2 → 0.602, τ = 0.5 → 0.762), without reaching the untrained network
and without better clusters (NMI 0.17–0.22): smaller gradients, we read, change the network less rather than
better. The two views of an image pick the same centre for only 13–31% of a batch while each view's prediction
is confident, so the network commits to clusters its augmentation decides; milder crops (`--crop-scale 0.3 1`,
as CoKe's CIFAR code) raise kNN to 0.585 ± 0.030, still below the untrained network. What degrades the features
at this budget is not known.

On CIFAR-10 with ResNet-18 the temperature matters far more, and a softer one is genuinely better (one H100,
20 epochs, B = 512, seed 0, 2026-11-23): kNN 0.286 at τ = 0.05 (the default, METHODS.md's), 0.374 at 0.2,
0.538 at 0.5 and 0.500 at 1.0, against 0.336 for the untrained network; NMI of the K = 10 head 0.107, 0.151,
0.274, 0.227 (untrained k-means 0.086). At τ = 0.5 CoKe learns features and clusters well above random ones —
still below SwAV's kNN 0.599 at the same budget — and its labels settle: agreement with the previous epoch
0.20 → 0.48 → 0.61 → 0.73 at epochs 2 / 5 / 10 / 20, against 0.10 → 0.12 → 0.12 → 0.23 at τ = 0.05.
α = 0 was again no better (0.268). With the small ConvNet on the CPU (CIFAR-10, 4 epochs, B = 256, three
seeds) τ = 0.5 gives kNN 0.458 ± 0.008 against 0.309 ± 0.003 at τ = 0.05 and 0.436 ± 0.003 untrained.
A longer budget does not bring τ = 0.05 round, at least on digits: over 200 epochs (1,000 steps at B = 256,
ten times the budget above; three seeds, CPU, 2026-11-24) kNN fell further, to 0.331 ± 0.116, its labels never
settled (agreement 0.11–0.20 at the end; chance 0.10) and every seed went through epochs with nearly each
batch in one cluster (lowest per-batch H/log K 0.03–0.12; one seed ended with 2 of 10 clusters empty). At
τ = 0.5 the labels settled (agreement 0.70), the K = 10 head's clusters reached ACC 0.687 / NMI 0.622 (k-means
on the untrained network: 0.523 / 0.507) and kNN stayed level with the untrained network (0.876 against
0.883) (benchmarks/results_balancing.md, "Ten times the budget"). The default stays the paper's τ = 0.05
(METHODS.md): whether it wins at the paper's 400 CIFAR-10 epochs of 390 steps is not measured; in every budget
measured here `--set temperature=0.5` learned better.

The augmentation, not the clustering, is what randomises the labels (measured on digits, seed 0, 2026-11-22,
third session, with throw-away scripts, not the library): k-means (K = 10) of the *random* network's backbone
features finds the classes on un-augmented images (NMI 0.57) but not on augmented ones (NMI 0.05, and 0.02
between two augmentation draws of the same images), and so the K = 10 head's labels agree with the previous
epoch's no more than chance also after undoing permutations (NMI between consecutive epochs' labels 0.02–0.04
over 10 epochs, B = 64). Feeding the online clustering the projections of the *un-augmented* images (one extra
forward pass without gradient; everything else unchanged) made the labels consistent — agreement 0.53 and
NMI between epochs 0.46 by epoch 10 — and raised kNN from 0.38 to 0.58 (linear 0.96, NMI 0.28), still below
the untrained network's 0.89. On CIFAR-10 (convnet, 4 epochs, B = 256) the same variant did not help: kNN
0.314 against 0.307, NMI between consecutive epochs' labels 0.16–0.21; there even the random network's
clusters of clean images carry little of the classes (NMI 0.09), which may be why. The variant departs from the
paper, which clusters the training views, and is not an option here: on this evidence the remedy is the
paper's budget (hundreds of epochs), which needs a GPU. With ResNet-18 on one H100 (CIFAR-10, B = 512, 20
epochs, 2026-11-22) the K = 10 head's agreement rose from 0.10 to 0.23 and kNN ended at 0.286 against the
untrained network's 0.336 (benchmarks/results_balancing.md); the paper's 400 epochs have not been run.

How much the duals do is measured, not assumed: every step also reports the tracked head's choice with ρ = 0
(`assignments_without_rule`; history's `occupancy_without_rule`). On digits (20 epochs, B = 256, three seeds,
2026-11-23) it is within 0.05 of the dual-balanced occupancy in every epoch — the output batch norm, not the
duals, keeps the batch spread here. On CIFAR-10 (convnet, 4 epochs, B = 256, three seeds, 2026-11-23) the duals
do more: 0.05–0.10 of H/log K in the first two training epochs, 0.03 at the end. Without that batch norm the
projections collapse to one direction and the duals pass whole batches from cluster to cluster
(benchmarks/results_balancing.md, "Balanced by the rule"). And
the duals can unbalance: with milder crops (`--crop-scale 0.3 1`) one seed's largest dual grew to ≈ 0.3 and its
last epoch put 61% of the images into one cluster, while the plain argmax of the same steps stayed at
H/log K 0.99 ("Milder crops").

DDP: the features and indices are gathered (no gradient) and every rank runs the identical clustering on
the global batch, so duals, centres and labels stay the same on all ranks without any broadcast.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from .. import distributed
from ..balancing import coke_assign, coke_center_step, coke_dual_step
from ..models import mlp
from .base import Method, StepOutput, adaptive_num_clusters


@dataclass
class CoKeOptions:
    num_clusters: tuple[int, ...] = (10, 20, 30, 40, 50, 60, 70, 80, 90, 100)  # K per head (CIFAR default), capped
    ratio: float = 0.9  # minimum cluster size γ = ratio/K (ImageNet: 0.4)
    dual_lr: float = 0.1  # η of a K = 10 head; a head of K clusters uses η·K/10 (see the module docstring)
    temperature: float = 0.05  # τ of the logits ẑ·C_prev/τ (the paper's; 0.5 learned better in every budget run here)
    alpha: float = 0.2  # weight of last epoch's hard label in the target; 1 = CE to that label alone (still both
    # views' mean clustered and τ = 0.05; METHODS.md's single-view variant also clusters one view, at τ = 0.1)
    bootstrap_epoch: bool = True  # epoch 0 at learning rate 0, clustering only
    seed_from_batch: bool = True  # centres start at first-batch features (False: random directions, as the paper)
    proj_hidden: int = 2048
    proj_dim: int = 128
    proj_last_bn: bool = True  # BN at the projector's output, as the official code


class CoKe(Method):
    name = "coke"
    Options = CoKeOptions

    def __init__(self, backbone, options: CoKeOptions, context):
        super().__init__(backbone, options, context)
        # The official projector ends in a batch norm: every output dimension is re-centred over the batch, so
        # the features cannot all become the same vector — the collapse the soft targets would otherwise allow.
        self.projector = mlp(backbone.feature_dim, options.proj_hidden, options.proj_dim, last_bn=options.proj_last_bn)
        # Never more clusters than the data can fill; duplicates after capping would be identical heads.
        capped = [adaptive_num_clusters(k, context.num_train, context.num_classes) for k in options.num_clusters]
        self.ks = list(dict.fromkeys(capped))
        for h, k in enumerate(self.ks):
            centers = F.normalize(torch.randn(k, options.proj_dim), dim=1)
            self.register_buffer(f"centers_prev_{h}", centers.clone())  # C_prev: the loss's prototypes
            self.register_buffer(f"centers_cur_{h}", centers.clone())  # C_cur: built online this epoch
            self.register_buffer(f"duals_{h}", torch.zeros(k))  # ρ ≥ 0
            self.register_buffer(f"counts_{h}", torch.zeros(k))  # N_k this epoch
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))  # centres seeded from data yet?
        # Last assignment of every training image, per head; −1 = never clustered yet.
        self.register_buffer("labels", torch.full((len(self.ks), context.num_train), -1, dtype=torch.long))
        # Occupancy is tracked on the K = C head when there is one (else the first). That head also answers
        # `assign` for evaluation (Method.has_class_sized_head); without one evaluation runs k-means (METHODS.md §5).
        self.tracked = self.ks.index(context.num_classes) if context.num_classes in self.ks else 0
        self.num_clusters = self.ks[self.tracked]

    def head(self, h: int) -> dict[str, torch.Tensor]:
        return {name: getattr(self, f"{name}_{h}") for name in ("centers_prev", "centers_cur", "duals", "counts")}

    @torch.no_grad()
    def seed_centers(self, feats: torch.Tensor) -> None:
        """Start every head's centres at features of the first global batch (k-means' random-point init).

        The paper starts from random directions. In 128-d those have cosine ≈ 0 to every feature, while the
        first cluster hit moves onto the data (cosine ≈ 1), so the others can only win through their duals.
        When B < K, points are reused with a tiny fixed perturbation (identical on every rank) to break ties.
        """
        generator = torch.Generator().manual_seed(0)
        for h, k in enumerate(self.ks):
            rows = feats[torch.arange(k, device=feats.device) % len(feats)]
            jitter = 1e-3 * torch.randn(rows.shape, generator=generator).to(rows.device)
            centers = F.normalize(rows + jitter * (torch.arange(k, device=rows.device) >= len(feats))[:, None], dim=1)
            self.head(h)["centers_cur"].copy_(centers)
            self.head(h)["centers_prev"].copy_(centers)
        self.initialized.fill_(True)

    def training_step(self, views, indices):
        z1, z2 = (self.projector(self.backbone(v)) for v in views[:2])
        opt = self.options
        with torch.autocast(z1.device.type, enabled=False):  # losses and cluster statistics in float32
            z1, z2 = F.normalize(z1.float(), dim=1), F.normalize(z2.float(), dim=1)
            with torch.no_grad():
                # The clustering runs on the *global* batch so every rank updates identical state.
                feats = distributed.gather_no_grad((z1 + z2) / 2)
                all_indices = distributed.gather_no_grad(indices.to(z1.device))
                start = distributed.global_offset(len(indices))
                local = slice(start, start + len(indices))  # this rank's rows of the global batch
                if opt.seed_from_batch and not bool(self.initialized):
                    self.seed_centers(feats)
            loss, logs = 0.0, {}
            for h, k in enumerate(self.ks):
                state = self.head(h)
                with torch.no_grad():
                    y = coke_assign(feats, state["centers_cur"], state["duals"])
                    if h == self.tracked:  # the same choice with ρ = 0, before this batch moves the centres
                        without_duals = coke_assign(feats[local], state["centers_cur"], torch.zeros_like(state["duals"]))
                    one_hot = F.one_hot(y, k).float()
                    batch_counts = one_hot.sum(dim=0)
                    previous = self.labels[h, indices]  # read before this batch overwrites them
                    # Images without a label yet (epoch 0, or dropped by drop_last so far) use today's.
                    previous = torch.where(previous >= 0, previous, y[local])
                    state["duals"].copy_(coke_dual_step(state["duals"], batch_counts, len(y), opt.ratio / k,
                                                        opt.dual_lr * k / 10))
                    centers, counts = coke_center_step(state["centers_cur"], state["counts"], one_hot.t() @ feats,
                                                       batch_counts)
                    state["centers_cur"].copy_(centers)
                    state["counts"].copy_(counts)
                    self.labels[h, all_indices] = y
                logits1 = z1 @ state["centers_prev"].t() / opt.temperature
                logits2 = z2 @ state["centers_prev"].t() / opt.temperature
                loss = loss + coke_swapped_loss(logits1, logits2, previous, opt.alpha)
                if h == self.tracked:
                    assignments = y[local]
                    logs["agree_last_epoch"] = (y[local] == previous).float().mean()
            loss = loss / len(self.ks)
        logs["max_dual"] = self.head(self.tracked)["duals"].max()
        return StepOutput(loss=loss, logs=logs, assignments=assignments, assignments_without_rule=without_duals)

    def on_epoch_end(self, epoch, trainer):
        for h in range(len(self.ks)):
            state = self.head(h)
            state["centers_prev"].copy_(state["centers_cur"])  # C_prev ← C_cur
            state["counts"].zero_()  # the running means restart every epoch

    def lr_scale(self, epoch):
        return 0.0 if epoch == 0 and self.options.bootstrap_epoch else 1.0

    def extra_info(self):
        return {"num_clusters_used": self.ks, "tracked_k": self.num_clusters,
                "dual_lr_per_head": [self.options.dual_lr * k / 10 for k in self.ks]}

    @torch.no_grad()
    def assign_clusters(self, images):
        """argmax cosine to C_prev of the head with K = C."""
        z = self.projector(self.backbone(images))
        with torch.autocast(z.device.type, enabled=False):
            return (F.normalize(z.float(), dim=1) @ getattr(self, f"centers_prev_{self.tracked}").t()).argmax(dim=1)


def coke_swapped_loss(logits1, logits2, labels, alpha: float):
    """½ [CE(q_1, logits_1) + CE(q_2, logits_2)], q_1 = α onehot(label) + (1 − α) softmax(logits_2) (sg)."""
    with torch.no_grad():
        hard = F.one_hot(labels, logits1.shape[1]).float()
        q1 = alpha * hard + (1 - alpha) * logits2.softmax(dim=1)
        q2 = alpha * hard + (1 - alpha) * logits1.softmax(dim=1)
    ce1 = -(q1 * logits1.log_softmax(dim=1)).sum(dim=1).mean()
    ce2 = -(q2 * logits2.log_softmax(dim=1)).sum(dim=1).mean()
    return (ce1 + ce2) / 2
