"""The balancing rules of METHODS.md §4 as pure tensor functions: no modules, no state.

Every clustering method scores B embeddings against K unit prototypes, s_ik = ẑ_i·c_k ∈ [-1, 1], and turns
the scores into a target assignment q_i that the *other* view is trained to predict. Left alone (§4.1) the
cheapest way to predict your partner's cluster is to put everybody in the same cluster: collapse. The rules
below are the different answers to "how do we keep q balanced?". They take plain tensors and return plain
tensors, so you can call them on a toy 6×3 score matrix in a notebook and watch what they do:

    naive_targets         q = softmax(s/τ)                                  (§4.1, no balancing)
    sinkhorn              q = Sinkhorn-Knopp projection of exp(S/ε)         (§4.2, SwAV: per-batch equipartition)
    excb_update_sizes     r ← m·r + (1−m)·f                                 (§4.5, ExCB: running cluster sizes)
    excb_relative_sizes   ρ_k = K·r_k / Σ_j r_j
    excb_balance_scores   z' = 1 − (1−z)·ρ  (ρ<1)  or  (1+z)/ρ − 1  (ρ>1)   (§4.5, ExCB: move the scores)

Everything is computed in float32 whatever the input dtype (bf16 cosines divided by ε = 0.05 lose a whole
digit, and exp(1/0.05) overflows float16). The one rule that looks across the batch, Sinkhorn, sums its
columns with `distributed.all_reduce_sum`, so under DDP it balances the *global* batch: two ranks of B/2
produce exactly the targets one rank of B produces.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor

from . import distributed

__all__ = ["naive_targets", "sinkhorn", "excb_update_sizes", "excb_relative_sizes", "excb_balance_scores"]


# --- §4.1 Naive: no balancing --------------------------------------------------------------------------

def naive_targets(scores: Tensor, temperature: float) -> Tensor:
    """q_ik = exp(s_ik/τ) / Σ_j exp(s_ij/τ): each row on its own, nothing couples the rows.

    Because nothing looks at the other rows, nothing stops every row from choosing the same cluster —
    which is exactly what the swapped-prediction loss rewards. Gradient is not blocked here; callers pass
    detached scores (the target is a stop-gradient).
    """
    return torch.softmax(scores.float() / temperature, dim=-1)


# --- §4.2 SwAV: Sinkhorn-Knopp equipartition ----------------------------------------------------------

@torch.no_grad()
def sinkhorn(scores: Tensor, epsilon: float = 0.05, iterations: int = 3, queue_scores: Tensor | None = None) -> Tensor:
    """Soft assignments whose columns share the batch equally: each cluster gets B/K of the mass.

    Start from Q = exp(S/ε) over all N rows (this rank's B_local batch rows, the other ranks' rows, and the
    optional queue rows; its overall scale does not matter). Then alternate, `iterations` times,

        columns:  Q_·k ← Q_·k / (K · Σ_i Q_ik)      every cluster holds 1/K of the mass
        rows:     Q_i· ← Q_i· / (N · Σ_k Q_ik)      every image holds 1/N of the mass

    and return the batch rows rescaled so each row q_i sums to 1. Because the last step is a row
    step, rows sum to 1 exactly and columns to ≈ N/K (closer with more iterations; SwAV uses 3). Small ε
    means sharp, nearly one-hot rows; large ε spreads each row over many clusters.

    Args:
        scores: (B_local, K) cosines of this rank's images, any float dtype.
        epsilon: entropic regularisation ε (0.05 in SwAV).
        iterations: alternating normalisations (3 in SwAV).
        queue_scores: optional (Q, K) scores of queued embeddings from earlier batches. They make the
            column constraint cover N = B + Q rows, so it is far less noisy when B ≪ K; their rows are
            dropped from the output. The queue must hold the same rows on every rank (it stores gathered
            embeddings), so its column sums are counted once, not all-reduced.

    Returns:
        (B_local, K) float32 targets, rows summing to 1. No gradient.

    Numerics: float32 throughout, and in log space: we keep L = log Q and normalise with logsumexp (which
    subtracts the maximum before every exp). exp(1/0.05) = 5e8 overflows float16 — the classic source of NaN
    targets — and with a small ε even float32 exp(S/ε) over- or underflows; log space never does.
    """
    if scores.dim() != 2 or not epsilon > 0 or iterations < 0:  # ε = 0 would give NaN targets, not an error
        raise ValueError(f"sinkhorn needs (B, K) scores, epsilon > 0 and iterations >= 0; got scores of shape "
                         f"{tuple(scores.shape)}, epsilon={epsilon}, iterations={iterations}")
    local = scores.shape[0]
    logits = scores.float() / epsilon
    if queue_scores is not None:
        logits = torch.cat([logits, queue_scores.float() / epsilon])
    # (torch.full, not torch.tensor: a number copied from host memory would make the host wait for the GPU)
    num_rows = distributed.all_reduce_sum(torch.full((), float(local), device=logits.device)) + (logits.shape[0] - local)
    log_k, log_n = math.log(logits.shape[1]), torch.log(num_rows)

    def column_logsumexp(L: Tensor) -> Tensor:
        """log Σ_i exp(L_ik) over the rows of *all* ranks (batch rows are split over ranks: sum them
        everywhere) and the queue rows (replicated on every rank: count them once)."""
        batch, queue = L[:local], L[local:]
        peak = distributed.gather_no_grad(batch.max(dim=0, keepdim=True).values).max(dim=0).values
        if queue.shape[0]:
            peak = torch.maximum(peak, queue.max(dim=0).values)
        total = distributed.all_reduce_sum(torch.exp(batch - peak).sum(dim=0)) + torch.exp(queue - peak).sum(dim=0)
        return peak + torch.log(total)

    L = logits  # log Q, up to a constant that the first normalisation removes
    for _ in range(iterations):
        L = L - column_logsumexp(L) - log_k  # each column sums to 1/K
        L = L - torch.logsumexp(L, dim=1, keepdim=True) - log_n  # each row sums to 1/N
    return torch.softmax(L[:local], dim=1)  # drop the queue rows; rows sum to 1 (after a row step: just ×N)


# --- §4.5 ExCB: explicit balancing from an online size estimate ----------------------------------------

def excb_update_sizes(sizes: Tensor, batch_fractions: Tensor, momentum: float = 0.999) -> Tensor:
    """r ← m·r + (1 − m)·f: an exponential moving average of the fraction of images in each cluster.

    `batch_fractions` f_k = share of this step's (global, post-balancing) hard assignments in cluster k, so
    f sums to 1 and so does r (if it started at the uniform 1/K). m = 0.999 remembers ~1/(1−m) = 1000 steps.
    Returns a new float32 tensor; the caller copies it into its buffer.
    """
    return momentum * sizes.float() + (1.0 - momentum) * batch_fractions.float()


def excb_relative_sizes(sizes: Tensor, eps: float = 1e-8) -> Tensor:
    """ρ_k = K·r_k / Σ_j r_j: 1 means exactly average size, 0.5 half the average, 2 twice it. Σ_k ρ_k = K.

    ρ is floored at `eps` so that a cluster nobody has visited yet (r_k = 0) does not divide by zero in
    `excb_balance_scores` (where ρ → 0 simply means "as attractive as possible").
    """
    r = sizes.float()
    return (r.shape[-1] * r / r.sum(dim=-1, keepdim=True).clamp_min(eps)).clamp_min(eps)


def excb_balance_scores(scores: Tensor, relative_sizes: Tensor, boost: float = 1.01) -> Tensor:
    """Move every cosine z_ik towards +1 if cluster k is too small, towards −1 if it is too big.

        ρ_k < 1 (too small):  z' = 1 − (1 − z)·ρ_k     the distance to +1 shrinks by the factor ρ_k
        ρ_k > 1 (too big):    z' = (1 + z)/ρ_k − 1     the distance to −1 shrinks by the factor 1/ρ_k
        ρ_k = 1:              z' = z                   (both formulas agree)

    Both maps keep z' in [-1, 1] and keep the order of the images within a cluster (they are increasing in
    z), so they only change *which cluster wins*, never who is most typical of a cluster. Then the top-1
    entry of each row is multiplied by `boost` (1.01, "boost the choice": a slightly sharper target) and the
    result is clamped to [-1, 1]. (For the rare row whose best cosine is negative, ×1.01 lowers it a little and
    can even hand the win to a runner-up within 1%, e.g. [−0.500, −0.502] → [−0.505, −0.502]; we follow the
    paper's rule as stated.)

    Args:
        scores: (B, K) teacher cosines (never the student's).
        relative_sizes: (K,) ρ from `excb_relative_sizes`.
    Returns:
        (B, K) float32 balanced scores; apply softmax(z'/τ_t) for the target.
    """
    z = scores.float()
    rho = relative_sizes.float().to(z.device)
    z = torch.where(rho < 1, 1 - (1 - z) * rho, (1 + z) / rho - 1)
    top = z.argmax(dim=-1, keepdim=True)
    z = z.scatter(-1, top, z.gather(-1, top) * boost)
    return z.clamp(-1.0, 1.0)


# --- CoKe: online constrained k-means ---
# The three steps of CoKe's online clustering (§4.4), run on every (global) batch by methods/coke.py:
#     coke_assign        y_i = argmax_k (f_i·c_k + ρ_k)
#     coke_dual_step     ρ_k ← max(0, ρ_k + η(γ − n_k/B)),  γ = ratio/K
#     coke_center_step   c_k ← normalise(c_k·N_old/N_new + Σ_{y_i=k} f_i / N_new)
__all__ += ["coke_assign", "coke_dual_step", "coke_center_step"]


def coke_assign(features: Tensor, centers: Tensor, duals: Tensor) -> Tensor:
    """CoKe's online assignment with the dual variables as per-cluster bonuses:

        y_i = argmax_k ( f_i·c_k + ρ_k )

    centers (K, d) are unit rows; features (B, d) are at most unit length (CoKe's two-view f_i, the mean of the
    two views' unit projections, has norm cos(θ_i/2) for views θ_i apart, and is not renormalised, as in the
    official code), so f_i·c_k is a cosine scaled by that norm; duals (K,) ≥ 0. Without ρ this is plain
    nearest-centre k-means; ρ_k > 0 makes an under-filled cluster k more attractive by ρ_k in those units.
    Computed in float32 (under bf16 two cosines 0.004 apart can tie). Returns (B,) int64.
    """
    with torch.autocast(features.device.type, enabled=False):
        return (features.float() @ centers.float().t() + duals.float()).argmax(dim=1)


def coke_dual_step(duals: Tensor, counts: Tensor, batch_size: int, min_fraction: float, step_size: float) -> Tensor:
    """One projected dual-ascent step on the constraint "every cluster holds at least a fraction γ":

        ρ_k ← max(0, ρ_k + η (γ − n_k/B)),        γ = min_fraction = ratio/K,  η = step_size

    n_k = counts[k] = images of the batch assigned to k. A cluster below its minimum share (n_k/B < γ)
    gains a bonus; one above it loses bonus, but never below 0 — the constraint is an inequality, so big
    clusters stay allowed (unlike SwAV's exact equipartition) and only small ones are propped up.
    Returns a new (K,) float32 tensor; the inputs are not modified.
    """
    shares = counts.float() / batch_size
    return (duals.float() + step_size * (min_fraction - shares)).clamp_min(0.0)


def coke_center_step(centers: Tensor, counts: Tensor, feature_sums: Tensor,
                     batch_counts: Tensor) -> tuple[Tensor, Tensor]:
    """Running mean of this epoch's members, re-projected onto the sphere, for the clusters hit in the batch:

        N_k^new = N_k^old + n_k
        c_k ← normalise( c_k · N_k^old/N_k^new + Σ_{i: y_i=k} f_i / N_k^new )      (only where n_k > 0)

    centers (K, d) unit rows, counts (K,) = N^old (this epoch so far), feature_sums (K, d) = Σ_{y_i=k} f_i and
    batch_counts (K,) = n_k of this batch. With N^old = 0 the old centre gets weight 0, so the first batch
    of an epoch *replaces* a hit centre by its members' mean direction; counts are reset every epoch, so a
    centre ends the epoch as (approximately) the mean direction of that epoch's members. Clusters not hit
    keep their centre. Returns new (centers, counts); the inputs are not modified.
    """
    new_counts = counts.float() + batch_counts.float()
    hit = batch_counts > 0
    safe = new_counts.clamp_min(1.0)[:, None]  # clusters not hit are discarded below; avoid 0/0
    mean = centers.float() * (counts.float()[:, None] / safe) + feature_sums.float() / safe
    new_centers = torch.where(hit[:, None], torch.nn.functional.normalize(mean, dim=1), centers.float())
    return new_centers, new_counts
