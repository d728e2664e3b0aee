"""Batch samplers: which images share a batch (METHODS.md §2).

A contrastive loss treats every other image in the batch as a negative. In a random batch over C balanced
classes a fraction ≈ 1/C of those negatives share the anchor's class ("false negatives"). G-SimCLR composes
batches from *distinct pseudo-classes* instead, so that fewer same-class images meet in one batch.

Two samplers with one interface — `batches(epoch, generator) -> list[LongTensor]` and `len()`:

* `data.RandomBatches` — a random permutation cut into batches (the default for every method);
* `GuidedBatches` — each batch is filled in *rounds*; a round takes at most one image from each pseudo-class
  still holding images, largest first. While at least B pseudo-classes remain, a batch therefore holds B
  distinct pseudo-classes (the G-SimCLR rule); when they run out, later rounds fill the batch as evenly as
  the remaining classes allow. Members are reshuffled within their pseudo-class and the batch order is
  reshuffled every epoch. (The original keeps one fixed order for all epochs: then the same images always
  share a batch; reshuffling keeps the batches' composition rule but varies the company.)

Where the pseudo-labels come from (option `pseudo_labels`):

* "autoencoder" (the original): a small denoising autoencoder trained on the images (Gaussian input noise,
  MSE reconstruction); its latent code, average-pooled to 2×2, is clustered with K_pseudo = batch size;
* "encoder" (ours): the current backbone's features, re-clustered every `refresh_every` epochs (the first
  time on the untrained network, whose random conv features are already a weak prior);
* "oracle": the true labels — for analysis only (what would perfect pseudo-labels buy?), never a method.

Clustering is spherical k-means (`kmeans.py`, on mean-centred codes) rather than the original's Euclidean
k-means: same idea, and it runs on the training device.

Any method can use the guided sampler: `TrainConfig(sampler="guided", sampler_options={...})`, or on the
command line `--set sampler=guided sampler.pseudo_labels=encoder`. G-SimCLR picks it by default.

What to expect (and measure — `same_class_neg_rate` is written to history.jsonl for every run): with B
images over C balanced classes, no batch can do better than B/C images per class, so the same-class rate has
a floor of (B/C − 1)/(B − 1) (`analysis.min_same_class_negative_rate`). Guided batching can therefore remove
most false negatives only when B ≲ C (ImageNet: 1000 classes); at CIFAR-10 scale (B = 512, C = 10) even
perfect pseudo-labels lower the rate only from 0.100 to 0.098.
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, fields

import torch
import torch.nn as nn
import torch.nn.functional as F

from . import distributed
from .data import RandomBatches
from .errors import UserError

SAMPLERS = {
    "auto": "the method's choice: guided for gsimclr, random for the others",
    "random": "a random permutation cut into batches",
    "guided": "at most one image per pseudo-class per batch while they last (G-SimCLR)",
}


@dataclass
class GuidedOptions:
    pseudo_labels: str = "autoencoder"  # autoencoder (original) | encoder (ours) | oracle (true labels, analysis only)
    num_pseudo: int | None = None  # K_pseudo; None = the batch size, as in the original
    refresh_every: int = 5  # encoder: re-cluster the backbone's features every N epochs
    ae_epochs: int = 20  # autoencoder: training epochs over the training images
    ae_noise: float = 0.1  # autoencoder: std of the Gaussian input noise (images in [0, 1])
    ae_width: int = 32  # autoencoder: channels of the first conv layer
    kmeans_iters: int = 20


# --- composing batches --------------------------------------------------------------------------------

def guided_batches(pseudo_labels: torch.Tensor, batch_size: int, generator: torch.Generator,
                   drop_last: bool = True) -> list[torch.Tensor]:
    """Batches of indices in which a pseudo-class repeats only once fewer than `batch_size` classes remain.

    A batch is filled in rounds; each round takes one image from each of the (up to `need`) pseudo-classes
    with the most images left, ties broken at random. Taking the largest classes first makes the classes run
    out together, so the "all distinct" property lasts as many batches as possible.
    """
    labels = torch.as_tensor(pseudo_labels).long().cpu()
    n = labels.numel()
    perm = torch.randperm(n, generator=generator)
    if drop_last:
        # The n mod B images left out this epoch: a uniformly random few. (Left to the rounds below, they would
        # always be the largest pseudo-classes' last images.)
        perm = perm[: n - n % batch_size]
    # Sort the shuffled indices stably by class: members of each class become contiguous, in random order.
    order = perm[torch.sort(labels[perm], stable=True).indices]
    _, counts = torch.unique_consecutive(labels[order], return_counts=True)
    starts = torch.cumsum(counts, 0) - counts
    taken = torch.zeros_like(counts)

    num_batches = -(-perm.numel() // batch_size)
    batches = []
    for _ in range(num_batches):
        parts, need = [], batch_size
        while need > 0:
            left = counts - taken
            alive = (left > 0).nonzero().flatten()
            if alive.numel() == 0:
                break
            # Integer counts plus noise in [0, 1): sorts by size, breaks ties at random.
            key = left[alive].double() + torch.rand(alive.numel(), generator=generator, dtype=torch.float64)
            pick = alive[key.argsort(descending=True)[:need]]
            parts.append(order[starts[pick] + taken[pick]])
            taken[pick] += 1
            need -= pick.numel()
        batch = torch.cat(parts)
        batches.append(batch[torch.randperm(batch.numel(), generator=generator)])
    return [batches[i] for i in torch.randperm(len(batches), generator=generator).tolist()]


# --- where pseudo-labels come from ------------------------------------------------------------------------

class DenoisingAutoencoder(nn.Module):
    """Three stride-2 convs down to H/8, three transposed convs back up; the code is the pooled bottleneck."""

    def __init__(self, width: int = 32):
        super().__init__()
        w = width
        self.encoder = nn.Sequential(
            nn.Conv2d(3, w, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(w, 2 * w, 3, 2, 1), nn.ReLU(inplace=True),
            nn.Conv2d(2 * w, 2 * w, 3, 2, 1), nn.ReLU(inplace=True))
        self.decoder = nn.Sequential(
            nn.ConvTranspose2d(2 * w, 2 * w, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(2 * w, w, 4, 2, 1), nn.ReLU(inplace=True),
            nn.ConvTranspose2d(w, 3, 4, 2, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.decoder(self.encoder(x))
        return out if out.shape[-2:] == x.shape[-2:] else F.interpolate(out, size=x.shape[-2:], mode="bilinear")

    def code(self, x: torch.Tensor) -> torch.Tensor:
        # Pooling to 2×2 rather than 1×1 keeps a coarse layout (a "7" and an "L" have the same average).
        return F.adaptive_avg_pool2d(self.encoder(x), 2).flatten(1)


def autoencoder_codes(images_uint8: torch.Tensor, options: GuidedOptions, seed: int = 0,
                      batch_size: int = 256) -> torch.Tensor:
    """Train a denoising autoencoder (MSE between the clean image and the reconstruction of a noisy copy)
    on `images_uint8` (on their device) and return its pooled latent codes, (N, 8·width) float32."""
    device = images_uint8.device
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
        torch.manual_seed(seed)  # the weight initialisation; the caller's random stream is left untouched
        model = DenoisingAutoencoder(options.ae_width).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    n = images_uint8.shape[0]
    with torch.enable_grad():
        for _ in range(options.ae_epochs):
            for idx in torch.randperm(n, generator=generator, device=device).split(batch_size):
                clean = images_uint8[idx].float() / 255
                noisy = clean + options.ae_noise * torch.randn(clean.shape, generator=generator, device=device)
                loss = F.mse_loss(model(noisy), clean)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
    model.eval()
    with torch.no_grad():
        return torch.cat([model.code(images_uint8[i : i + 1024].float() / 255) for i in range(0, n, 1024)])


def cluster_codes(codes: torch.Tensor, k: int, iters: int = 20, seed: int = 0) -> torch.Tensor:
    """Spherical k-means (k-means++ seeding) on mean-centred codes; returns (N,) int64 labels on the CPU."""
    from .kmeans import spherical_kmeans

    x = codes.float() - codes.float().mean(dim=0)
    _, labels = spherical_kmeans(x, min(k, x.shape[0]), iters=iters, init="k-means++",
                                 generator=torch.Generator(device=x.device).manual_seed(seed))
    return labels.cpu()


# --- the sampler --------------------------------------------------------------------------------------------

class GuidedBatches(RandomBatches):
    """Pseudo-label-guided batches; same length and validation as `RandomBatches` (full batches only).

    Pseudo-labels are set by `on_epoch_start(epoch, trainer)` (the trainer calls it) or directly with
    `set_pseudo_labels` (notebooks, tests). They are part of the checkpoint, so `--resume` reuses them.
    """

    def __init__(self, num_samples: int, batch_size: int, options: GuidedOptions | None = None, seed: int = 0):
        super().__init__(num_samples, batch_size)
        self.options = options or GuidedOptions()
        if self.options.pseudo_labels not in ("autoencoder", "encoder", "oracle"):
            raise UserError(f"unknown pseudo_labels '{self.options.pseudo_labels}'; choose autoencoder, encoder or oracle")
        from .errors import check_bounds
        from .methods.base import OPTION_BOUNDS

        # The ranges every method option obeys (refresh_every ≥ 1, num_pseudo ≥ 2, ...), also for options
        # built directly rather than parsed from --set.
        check_bounds(self.options, OPTION_BOUNDS, lambda name: f"option '{name}' of the guided sampler")
        self.num_pseudo = min(self.options.num_pseudo or batch_size, num_samples)
        self.seed = seed
        self.pseudo_labels: torch.Tensor | None = None
        self.labelled_at = -1  # epoch of the last labelling
        self.info: dict = {}  # how good the pseudo-labels are (NMI against the true labels), for history

    def set_pseudo_labels(self, labels: torch.Tensor, epoch: int = 0) -> None:
        labels = torch.as_tensor(labels).long().cpu()
        if labels.shape != (self.num_samples,):
            raise UserError(f"need one pseudo-label per training image ({self.num_samples}), got {tuple(labels.shape)}")
        self.pseudo_labels, self.labelled_at = labels, epoch

    def batches(self, epoch: int, generator: torch.Generator) -> list[torch.Tensor]:
        if self.pseudo_labels is None:
            raise UserError("the guided sampler has no pseudo-labels yet; call set_pseudo_labels() or on_epoch_start()")
        epoch_seed = (generator.initial_seed() * 0x9E3779B97F4A7C15 + epoch) % (2**63)  # as RandomBatches
        return guided_batches(self.pseudo_labels, self.batch_size, torch.Generator().manual_seed(epoch_seed))

    def needs_labels(self, epoch: int) -> bool:
        if self.pseudo_labels is None:
            return True
        return self.options.pseudo_labels == "encoder" and epoch - self.labelled_at >= self.options.refresh_every

    def on_epoch_start(self, epoch: int, trainer) -> None:
        if not self.needs_labels(epoch):
            return
        t0 = time.perf_counter()
        seed = self.seed * 7919 + epoch
        kind = self.options.pseudo_labels
        true_labels = trainer.train_set.labels
        if kind == "oracle":
            if trainer.train_set.num_unlabelled:
                raise UserError(f"oracle pseudo-labels are the true labels, but {trainer.train_set.num_unlabelled} "
                                f"training images have none; use pseudo_labels=autoencoder or encoder")
            labels = true_labels.clone()
        else:
            codes = autoencoder_codes(trainer.train_images, self.options, seed) if kind == "autoencoder" \
                else trainer.features(trainer.train_set.images)
            labels = cluster_codes(codes, self.num_pseudo, self.options.kmeans_iters, seed)
        # Every rank must compose the same global batches: keep rank 0's labels (a gather is our broadcast).
        labels = distributed.gather_no_grad(labels.to(trainer.device))[: self.num_samples].cpu()
        self.set_pseudo_labels(labels, epoch)
        from sklearn.metrics import normalized_mutual_info_score

        labelled = true_labels >= 0  # pseudo-label quality can only be measured where the truth is known
        self.info = {"pseudo_nmi": float(normalized_mutual_info_score(true_labels[labelled].numpy(),
                                                                      labels[labelled].numpy())),
                     "pseudo_seconds": time.perf_counter() - t0}

    def state_dict(self) -> dict:
        return {"pseudo_labels": self.pseudo_labels, "labelled_at": self.labelled_at, "info": self.info}

    def load_state_dict(self, state: dict) -> None:
        if state and state.get("pseudo_labels") is not None:
            self.set_pseudo_labels(state["pseudo_labels"], state["labelled_at"])
            self.info = state.get("info", {})


# --- what the trainer calls -----------------------------------------------------------------------------

def build_sampler(name: str, options: dict, method_options, num_samples: int, batch_size: int, seed: int = 0):
    """The sampler a run uses. `auto` follows the method (guided when its options are `GuidedOptions`);
    guided options come from the method's options, overridden by `options` (TrainConfig.sampler_options)."""
    from .methods.base import parse_options

    if name == "auto":
        name = "guided" if isinstance(method_options, GuidedOptions) else "random"
    if name == "random":
        if options:
            raise UserError(f"the random sampler takes no options (got {', '.join(sorted(options))})")
        return RandomBatches(num_samples, batch_size)
    if name == "guided":
        inherited = {f.name: getattr(method_options, f.name) for f in fields(GuidedOptions)} \
            if isinstance(method_options, GuidedOptions) else {}
        return GuidedBatches(num_samples, batch_size, parse_options(GuidedOptions, {**inherited, **(options or {})},
                                                                    "the guided sampler"), seed)
    raise UserError(f"unknown sampler '{name}'; choose one of: {', '.join(SAMPLERS)}")


def epoch_statistics(sampler, batches: list[torch.Tensor], labels: torch.Tensor) -> dict:
    """What the trainer writes to history for the batches of one epoch: the same-true-class negative rate
    (labels are used for this measurement only) and, for the guided sampler, its pseudo-label quality."""
    from .analysis import same_class_negative_rate

    rate = same_class_negative_rate(labels, batches)  # NaN when no batch has two labelled images: left out
    return {**({} if math.isnan(rate) else {"same_class_neg_rate": rate}), **getattr(sampler, "info", {})}


def state_dict(sampler) -> dict | None:
    return sampler.state_dict() if hasattr(sampler, "state_dict") else None


def load_state_dict(sampler, state: dict | None) -> None:
    if hasattr(sampler, "load_state_dict"):
        sampler.load_state_dict(state or {})
