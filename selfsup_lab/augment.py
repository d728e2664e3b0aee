"""Batched view augmentation on the training device.

Why not torchvision transforms in DataLoader workers?
    Self-supervised methods see every image two (or more) times per step, each time through a random crop,
    flip, colour jitter and grayscale. With per-image CPU transforms that work dominates: on one H100 a
    ResNet-18 alone trains at ~45k views/s in bf16, while training fed by 16 DataLoader workers running
    torchvision transforms reaches ~15k views/s (benchmarks/RESULTS.md). The GPU waits for the CPU.

What we do instead:
    The whole dataset lives on the device as a uint8 tensor (50k CIFAR images are 150 MB). For each step we
    index a batch and augment it *there*, with a handful of batched tensor ops whose random parameters are
    drawn per sample:

        uint8 (B,3,H,W) --crop+flip (one grid_sample)--> float [0,1] --colour jitter--> --grayscale-->
        --blur--> --solarize--> --normalise--> float32 (B,3,size,size)

    There is no Python loop over images and no worker process; the same code runs on a laptop CPU and on a
    GPU, where even this plain version makes ~200k views/s on an H100 -- four times what the model it feeds
    can take (benchmarks/RESULTS.md, row (e)).

Conventions:
    * Randomness comes only from the `generator` passed in (a torch.Generator on the images' device), so a
      seeded generator reproduces the exact views. Per-sample decisions ("jitter this image?") are masks,
      never Python branches, so nothing waits for the GPU.
    * An op whose probability (or strength) is 0 is skipped entirely: no kernels are launched for it.
    * Samples not selected for an op get that op's neutral parameter (factor 1, hue shift 0, sigma 0), so
      one batched call serves the whole batch.
    * Colour ops follow torchvision's definitions exactly (tests compare against
      torchvision.transforms.v2.functional), but take one factor *per sample* instead of one per call.
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

__all__ = [
    "CIFAR10_MEAN",
    "CIFAR10_STD",
    "AugmentConfig",
    "Augmenter",
    "TorchvisionAugmenter",
    "AUGMENTERS",
    "torchvision_transform",
    "cifar_preset",
    "small_crop_preset",
    "normalize",
    "augmentation_grid",
    "sample_crop_boxes",
    "crop_flip_grid",
    "adjust_brightness",
    "adjust_contrast",
    "adjust_saturation",
    "adjust_hue",
    "rgb_to_grayscale",
    "gaussian_blur",
    "solarize",
]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)

# ITU-R 601 luma weights, as torchvision uses them for grayscale, contrast and saturation.
_LUMA = (0.2989, 0.587, 0.114)


# --------------------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------------------


@dataclass
class AugmentConfig:
    """Parameters of one view family. Probabilities are per sample; 0 switches an op off completely."""

    size: int = 32  # output side in pixels
    scale: tuple[float, float] = (0.08, 1.0)  # crop area as a fraction of the image area
    ratio: tuple[float, float] = (3 / 4, 4 / 3)  # crop aspect ratio w/h, sampled log-uniformly
    flip_p: float = 0.5
    jitter_p: float = 0.8
    brightness: float = 0.4
    contrast: float = 0.4
    saturation: float = 0.4
    hue: float = 0.1
    gray_p: float = 0.2
    blur_p: float = 0.0
    blur_sigma: tuple[float, float] = (0.1, 2.0)
    solarize_p: float = 0.0
    mean: tuple[float, float, float] = (0.5, 0.5, 0.5)  # normalisation, in [0,1] units
    std: tuple[float, float, float] = (0.25, 0.25, 0.25)

    def __post_init__(self):
        # Accept lists (e.g. from JSON or `--set`) but store tuples, so configs compare and hash cleanly.
        for name in ("scale", "ratio", "blur_sigma", "mean", "std"):
            setattr(self, name, tuple(float(v) for v in getattr(self, name)))
        problems = []
        if int(self.size) != self.size or self.size < 1:
            problems.append(f"size must be a positive integer, got {self.size}")
        for name in ("flip_p", "jitter_p", "gray_p", "blur_p", "solarize_p"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                problems.append(f"{name} must be a probability in [0, 1], got {getattr(self, name)}")
        for name in ("brightness", "contrast", "saturation"):
            if getattr(self, name) < 0:
                problems.append(f"{name} must be >= 0, got {getattr(self, name)}")
        if not 0.0 <= self.hue <= 0.5:
            problems.append(f"hue must be in [0, 0.5], got {self.hue}")
        for name in ("scale", "ratio", "blur_sigma"):
            lo_hi = getattr(self, name)
            if len(lo_hi) != 2 or not 0.0 < lo_hi[0] <= lo_hi[1]:
                problems.append(f"{name} must be a pair (low, high) with 0 < low <= high, got {lo_hi}")
        if len(self.mean) != 3 or len(self.std) != 3 or min(self.std) <= 0:
            problems.append("mean and std must have 3 entries each, with every std > 0")
        if problems:
            raise ValueError("Invalid AugmentConfig: " + "; ".join(problems) + ".")
        self.size = int(self.size)


def cifar_preset(size: int = 32, mean=CIFAR10_MEAN, std=CIFAR10_STD) -> AugmentConfig:
    """The shared CIFAR recipe of METHODS.md: RandomResizedCrop(0.08-1), flip, jitter (0.4, 0.4, 0.4, 0.1)
    with p 0.8, grayscale p 0.2, no blur, no solarize."""
    return AugmentConfig(
        size=size, scale=(0.08, 1.0), ratio=(3 / 4, 4 / 3), flip_p=0.5,
        jitter_p=0.8, brightness=0.4, contrast=0.4, saturation=0.4, hue=0.1, gray_p=0.2,
        blur_p=0.0, solarize_p=0.0, mean=tuple(mean), std=tuple(std),
    )


def small_crop_preset(size: int, base: AugmentConfig) -> AugmentConfig:
    """Multi-crop's small views (SwAV/DINO style): the same colour recipe as `base`, but small crops
    (area 5-40% of the image) resized to a smaller side `size`."""
    return dataclasses.replace(base, size=size, scale=(0.05, 0.4))


# --------------------------------------------------------------------------------------------------------
# Small helpers
# --------------------------------------------------------------------------------------------------------


def _uniform(n: int, low: float, high: float, generator, device) -> torch.Tensor:
    """n samples from U(low, high), float32, on `device`."""
    return torch.rand(n, generator=generator, device=device) * (high - low) + low


def _bernoulli(n: int, p: float, generator, device) -> torch.Tensor:
    """A (n,) boolean mask, True with probability p."""
    return torch.rand(n, generator=generator, device=device) < p


def _per_sample(values: torch.Tensor) -> torch.Tensor:
    """(B,) -> (B,1,1,1) so a per-sample value broadcasts over channels and pixels."""
    return values.view(-1, 1, 1, 1)


def _batch_order(n: int, generator: torch.Generator | None) -> list[int]:
    """A random permutation of range(n) as a Python list, for choosing the colour-op order of a batch.

    We need the order in Python (it decides which function runs first), but reading a random number back
    from the GPU would make the CPU wait for every queued kernel -- a sync per training step. So we derive
    the permutation from the generator's *state*, which lives on the host (for CUDA: seed and offset),
    hashed into the seed of a tiny CPU generator. Same generator state -> same order; the state advances
    with every draw, so consecutive batches get different orders.
    """
    if generator is None:
        return torch.randperm(n).tolist()  # the global CPU RNG, seeded by torch.manual_seed
    state = generator.get_state().numpy().tobytes()
    seed = int.from_bytes(hashlib.blake2b(state, digest_size=8).digest(), "little") >> 1
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()


def _check_batch(images: torch.Tensor, generator: torch.Generator | None, who: str) -> None:
    """What both augmenters take: a uint8 (B, 3, H, W) batch and, if any, a generator on its device."""
    if images.dtype != torch.uint8 or images.dim() != 4 or images.shape[1] != 3:
        raise ValueError(f"{who} expects a uint8 batch of shape (B, 3, H, W), got {images.dtype} {tuple(images.shape)}.")
    _check_generator(generator, images.device)


def _check_generator(generator: torch.Generator | None, device: torch.device) -> None:
    if generator is None:
        return
    gdev = generator.device
    same = gdev.type == device.type and (gdev.index is None or device.index is None or gdev.index == device.index)
    if not same:
        raise ValueError(
            f"The generator is on {gdev} but the images are on {device}; "
            f"create it with torch.Generator(device=images.device)."
        )


# --------------------------------------------------------------------------------------------------------
# Geometry: random resized crop + horizontal flip in one resampling pass
# --------------------------------------------------------------------------------------------------------


def sample_crop_boxes(
    batch: int,
    height: int,
    width: int,
    scale: tuple[float, float],
    ratio: tuple[float, float],
    generator: torch.Generator | None = None,
    attempts: int = 10,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Per-sample crop boxes as torchvision's RandomResizedCrop draws them, vectorised.

    Each attempt draws an area fraction s ~ U(scale) and an aspect ratio r = w/h log-uniform in `ratio`,
    giving w = sqrt(s*H*W*r), h = sqrt(s*H*W/r). The first attempt that fits inside the image wins; a
    sample whose `attempts` all fail falls back to the largest centred crop with an allowed ratio.
    All attempts of all samples are drawn at once as a (B, attempts) tensor.

    Boxes are continuous (sub-pixel) -- no rounding, since grid_sample interpolates anyway. (torchvision
    rounds w and h to whole pixels, which lets a few slightly-too-large candidates through, and draws whole-pixel
    positions, which reach the border more often. Measured over 100,000 draws at 32×32: mean crop area 0.490
    of the image against our 0.479, crops above 0.9 of it 4.0% against 2.3%, a corner pixel inside the crop
    3.6% against 1.7%. Whether that matters for training is measured in benchmarks/results_augmentation.md.)

    Returns:
        (B, 4) float32 tensor of (top, left, height, width) in pixels, on the generator's device
        (or `device`, default CPU, when no generator is given).
    """
    if device is None:
        device = generator.device if generator is not None else torch.device("cpu")
    area = float(height * width)
    log_lo, log_hi = math.log(ratio[0]), math.log(ratio[1])

    # 1) all candidate boxes at once: (B, attempts)
    target_area = area * (torch.rand(batch, attempts, generator=generator, device=device)
                          * (scale[1] - scale[0]) + scale[0])
    aspect = torch.exp(torch.rand(batch, attempts, generator=generator, device=device)
                       * (log_hi - log_lo) + log_lo)
    w = torch.sqrt(target_area * aspect)
    h = torch.sqrt(target_area / aspect)

    # 2) keep the first candidate that fits (argmax returns the first maximum)
    fits = (w <= width) & (h <= height)
    first = fits.float().argmax(dim=1, keepdim=True)
    any_fit = fits.any(dim=1)
    w = w.gather(1, first).squeeze(1)
    h = h.gather(1, first).squeeze(1)

    # 3) fallback (depends only on the image shape): the whole image, trimmed to the nearest allowed ratio
    in_ratio = width / height
    if in_ratio < ratio[0]:
        w_fb, h_fb = float(width), width / ratio[0]
    elif in_ratio > ratio[1]:
        w_fb, h_fb = height * ratio[1], float(height)
    else:
        w_fb, h_fb = float(width), float(height)
    w = torch.where(any_fit, w, torch.full_like(w, w_fb))
    h = torch.where(any_fit, h, torch.full_like(h, h_fb))

    # 4) a uniformly random position for fitted boxes; centred for the fallback
    top = torch.rand(batch, generator=generator, device=device) * (height - h)
    left = torch.rand(batch, generator=generator, device=device) * (width - w)
    top = torch.where(any_fit, top, (height - h) / 2)
    left = torch.where(any_fit, left, (width - w) / 2)
    return torch.stack([top, left, h, w], dim=1)


def crop_flip_grid(boxes: torch.Tensor, flip: torch.Tensor, height: int, width: int, size: int) -> torch.Tensor:
    """The sampling grid that maps a size x size output onto each sample's crop box, mirrored where `flip`.

    grid_sample uses normalised coordinates: with align_corners=False, x = -1 and x = +1 are the outer
    edges of the image. A box [left, left + w] in pixels therefore spans [2*left/W - 1, 2*(left+w)/W - 1],
    i.e. centre cx = (2*left + w)/W - 1 and half-width w/W. The affine map is

        x_in = flip_sign * (w/W) * x_out + cx,     y_in = (h/H) * y_out + cy,

    and a horizontal flip is simply a negated x scale -- no second pass over the pixels.

    Bilinear sampling does not antialias: fine when crops are enlarged (CIFAR's usual case), slightly
    aliased when a crop is shrunk a lot (e.g. a 96-px STL-10 image to a 32-px view).
    """
    top, left, h, w = boxes.unbind(dim=1)
    sign = 1.0 - 2.0 * flip.to(boxes.dtype)  # -1 where flipped
    zero = torch.zeros_like(w)
    theta = torch.stack([
        torch.stack([sign * w / width, zero, (2 * left + w) / width - 1], dim=1),
        torch.stack([zero, h / height, (2 * top + h) / height - 1], dim=1),
    ], dim=1)  # (B, 2, 3)
    return F.affine_grid(theta, [boxes.shape[0], 3, size, size], align_corners=False)


# --------------------------------------------------------------------------------------------------------
# Colour ops on float images in [0,1], one factor per sample. Same maths as torchvision's functional ops.
# --------------------------------------------------------------------------------------------------------


def rgb_to_grayscale(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) -> (B,1,H,W) luma with ITU-R 601 weights."""
    r, g, b = x.unbind(dim=1)
    return (_LUMA[0] * r + _LUMA[1] * g + _LUMA[2] * b).unsqueeze(1)


def _blend(x: torch.Tensor, other: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """factor*x + (1-factor)*other, clamped: factor 0 gives `other`, 1 gives x, > 1 extrapolates."""
    return torch.lerp(other.expand_as(x), x, _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_brightness(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Scale intensities: factor 0 -> black, 1 -> unchanged."""
    return (x * _per_sample(factor)).clamp_(0.0, 1.0)


def adjust_contrast(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the image's mean gray level: factor 0 -> flat gray image, 1 -> unchanged."""
    mean = rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)
    return _blend(x, mean, factor)


def adjust_saturation(x: torch.Tensor, factor: torch.Tensor) -> torch.Tensor:
    """Blend with the grayscale image: factor 0 -> gray, 1 -> unchanged, 2 -> twice as colourful."""
    return _blend(x, rgb_to_grayscale(x), factor)


def adjust_hue(x: torch.Tensor, shift: torch.Tensor) -> torch.Tensor:
    """Rotate the hue by `shift` (fractions of a full turn, in [-0.5, 0.5]) keeping saturation and value.

    RGB -> HSV: value v = max(r,g,b), chroma c = max - min, and hue h in sextants [0, 6) from which channel
    is largest. Shift h. HSV -> RGB with the branch-free formula
        channel_n = v - c * clamp(min(k, 4 - k), 0, 1),   k = (n + 6h) mod 6,   n = 5 (R), 3 (G), 1 (B).
    (v*s = c, so saturation never has to be formed explicitly.)
    """
    r, g, b = x.unbind(dim=1)
    v = x.amax(dim=1)
    c = v - x.amin(dim=1)
    safe_c = torch.where(c > 0, c, torch.ones_like(c))  # gray pixels: hue is arbitrary, c = 0 anyway
    # hue in sextants; ties resolved as torchvision does (red first, then green)
    h6 = torch.where(v == r, (g - b) / safe_c,
                     torch.where(v == g, (b - r) / safe_c + 2.0, (r - g) / safe_c + 4.0))
    h6 = (h6 + 6.0 * shift.view(-1, 1, 1)).unsqueeze(1)  # rotate; (B,1,H,W)
    n = torch.arange(5.0, 0.0, -2.0, device=x.device).view(1, 3, 1, 1)  # 5, 3, 1 for R, G, B
    k = (h6 + n).remainder(6.0)  # (B,3,H,W); remainder also wraps the rotated hue
    return v.unsqueeze(1) - c.unsqueeze(1) * torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)


def gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Blur each sample with its own Gaussian (std `sigma[i]` pixels; 0 means no blur).

    One (2*radius+1)-tap kernel per sample, applied separably (rows, then columns) as a grouped
    convolution in which every (sample, channel) plane is its own group. Reflect padding, as torchvision.
    """
    B, C, H, W = x.shape
    radius = max(0, min(radius, H - 1, W - 1))  # reflect padding needs pad < side
    taps = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    # sigma -> 0 turns the kernel into a delta (exp(-t^2/tiny) = 0 off-centre): the neutral element
    s = sigma.view(B, 1).clamp_min(1e-3)
    kernel = torch.exp(-0.5 * (taps / s) ** 2)
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, k)
    kernel = kernel.repeat_interleave(C, dim=0)  # (B*C, k): same kernel for the 3 channels of a sample
    k = 2 * radius + 1
    y = F.pad(x.reshape(1, B * C, H, W), (radius, radius, radius, radius), mode="reflect")
    y = F.conv2d(y, kernel.view(B * C, 1, 1, k), groups=B * C)  # along rows
    y = F.conv2d(y, kernel.view(B * C, 1, k, 1), groups=B * C)  # along columns
    return y.view(B, C, H, W)


def solarize(x: torch.Tensor, mask: torch.Tensor, threshold: float = 0.5) -> torch.Tensor:
    """Invert the pixels >= threshold, in the samples where `mask` is True."""
    return torch.where(_per_sample(mask) & (x >= threshold), 1.0 - x, x)


# --------------------------------------------------------------------------------------------------------
# The augmenter
# --------------------------------------------------------------------------------------------------------


class Augmenter:
    """Turns a uint8 batch into one augmented, normalised view per image, on the images' device.

        aug = Augmenter(cifar_preset())
        g = torch.Generator(device=images.device).manual_seed(0)
        v1, v2 = aug(images, g), aug(images, g)      # two views of the same batch
        v1, v2 = aug.views(images, 2, g)             # the same, in one call (half the kernel launches)
    """

    def __init__(self, config: AugmentConfig):
        self.config = config
        self._stats: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}

    def __repr__(self) -> str:
        return f"Augmenter({self.config})"

    def _mean_std(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        # Cached per device, so the hot path makes no host-to-device copies.
        if device not in self._stats:
            mean = torch.tensor(self.config.mean, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            std = torch.tensor(self.config.std, dtype=torch.float32, device=device).view(1, 3, 1, 1)
            self._stats[device] = (mean, std)
        return self._stats[device]

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        _check_batch(images, generator, "Augmenter")
        # Augmentation is float32 by design: under a caller's autocast, affine_grid's matmul and the blur
        # convolution would silently drop to bf16 and blur the crop coordinates.
        with torch.autocast(images.device.type, enabled=False):
            return self._augment(images, generator)

    def views(self, images: torch.Tensor, count: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """`count` independent views of every image, from one batched call over count·B images.

        Each view of each image gets its own crop, flip, factors and coin flips, exactly as `count` separate
        calls would give; only the colour-op order, drawn once per call, is shared by the views of a batch.
        Why bother: every op launches one kernel whatever the batch size, and a GPU training a ResNet-18
        at batch 512 waits on the CPU launching them (benchmarks/RESULTS.md) -- one call of 2B launches half
        the kernels of two calls of B.
        """
        if count < 1:
            raise ValueError(f"count must be 1 or more views per image, got {count}.")
        if count == 1:
            return [self(images, generator)]
        repeated = images.repeat(count, 1, 1, 1)
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            repeated = repeated.contiguous(memory_format=torch.channels_last)  # repeat drops the format
        return list(self(repeated, generator).chunk(count))

    def close(self) -> None:
        """Nothing to release (`TorchvisionAugmenter.close` stops its workers; the trainer calls either)."""

    def _augment(self, images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
        cfg, dev, g = self.config, images.device, generator
        B, _, H, W = images.shape

        # 1) crop + flip: one bilinear resampling straight from the uint8 pixels (as float 0..255)
        boxes = sample_crop_boxes(B, H, W, cfg.scale, cfg.ratio, g, device=dev)
        flip = _bernoulli(B, cfg.flip_p, g, dev) if cfg.flip_p > 0 else torch.zeros(B, dtype=torch.bool, device=dev)
        grid = crop_flip_grid(boxes, flip, H, W, cfg.size)
        x = F.grid_sample(images.float(), grid, mode="bilinear", padding_mode="border", align_corners=False)
        x = x.mul_(1.0 / 255.0)  # now float32 in [0, 1]

        # 2) colour jitter: per-sample factors (neutral where not selected), ops in one random order per
        #    call (so `views` shares it between the views of a batch). torchvision draws an order per
        #    image; one per call keeps it to 4 batched ops.
        if cfg.jitter_p > 0:
            on = _bernoulli(B, cfg.jitter_p, g, dev)
            ops = []
            for fn, strength, neutral, low, high in (
                (adjust_brightness, cfg.brightness, 1.0, max(0.0, 1 - cfg.brightness), 1 + cfg.brightness),
                (adjust_contrast, cfg.contrast, 1.0, max(0.0, 1 - cfg.contrast), 1 + cfg.contrast),
                (adjust_saturation, cfg.saturation, 1.0, max(0.0, 1 - cfg.saturation), 1 + cfg.saturation),
                (adjust_hue, cfg.hue, 0.0, -cfg.hue, cfg.hue),
            ):
                if strength > 0:
                    factor = torch.where(on, _uniform(B, low, high, g, dev), neutral)
                    ops.append((fn, factor))
            for i in _batch_order(len(ops), g):
                fn, factor = ops[i]
                x = fn(x, factor)

        # 3) grayscale: luma replicated to 3 channels
        if cfg.gray_p > 0:
            gray = _per_sample(_bernoulli(B, cfg.gray_p, g, dev))
            x = torch.where(gray, rgb_to_grayscale(x).expand_as(x), x)

        # 4) Gaussian blur with a per-sample sigma (0 = untouched)
        if cfg.blur_p > 0:
            on = _bernoulli(B, cfg.blur_p, g, dev)
            sigma = torch.where(on, _uniform(B, cfg.blur_sigma[0], cfg.blur_sigma[1], g, dev), 0.0)
            x = gaussian_blur(x, sigma, radius=math.ceil(3 * cfg.blur_sigma[1]))

        # 5) solarize
        if cfg.solarize_p > 0:
            x = solarize(x, _bernoulli(B, cfg.solarize_p, g, dev))

        # 6) clamp and normalise; hand back in the caller's memory format (e.g. channels_last)
        mean, std = self._mean_std(dev)
        x = (x.clamp_(0.0, 1.0) - mean) / std
        if images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous():
            x = x.contiguous(memory_format=torch.channels_last)
        return x


# --------------------------------------------------------------------------------------------------------
# The reference: the same recipe as torchvision's per-image transforms
# --------------------------------------------------------------------------------------------------------


def torchvision_transform(config: AugmentConfig):
    """`config` as the torchvision transforms most papers' code runs on each PIL image, in our order:
    RandomResizedCrop, flip, ColorJitter (RandomApply), RandomGrayscale, GaussianBlur, RandomSolarize,
    ToTensor, Normalize."""
    import torchvision.transforms as T

    steps = [T.RandomResizedCrop(config.size, scale=config.scale, ratio=config.ratio),
             T.RandomHorizontalFlip(config.flip_p)]
    if config.jitter_p > 0:
        jitter = T.ColorJitter(config.brightness, config.contrast, config.saturation, config.hue)
        steps.append(T.RandomApply([jitter], p=config.jitter_p))
    if config.gray_p > 0:
        steps.append(T.RandomGrayscale(p=config.gray_p))
    if config.blur_p > 0:
        kernel = 2 * math.ceil(3 * config.blur_sigma[1]) + 1  # the kernel Augmenter's blur uses
        steps.append(T.RandomApply([T.GaussianBlur(kernel, sigma=config.blur_sigma)], p=config.blur_p))
    if config.solarize_p > 0:
        steps.append(T.RandomSolarize(threshold=128, p=config.solarize_p))  # 0.5 of the uint8 range
    steps += [T.ToTensor(), T.Normalize(config.mean, config.std)]
    return T.Compose(steps)


# Images per seed in the reference pipeline: fixed, so the views do not depend on how many workers make them.
REFERENCE_CHUNK = 64


def _reference_views(transform, pixels, count: int, seed: int) -> list[torch.Tensor]:
    """`count` views of each image in `pixels` ((n, H, W, 3) uint8 array), drawn on a forked copy of torch's
    global generator seeded with `seed` (torchvision's transforms draw from the global one)."""
    from PIL import Image

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return [torch.stack([transform(Image.fromarray(p)) for p in pixels]) for _ in range(count)]


_WORKER_TRANSFORM = None  # in a worker process: the transform it was started with


def _start_worker(config: AugmentConfig) -> None:
    import signal

    global _WORKER_TRANSFORM
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the trainer's to handle, not every worker's
    signal.signal(signal.SIGTERM, signal.SIG_DFL)  # a forked worker must not inherit the command's SIGTERM handler
    torch.set_num_threads(1)  # one image at a time: the parallelism is across workers
    _WORKER_TRANSFORM = torchvision_transform(config)


def _worker_views(pixels, count: int, seed: int) -> list[torch.Tensor]:
    return _reference_views(_WORKER_TRANSFORM, pixels, count, seed)


class TorchvisionAugmenter:
    """`Augmenter`'s interface, computed image by image with torchvision's PIL transforms on the CPU.

    The reference pipeline: it answers "does the batched device pipeline train as well as the transforms
    most papers' code runs?" (`selfsup-lab train --augmentation torchvision`). Differences it keeps on
    purpose: torchvision rounds crop boxes to whole pixels and antialiases when it shrinks a crop, and draws
    the colour-op order per image rather than per call.

    Reproducible like `Augmenter`: torchvision draws from torch's global generator, so each call draws one
    seed per chunk of REFERENCE_CHUNK images from the `generator` passed in and transforms the chunk on a
    forked, seeded copy of the global generator (the caller's global random state is left alone, and
    `--resume` stays exact). `workers` > 0 spreads the chunks over that many processes, as a DataLoader's
    workers would; the views are the same for any number of workers.
    """

    def __init__(self, config: AugmentConfig, workers: int = 0):
        self.config = config
        self.transform = torchvision_transform(config)
        self.workers = workers
        self._pool = None  # started on first use

    def __repr__(self) -> str:
        return f"TorchvisionAugmenter({self.config}, workers={self.workers})"

    def __call__(self, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        return self.views(images, 1, generator)[0]

    def views(self, images: torch.Tensor, count: int, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        if count < 1:
            raise ValueError(f"count must be 1 or more views per image, got {count}.")
        _check_batch(images, generator, "TorchvisionAugmenter")
        pixels = images.permute(0, 2, 3, 1).cpu().numpy()  # (B, H, W, 3) for PIL
        chunks = [pixels[i:i + REFERENCE_CHUNK] for i in range(0, len(pixels), REFERENCE_CHUNK)]
        seeds = torch.randint(0, 2**62, (len(chunks),), generator=generator,
                              device=generator.device if generator is not None else "cpu").tolist()
        if self.workers > 0:
            parts = list(self._worker_pool().map(_worker_views, chunks, [count] * len(chunks), seeds))
        else:
            parts = [_reference_views(self.transform, chunk, count, seed) for chunk, seed in zip(chunks, seeds)]
        channels_last = images.is_contiguous(memory_format=torch.channels_last) and not images.is_contiguous()
        memory_format = torch.channels_last if channels_last else torch.contiguous_format
        return [torch.cat([part[v] for part in parts]).to(images.device).contiguous(memory_format=memory_format)
                for v in range(count)]

    def _worker_pool(self):
        if self._pool is None:
            import multiprocessing
            import sys
            from concurrent.futures import ProcessPoolExecutor

            # fork on Linux, as DataLoader workers are started: a spawned worker re-imports the caller's main
            # script, which fails for `python - <<EOF` and re-runs the training in a script without an
            # `if __name__ == "__main__":` guard. The workers use PIL and small CPU tensor ops, never CUDA.
            method = "fork" if sys.platform.startswith("linux") else "spawn"
            self._pool = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context(method),
                                             initializer=_start_worker, initargs=(self.config,))
        return self._pool

    def close(self) -> None:
        """Stop the worker processes (a later call starts them again)."""
        if self._pool is not None:
            self._pool.shutdown(cancel_futures=True)
            self._pool = None


# Which pipeline makes the training views (TrainConfig.augmentation / --augmentation).
AUGMENTERS = {"device": Augmenter, "torchvision": TorchvisionAugmenter}


# --------------------------------------------------------------------------------------------------------
# Evaluation-time preprocessing and a picture
# --------------------------------------------------------------------------------------------------------


def normalize(images: torch.Tensor, mean, std, size: int | None = None) -> torch.Tensor:
    """uint8 (B,3,H,W) -> float32 normalised, optionally resized to size x size (bilinear, antialiased).
    The no-augmentation path, used for evaluation (kNN, linear probe, clustering)."""
    x = images.float().mul_(1.0 / 255.0)
    if size is not None and tuple(x.shape[-2:]) != (size, size):
        x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)
        x = x.clamp_(0.0, 1.0)
    mean = torch.as_tensor(mean, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    std = torch.as_tensor(std, dtype=torch.float32, device=x.device).view(1, -1, 1, 1)
    return (x - mean) / std


def augmentation_grid(images: torch.Tensor, augmenter: Augmenter, n_views: int = 4, generator=None,
                      mean=None, std=None):
    """A matplotlib Figure: one row per image -- the original, then `n_views` augmented views.

    Views are un-normalised with `mean`/`std` (default: the augmenter's own) so they display as images.
    """
    import matplotlib.pyplot as plt  # lazy: plotting is optional

    if images.dim() == 3:
        images = images.unsqueeze(0)
    mean = augmenter.config.mean if mean is None else mean
    std = augmenter.config.std if std is None else std
    n = images.shape[0]

    # all views in one batched call: (n_views * n, 3, s, s) -> (n_views, n, 3, s, s)
    with torch.no_grad():
        views = augmenter(images.repeat(n_views, 1, 1, 1), generator)
    m = torch.as_tensor(mean, dtype=views.dtype, device=views.device).view(1, 3, 1, 1)
    s = torch.as_tensor(std, dtype=views.dtype, device=views.device).view(1, 3, 1, 1)
    views = (views * s + m).clamp(0, 1).view(n_views, n, 3, *views.shape[-2:]).cpu()
    originals = images.float().div(255).cpu()

    fig, axes = plt.subplots(n, n_views + 1, figsize=(1.3 * (n_views + 1), 1.3 * n), squeeze=False)
    for row in range(n):
        panels = [originals[row]] + [views[v, row] for v in range(n_views)]
        for col, panel in enumerate(panels):
            ax = axes[row, col]
            ax.imshow(panel.permute(1, 2, 0).numpy(), interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
        if row == 0:
            axes[0, 0].set_title("original", fontsize=8)
            for v in range(n_views):
                axes[0, v + 1].set_title(f"view {v + 1}", fontsize=8)
    fig.tight_layout()
    return fig
