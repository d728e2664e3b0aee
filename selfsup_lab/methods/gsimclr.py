"""G-SimCLR (Chakraborty et al., 2020): SimCLR on batches composed from distinct pseudo-classes (METHODS.md §2).

The loss is SimCLR's NT-Xent, unchanged:

    L = 1/2B Σ_i −log( exp(ẑ_i·ẑ_p(i)/τ) / Σ_{j≠i} exp(ẑ_i·ẑ_j/τ) ).

Only *which images share a batch* changes. In a random batch over C balanced classes about 1/C of anchor
i's negatives j are of its own class: the loss pushes them away although they should stay close (false
negatives). G-SimCLR first assigns pseudo-labels without supervision and then fills every batch with at
most one image per pseudo-class, so that fewer same-class images meet:

    1. pseudo-labels: k-means (K_pseudo = B) on the codes of a denoising autoencoder (the original), or
       on the current encoder's features, refreshed every N epochs (ours);
    2. batches: at most one image per pseudo-class while they last (`samplers.GuidedBatches`);
    3. train SimCLR on those batches.

Steps 1–2 live in `selfsup_lab/samplers.py`, because they work for any method
(`--set sampler=guided`); this file only says "SimCLR, with the guided sampler by default": its options are
SimCLR's plus the sampler's (`GuidedOptions`), and `--set sampler=random` turns it back into SimCLR.

What it is for is measurable: the trainer logs `same_class_neg_rate` per epoch (and `pseudo_nmi`, how well
the pseudo-labels match the classes). Read it next to its floor (B/C − 1)/(B − 1): at B ≫ C no batch
composition can remove many false negatives (`analysis.min_same_class_negative_rate`).
"""
from __future__ import annotations

from dataclasses import dataclass

from ..samplers import GuidedOptions
from .simclr import SimCLR, SimCLROptions


@dataclass
class GSimCLROptions(GuidedOptions, SimCLROptions):
    """SimCLR's options (temperature, projector) plus the guided sampler's (pseudo_labels, num_pseudo, ...)."""


class GSimCLR(SimCLR):
    name = "gsimclr"
    Options = GSimCLROptions  # GuidedOptions inside: the trainer's `sampler="auto"` picks the guided sampler
