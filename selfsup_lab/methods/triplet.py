"""Truncated triplet loss (Wang et al., 2021): BYOL plus one negative "deputy" per anchor (METHODS.md §3).

BYOL has no negatives, so nothing tells two classes apart (under-clustering); SimCLR pushes *every* other
image away, its own class included (over-clustering). The truncated triplet keeps one negative per anchor,
chosen to be the closest negative that is probably of *another* class. With p_i the online prediction of
view 1, t_j the target projection of view 2 (both normalised, t stop-gradient) and d(a, b) = −2 a·b:

    d_ap(i) = d(p_i, t_i)                                     positive distance
    sort the B − 1 negatives t_j (j ≠ i, global batch) by p_i·t_j, most similar first
    d_an(i) = mean of d(p_i, t_j) over the ranks r_lo..r_hi  (1-based)   the deputy
    ℓ_i = max(0, γ·d_ap − d_an + margin),  γ = 2, margin = 100

The margin is so large that the hinge never switches off (γ·d_ap − d_an ≥ −6), so we drop it and write the
linear loss it equals up to the constant 100:

    ℓ_i = −4·cos(p_i, t_i) + 2·mean_{r_lo ≤ r ≤ r_hi} cos(p_i, t_(r))

symmetrised over the two views. Gradient flows only into the online branch (through p_i); the window is
re-chosen from the sorted similarities at every step.

Where to put the window (option `deputy`):
  * "window"    — the official fixed ranks [2, 10], tuned for ImageNet batches of 196 over 1000 classes;
  * "rank-rule" — our reconstruction of the paper's Bernoulli argument (`rank_window`): the number of
                  negatives sharing the anchor's class is ~ Binomial(B − 1, 1/C); start the window at the
                  first rank that is of another class with probability ≥ 1 − ε. C (`expected_classes`) is a
                  prior the user states, never read from labels;
  * "median"    — the median negative (an earlier variant of the paper).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from .. import distributed
from ..analysis import binomial_pmf
from ..errors import UserError
from .base import StepOutput
from .byol import BYOL, BYOLOptions


@dataclass
class TripletOptions(BYOLOptions):
    deputy: str = "window"  # window | rank-rule | median
    r_lo: int = 2  # "window": first rank of the deputy window (1-based, the official value)
    r_hi: int = 10  # "window": last rank
    expected_classes: int = 10  # "rank-rule": the prior C (10 for CIFAR-10 / digits, 1000 for ImageNet)
    epsilon: float = 0.05  # "rank-rule": accepted chance that rank r_lo is still of the anchor's class
    window_width: int = 9  # "rank-rule": ranks in the window (9, as in the official [2, 10])
    gamma: float = 2.0  # weight γ of the positive distance


def rank_window(batch_size: int, expected_classes: int, epsilon: float = 0.05, width: int = 9) -> tuple[int, int]:
    """The rank rule (our reconstruction): r_lo = smallest r with P(X ≥ r) ≤ ε, X ~ Binomial(B − 1, 1/C).

    If the X same-class negatives were the most similar ones, the negative at rank r is of another class
    exactly when X < r, so rank r_lo is a true negative with probability ≥ 1 − ε. The window is the `width`
    ranks from r_lo, clipped to the B − 1 negatives that exist. B = 196, C = 1000 gives the official
    [2, 10]; B = 512, C = 10 gives about [63, 71] — a CIFAR-10 batch holds ~51 images of each class.
    """
    if batch_size < 2 or expected_classes < 1 or not 0 < epsilon < 1 or width < 1:
        raise UserError("rank_window needs batch_size ≥ 2, expected_classes ≥ 1, 0 < epsilon < 1, width ≥ 1")
    n, p = batch_size - 1, 1.0 / expected_classes
    if p >= 1.0:  # one class: every negative shares it, no rank is safe — use the last one
        return n, n

    # P(X ≥ r) for r = 0..n, summed from the top, small terms first: accurate however small ε is, where
    # 1 − P(X < r) would stop at ~1e-16. It falls as r grows; r_lo is the first r ≥ 1 where it is ≤ ε.
    tail = np.cumsum(binomial_pmf(n, p)[::-1])[::-1]
    safe = np.flatnonzero(tail[1:] <= epsilon)
    r_lo = int(safe[0]) + 1 if safe.size else n  # n when even P(X ≥ n) > ε (a tiny batch): the last rank
    return r_lo, min(r_lo + width - 1, n)


def deputy_window(options: TripletOptions, batch_size: int) -> tuple[int, int]:
    """The 1-based rank window [r_lo, r_hi] used for a global batch of `batch_size` images."""
    if batch_size < 2:
        raise UserError(f"the truncated triplet needs at least 2 images per batch (an anchor and a negative), "
                        f"got {batch_size}")
    negatives = batch_size - 1
    if options.deputy == "window":
        r_lo, r_hi = options.r_lo, options.r_hi
    elif options.deputy == "rank-rule":
        r_lo, r_hi = rank_window(batch_size, options.expected_classes, options.epsilon, options.window_width)
    elif options.deputy == "median":
        r_lo = r_hi = (negatives + 1) // 2
    else:
        raise UserError(f"unknown deputy '{options.deputy}'; choose window, rank-rule or median")
    if not 1 <= r_lo <= r_hi:
        raise UserError(f"the deputy window needs 1 ≤ r_lo ≤ r_hi, got [{r_lo}, {r_hi}]")
    # A small batch may not have r_hi negatives: clip (and keep at least one rank).
    return min(r_lo, negatives), min(r_hi, negatives)


def truncated_triplet_loss(p: torch.Tensor, t: torch.Tensor, r_lo: int, r_hi: int, gamma: float = 2.0):
    """Mean over this rank's anchors of −2γ·cos(p_i, t_i) + 2·mean_window cos(p_i, t_neg).

    p: (b, d) online predictions of this rank; t: (b, d) target projections of the other view (no grad).
    The negatives come from the global batch. Returns (loss, positive cosines, deputy cosines).
    """
    p, t = F.normalize(p.float(), dim=1), F.normalize(t.float(), dim=1)
    local = p.shape[0]
    offset = distributed.global_offset(local)
    targets = distributed.gather_no_grad(t.detach())  # (B, d): the target is stop-gradient anyway
    if not 1 <= r_lo <= r_hi <= targets.shape[0] - 1:  # else the anchor itself (−inf) or nothing would be ranked
        raise ValueError(f"the deputy window [{r_lo}, {r_hi}] must satisfy 1 ≤ r_lo ≤ r_hi ≤ {targets.shape[0] - 1}, "
                         f"the number of negatives in a batch of {targets.shape[0]}; deputy_window gives a valid one")
    with torch.autocast(p.device.type, enabled=False):  # float32 cosines under bf16 autocast: they are ranked
        sims = p @ targets.t()  # (b, B) cosines
    rows = torch.arange(local, device=p.device)
    positive = sims[rows, rows + offset]
    # Exclude the anchor's own target, then keep the r_hi most similar negatives in order.
    negatives = sims.index_put((rows, rows + offset), torch.full((), float("-inf"), device=p.device))
    ranked = negatives.topk(r_hi, dim=1).values  # (b, r_hi), most similar first
    deputy = ranked[:, r_lo - 1 : r_hi].mean(dim=1)
    # γ·d_ap − d_an with d(a, b) = −2 a·b.
    loss = gamma * (-2.0 * positive) - (-2.0 * deputy)
    return loss.mean(), positive.detach(), deputy.detach()


class TruncatedTriplet(BYOL):
    name = "triplet"
    Options = TripletOptions

    def __init__(self, backbone, options: TripletOptions, context):
        super().__init__(backbone, options, context)
        self.window = deputy_window(options, context.batch_size)  # fails early on a bad option

    def training_step(self, views, indices):
        p1, p2, t1, t2 = self.predictions_and_targets(views)
        batch = p1.shape[0] * distributed.world_size()
        r_lo, r_hi = self.window if batch == self.context.batch_size else deputy_window(self.options, batch)
        loss12, pos12, dep12 = truncated_triplet_loss(p1, t2, r_lo, r_hi, self.options.gamma)
        loss21, pos21, dep21 = truncated_triplet_loss(p2, t1, r_lo, r_hi, self.options.gamma)
        logs = {"pos_cos": (pos12.mean() + pos21.mean()) / 2, "deputy_cos": (dep12.mean() + dep21.mean()) / 2,
                "deputy_r_lo": float(r_lo), "deputy_r_hi": float(r_hi), "ema_momentum": self.momentum}
        return StepOutput(loss=loss12 + loss21, logs=logs)

    def extra_info(self) -> dict:
        rule = {"window": "fixed window (official [2, 10])",
                "rank-rule": f"rank rule (our reconstruction): P(Binomial(B-1, 1/{self.options.expected_classes}) "
                             f">= r_lo) <= {self.options.epsilon}",
                "median": "median negative"}[self.options.deputy]
        return {"deputy_window": list(self.window), "deputy_rule": rule}
