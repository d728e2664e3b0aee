"""Datasets as uint8 tensors, and the random batches drawn from them.

The design in one paragraph
---------------------------
Self-supervised training looks at every image twice per step (two augmented views), so the data path must
be fast. The usual PyTorch recipe -- a `Dataset` that decodes and augments one image at a time in
`DataLoader` worker processes -- spends its time in Python per image and needs many CPU cores. We do it
the other way round: every dataset is decoded **once** into a single uint8 tensor of shape (N, 3, H, W)
(50,000 CIFAR images are 150 MB, small next to a GPU's memory), the tensor is moved to the training device
(`ImageDataset.to`), and `augment.py` then crops, flips and colour-jitters whole *batches* there. A batch
is just an index tensor (`RandomBatches`), so there are no DataLoader workers and no per-image Python in
the training loop.

Every sample carries its index: `dataset[i]` returns `(image, label, i)`, because clustering methods
(DeepCluster, CoKe) keep a pseudo-label per image and look it up by index. Labels are only ever used for
evaluation, so a training split may also hold *unlabelled* images (label -1, `UNLABELLED`), as STL-10's
100,000-image unlabelled split: they are trained on, and evaluation uses the labelled ones
(`ImageDataset.labelled()`).

Where the images come from (`load_dataset(spec, split)`):

* ``cifar10``, ``cifar100``, ``stl10``, ``mnist``, ``fashion-mnist`` -- torchvision's own dataset classes,
  downloaded into ``data_dir`` and converted to our format once (cached as a ``.pt`` file next to them).
  ``stl10`` trains on its 5,000 labelled *and* 100,000 unlabelled images (the usual self-supervised
  protocol); ``stl10:labelled`` on the 5,000 labelled ones only.
* ``digits`` -- scikit-learn's bundled 8x8 handwritten digits, upscaled to 32x32. Always available
  offline, trains in seconds on a CPU: the default for notebooks and tests.
* ``synthetic[:n=..,classes=..,size=..,seed=..]`` -- seeded procedural images of any size, for tests.
* ``imagefolder:PATH`` -- your own images: a folder of class sub-folders (optionally split into
  ``train/`` and ``test/``, or ``val/`` for want of ``test/``), or a ``.tar``/``.tar.gz`` archive of one.
  Decoded once with PIL (turned upright as the EXIF orientation says), cached under ``data_dir/cache/``. A training sub-folder named ``unlabelled`` (or ``unlabeled``) is not a class: its
  images are trained on with label -1, as STL-10's unlabelled split.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import logging
import os
import re
import tarfile
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path, PurePosixPath

import numpy as np
import torch
import torch.nn.functional as F

from .errors import DataUnavailableError, UserError

__all__ = [
    "DATASETS",
    "UNLABELLED",
    "ImageDataset",
    "RandomBatches",
    "default_data_dir",
    "load_dataset",
    "load_splits",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "test")

DATASETS: dict[str, str] = {
    "digits": "scikit-learn's 1,797 handwritten 8x8 digits upscaled to 32x32, 10 classes (offline, seconds on a CPU)",
    "synthetic": "seeded procedural colour patterns for tests: synthetic:n=512,classes=4,size=16,seed=0 (offline)",
    "imagefolder": "your own images: imagefolder:PATH, a folder of class sub-folders "
    "(optionally inside train/ and test/) or a .tar/.tar.gz of one; an unlabelled/ sub-folder is trained on only",
    "cifar10": "CIFAR-10, 50,000 + 10,000 32x32 images, 10 classes (torchvision download)",
    "cifar100": "CIFAR-100, 50,000 + 10,000 32x32 images, 100 classes (torchvision download)",
    "stl10": "STL-10, 5,000 labelled + 100,000 unlabelled training and 8,000 test 96x96 images, 10 classes "
    "(torchvision download, 2.6 GB); stl10:labelled trains on the 5,000 labelled images only",
    "mnist": "MNIST, 60,000 + 10,000 28x28 handwritten digits as 3-channel images (torchvision download)",
    "fashion-mnist": "Fashion-MNIST, 60,000 + 10,000 28x28 clothing images as 3-channel images (torchvision download)",
}

OFFLINE_ALTERNATIVES = "`digits`, `synthetic` or `imagefolder:PATH` (a folder or .tar.gz of class sub-folders)"

# Fraction of images held out as the test split when a source has no test split of its own.
HOLDOUT_FRACTION = 0.2

# The label of an image without one (STL-10's unlabelled split): trained on, never used by evaluation.
UNLABELLED = -1
# imagefolder: a sub-folder with one of these names holds unlabelled training images, not a class.
UNLABELLED_FOLDERS = ("unlabelled", "unlabeled")

# Bump when the layout of the cached .pt files changes, so that old caches are rebuilt, not misread.
CACHE_FORMAT = 3  # 2: imagefolder's unlabelled/ sub-folder is label -1; 3: EXIF rotation, 16-bit scaling


def default_data_dir() -> Path:
    """Where downloads and decoded caches live: ``$SELFSUP_LAB_DATA``, else ``~/.cache/selfsup-lab``."""
    env = os.environ.get("SELFSUP_LAB_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "selfsup-lab"


# ----------------------------------------------------------------------------------------------------------
# The dataset object
# ----------------------------------------------------------------------------------------------------------


@dataclass(eq=False, repr=False)
class ImageDataset:
    """A whole split of a dataset as two tensors, living on one device.

    images: uint8 (N, 3, H, W) -- grayscale sources are replicated to 3 channels.
    labels: int64 (N,) -- indices into `classes`, or UNLABELLED (-1) for an image without a label;
            used for evaluation only.
    """

    images: torch.Tensor
    labels: torch.Tensor
    classes: list[str]
    name: str
    split: str
    _stats: tuple[tuple[float, ...], tuple[float, ...]] | None = field(default=None, init=False)

    def __post_init__(self) -> None:
        imgs, labels = self.images, self.labels
        if imgs.dtype != torch.uint8 or imgs.dim() != 4 or imgs.shape[1] != 3:
            raise UserError(
                f"ImageDataset images must be a uint8 tensor of shape (N, 3, H, W), "
                f"got {imgs.dtype} {tuple(imgs.shape)}; convert with (x * 255).round().to(torch.uint8)"
            )
        if labels.dtype != torch.int64 or labels.shape != (imgs.shape[0],):
            raise UserError(
                f"ImageDataset labels must be an int64 tensor of shape ({imgs.shape[0]},) matching the images, "
                f"got {labels.dtype} {tuple(labels.shape)}"
            )
        if len(labels) and not (UNLABELLED <= int(labels.min()) and int(labels.max()) < len(self.classes)):
            raise UserError(
                f"ImageDataset labels must lie in 0..{len(self.classes) - 1} (one per class) or be {UNLABELLED} "
                f"(unlabelled), got values from {int(labels.min())} to {int(labels.max())}"
            )

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int, int]:
        """(image, label, index): the index lets clustering methods keep one pseudo-label per image."""
        i = int(i)
        if i < 0:
            i += len(self)
        if not 0 <= i < len(self):
            raise IndexError(f"index {i} is out of range for a dataset of {len(self)} images")
        return self.images[i], int(self.labels[i]), i

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    @property
    def image_size(self) -> int:
        """The image height H (all our datasets are square)."""
        return self.images.shape[2]

    @property
    def device(self) -> torch.device:
        return self.images.device

    def channel_stats(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel mean and standard deviation in [0, 1] units, for input normalisation.

        Computed exactly from a 256-bin histogram per channel (built in chunks, so no float copy of the
        whole dataset is made; ~0.1 s for CIFAR-10) and cached; if you modify `images` in place, build a
        new ImageDataset. A constant channel gets a deviation of 1 (centred only, not divided by 0).
        """
        if self._stats is None:
            hist = torch.zeros(3, 256, dtype=torch.float64)
            for chunk in self.images.split(4096):
                for c in range(3):
                    hist[c] += torch.bincount(chunk[:, c].reshape(-1), minlength=256).cpu().double()
            values = torch.arange(256, dtype=torch.float64) / 255.0
            count = hist.sum(dim=1).clamp_min(1)
            mean = (hist * values).sum(dim=1) / count
            var = (hist * values**2).sum(dim=1) / count - mean**2
            std = var.clamp_min(0).sqrt()
            # A constant channel (e.g. images with no blue at all) carries nothing to scale: only centre it,
            # rather than divide by 0 (or blow up the colour jitter's tiny changes by dividing by almost 0).
            std = torch.where(std < 1e-3, torch.ones_like(std), std)
            self._stats = (tuple(mean.tolist()), tuple(std.tolist()))
        return self._stats

    def to(self, device: torch.device | str) -> ImageDataset:
        """A copy whose images and labels live on `device` (the class list and cached stats are shared)."""
        moved = ImageDataset(self.images.to(device), self.labels.to(device), self.classes, self.name, self.split)
        moved._stats = self._stats
        return moved

    def subset(self, indices: torch.Tensor | list[int]) -> ImageDataset:
        """A smaller dataset with the images at `indices` (e.g. a 5,000-image slice for a quick notebook run)."""
        idx = torch.as_tensor(indices, dtype=torch.long, device=self.images.device)
        return ImageDataset(self.images[idx], self.labels[idx], self.classes, self.name, self.split)

    @property
    def num_unlabelled(self) -> int:
        return int((self.labels == UNLABELLED).sum())

    def labelled(self) -> ImageDataset:
        """The images that have a label: `self` itself when all have one (no copy), else a subset.

        What evaluation uses as the training side (kNN memory bank, linear-probe training set)."""
        if not self.num_unlabelled:
            return self
        return self.subset(torch.nonzero(self.labels != UNLABELLED).flatten())

    def __repr__(self) -> str:
        n, c, h, w = self.images.shape
        unlabelled = f" ({self.num_unlabelled} unlabelled)" if self.num_unlabelled else ""
        return (
            f"ImageDataset(name={self.name!r}, split={self.split!r}, {n} images{unlabelled} of {c}x{h}x{w}, "
            f"{self.num_classes} classes, device={self.images.device})"
        )


# ----------------------------------------------------------------------------------------------------------
# Batches
# ----------------------------------------------------------------------------------------------------------


class RandomBatches:
    """Default batch sampler: a seeded random permutation per epoch, cut into full batches.

    The permutation of epoch e depends only on the generator's *seed* and on e -- not on the generator's
    current state -- so a run resumed at epoch e replays exactly the batches the uninterrupted run would
    have seen, without having to checkpoint the generator.
    """

    def __init__(self, num_samples: int, batch_size: int, drop_last: bool = True):
        if num_samples < 1:
            raise UserError("the training set is empty; check the dataset path or options")
        if batch_size < 1:
            raise UserError(f"batch size must be at least 1, got {batch_size}")
        if batch_size > num_samples:
            raise UserError(
                f"batch size {batch_size} is larger than the {num_samples}-image training set; "
                f"use --batch-size {num_samples} or less"
            )
        self.num_samples = num_samples
        self.batch_size = batch_size
        self.drop_last = drop_last

    def __len__(self) -> int:
        full, rest = divmod(self.num_samples, self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def batches(self, epoch: int, generator: torch.Generator) -> list[torch.Tensor]:
        """The batches of one epoch: a list of int64 index tensors on the CPU, each index used at most once."""
        # Mix seed and epoch into one 63-bit seed (an odd multiplier keeps different epochs apart).
        epoch_seed = (generator.initial_seed() * 0x9E3779B97F4A7C15 + epoch) % (2**63)
        order = torch.randperm(self.num_samples, generator=torch.Generator().manual_seed(epoch_seed))
        batches = list(order.split(self.batch_size))
        if self.drop_last and len(batches[-1]) < self.batch_size:
            batches.pop()
        return batches


# ----------------------------------------------------------------------------------------------------------
# Entry points
# ----------------------------------------------------------------------------------------------------------


def load_dataset(spec: str, split: str = "train", data_dir: str | os.PathLike | None = None, **options) -> ImageDataset:
    """Load one split ("train" or "test") of the dataset named by `spec` (see `DATASETS`)."""
    if split not in SPLITS:
        raise UserError(f"unknown split {split!r}; use 'train' or 'test'")
    name, arg = _parse_spec(spec)
    root = Path(data_dir).expanduser() if data_dir is not None else default_data_dir()
    if name == "digits":
        _no_options(name, arg, options)
        return _digits(split)
    if name == "synthetic":
        return _synthetic(split, **_synthetic_options(arg, options))
    if name == "imagefolder":
        _no_options(name, "", options)
        train, test = _imagefolder(arg, root)
        return train if split == "train" else test
    if name == "stl10":
        _no_options(name, "", options)
        return _torchvision(name, _stl10_split(arg, split), root)
    _no_options(name, arg, options)
    return _torchvision(name, split, root)


def _stl10_split(arg: str, split: str) -> str:
    """torchvision's STL-10 split for our (spec argument, split): the unlabelled images join training."""
    if arg.lower() not in ("", "labelled", "labeled"):
        raise UserError(f"stl10 takes only ':labelled' after its name (got {arg!r}); write 'stl10' or 'stl10:labelled'")
    return "train+unlabeled" if split == "train" and not arg else split


def load_splits(spec: str, data_dir: str | os.PathLike | None = None, **options) -> tuple[ImageDataset, ImageDataset]:
    """Load (train, test) of the dataset named by `spec`."""
    name, arg = _parse_spec(spec)
    if name == "imagefolder":  # one decode (or cache read) gives both splits
        _no_options(name, "", options)
        return _imagefolder(arg, Path(data_dir).expanduser() if data_dir is not None else default_data_dir())
    return (
        load_dataset(spec, "train", data_dir, **options),
        load_dataset(spec, "test", data_dir, **options),
    )


def canonical_spec(spec: str) -> str:
    """The form a run records: the dataset's name as the lab spells it ('CIFAR10' -> 'cifar10', 'ImageFolder:x'
    -> 'imagefolder:x') and an imagefolder path made absolute ('imagefolder:../x' -> 'imagefolder:/home/me/x'),
    so that one data set has one name and a run can be evaluated, resumed or reopened from any directory."""
    try:
        name, arg = _parse_spec(spec)
    except UserError:
        return spec  # loading says what is wrong with it
    if name == "imagefolder" and arg.strip():
        return f"imagefolder:{Path(arg.strip()).expanduser().resolve()}"
    return f"{name}:{arg}" if arg else name


def same_dataset(a: str, b: str) -> bool:
    """True when two specs name the same data: canonical forms alike, and synthetic options compared as values
    ('synthetic:classes=4,n=64' is 'synthetic:n=64,classes=4,seed=0')."""
    a, b = canonical_spec(a), canonical_spec(b)
    if a == b:
        return True
    try:
        (name_a, arg_a), (name_b, arg_b) = _parse_spec(a), _parse_spec(b)
        return name_a == name_b == "synthetic" and _synthetic_options(arg_a, {}) == _synthetic_options(arg_b, {})
    except UserError:
        return False


def display_name(spec: str) -> str:
    """A short label for titles: 'imagefolder:/long/path/cifar10-jpg-train.tar.gz' -> 'cifar10-jpg-train.tar.gz'.

    Other specs are returned unchanged ('digits', 'synthetic:n=64'); a path would crowd out a figure's title.
    """
    try:
        name, arg = _parse_spec(spec)  # the same name normalisation and aliases as loading uses
    except UserError:
        return str(spec)
    if name == "imagefolder" and arg:
        return Path(arg.rstrip("/\\")).name or arg
    return str(spec)


def _parse_spec(spec: str) -> tuple[str, str]:
    """'imagefolder:/x' -> ('imagefolder', '/x'); 'CIFAR10' -> ('cifar10', '')."""
    if not isinstance(spec, str) or not spec.strip():
        raise UserError(f"dataset must be a name such as 'digits', got {spec!r}; valid names: {', '.join(DATASETS)}")
    name, _, arg = spec.strip().partition(":")
    name = name.strip().lower().replace("_", "-")
    name = {"fashionmnist": "fashion-mnist", "image-folder": "imagefolder"}.get(name, name)
    if name not in DATASETS:
        raise UserError(
            f"unknown dataset {name!r}; valid names are {', '.join(DATASETS)} "
            f"(imagefolder takes a path: imagefolder:PATH)"
        )
    return name, arg.strip()


def _no_options(name: str, arg: str, options: dict) -> None:
    if arg:
        raise UserError(f"dataset {name!r} takes nothing after ':' (got {arg!r}); write just {name!r}")
    if options:
        raise UserError(f"dataset {name!r} takes no options (got {', '.join(sorted(options))}); remove them")


def _to_rgb_uint8(images: torch.Tensor) -> torch.Tensor:
    """(N, H, W) or (N, 1|3, H, W) uint8 -> contiguous (N, 3, H, W) uint8."""
    if images.dim() == 3:
        images = images.unsqueeze(1)
    if images.shape[1] == 1:
        images = images.expand(-1, 3, -1, -1)
    return images.contiguous()


# ----------------------------------------------------------------------------------------------------------
# digits: scikit-learn's bundled 8x8 digits
# ----------------------------------------------------------------------------------------------------------


@lru_cache(maxsize=1)
def _digits_all() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """All 1,797 digits as (N, 3, 32, 32) uint8, their labels, and the fixed train/test index split."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = torch.from_numpy(digits.images).float().unsqueeze(1) / 16.0  # values 0..16 -> 0..1
    x = F.interpolate(x, size=(32, 32), mode="bilinear", align_corners=False)
    images = _to_rgb_uint8((x * 255).round().clamp(0, 255).to(torch.uint8))
    labels = torch.from_numpy(digits.target).long()
    train_idx, test_idx = train_test_split(
        np.arange(len(labels)), test_size=HOLDOUT_FRACTION, stratify=digits.target, random_state=0
    )
    return images, labels, torch.from_numpy(np.sort(train_idx)), torch.from_numpy(np.sort(test_idx))


def _digits(split: str) -> ImageDataset:
    images, labels, train_idx, test_idx = _digits_all()
    idx = train_idx if split == "train" else test_idx
    return ImageDataset(images[idx], labels[idx], [str(d) for d in range(10)], "digits", split)


# ----------------------------------------------------------------------------------------------------------
# synthetic: seeded procedural colour patterns
# ----------------------------------------------------------------------------------------------------------

_SYNTHETIC_DEFAULTS = {"n": 512, "classes": 4, "size": 16, "seed": 0}


def _synthetic_options(arg: str, options: dict) -> dict[str, int]:
    """Merge 'n=256,classes=4' from the spec string with keyword options (keywords win)."""
    given: dict[str, object] = {}
    for item in filter(None, (s.strip() for s in arg.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"synthetic option {item!r} is not key=value; write e.g. synthetic:n=256,classes=4")
        given[key.strip()] = value.strip()
    given.update(options)
    merged = dict(_SYNTHETIC_DEFAULTS)
    for key, value in given.items():
        if key not in merged:
            raise UserError(f"unknown synthetic option {key!r}; valid options are {', '.join(_SYNTHETIC_DEFAULTS)}")
        try:
            merged[key] = int(value)  # type: ignore[arg-type]
        except (TypeError, ValueError):
            raise UserError(f"synthetic option {key}={value!r} must be a whole number") from None
    # One class would make every label the same, and every accuracy and clustering score 1.0 whatever is learnt.
    if merged["classes"] < 2 or merged["n"] < 4 * merged["classes"] or merged["size"] < 4:
        raise UserError(
            f"synthetic needs classes >= 2, n >= 4 * classes and size >= 4 "
            f"(got n={merged['n']}, classes={merged['classes']}, size={merged['size']})"
        )
    gigabytes = merged["n"] * 3 * merged["size"] ** 2 / 1e9  # uint8 images, made at once
    if gigabytes > 8:
        raise UserError(f"synthetic:n={merged['n']},size={merged['size']} would be {gigabytes:,.0f} GB of images; "
                        f"synthetic data is for tests and toys: keep n·3·size² under 8 GB (e.g. size=32)")
    return merged


def _smooth_patterns(count: int, size: int, g: torch.Generator) -> torch.Tensor:
    """`count` random smooth colour patterns, (count, 3, size, size) in [0, 1].

    Each channel is a sum of three plane waves with small integer frequencies, so a pattern is periodic
    over the image and any circular shift of it is seamless.
    """
    waves = 3
    freq = torch.randint(-2, 3, (count, 3, waves, 2), generator=g).float()
    phase = torch.rand(count, 3, waves, generator=g) * 2 * torch.pi
    amp = 0.25 + 0.5 * torch.rand(count, 3, waves, generator=g)
    pos = torch.arange(size).float() / size
    y, x = torch.meshgrid(pos, pos, indexing="ij")
    arg = 2 * torch.pi * (freq[..., 0, None, None] * y + freq[..., 1, None, None] * x) + phase[..., None, None]
    return 0.5 + 0.4 * torch.tanh((amp[..., None, None] * torch.cos(arg)).sum(dim=2))


def _synthetic(split: str, n: int, classes: int, size: int, seed: int) -> ImageDataset:
    """Procedural images whose class is easy to learn but not to read off the raw pixels.

    Every class owns one fixed smooth pattern. A sample is its class pattern circularly shifted to a random
    position, mixed half-and-half with a random pattern of its own, brightness-scaled by 0.7-1.3, plus pixel
    noise. Raw-pixel kNN on the default 512 images gets ~85% and a linear probe on pixels near chance, while
    any shift-invariant feature (colour and frequency content) separates the classes almost perfectly -- the
    kind of invariance self-supervised training has to discover. Same options -> identical tensors; train
    and test share the class patterns but not the samples.
    """
    protos = _smooth_patterns(classes, size, torch.Generator().manual_seed(seed * 3))
    count = n if split == "train" else n // 4
    g = torch.Generator().manual_seed(seed * 3 + (1 if split == "train" else 2))
    labels = (torch.arange(count) % classes)[torch.randperm(count, generator=g)]
    shifts = torch.randint(0, size, (count, 2), generator=g)
    brightness = 0.7 + 0.6 * torch.rand(count, generator=g)
    images = torch.empty(count, 3, size, size, dtype=torch.uint8)
    pos, channels = torch.arange(size), torch.arange(3)
    for start in range(0, count, 4096):  # chunks bound the float memory for large n
        sl = slice(start, start + 4096)
        rows = (pos[None, :] + shifts[sl, 0, None]) % size  # (b, size): row r of the sample = row r+dy of the pattern
        cols = (pos[None, :] + shifts[sl, 1, None]) % size
        b = rows.shape[0]
        x = protos[  # (b, 3, size, size): advanced indexing broadcasts sample x channel x row x column
            labels[sl, None, None, None], channels[None, :, None, None], rows[:, None, :, None], cols[:, None, None, :]
        ]
        x = 0.5 * x + 0.5 * _smooth_patterns(b, size, g)
        x = x * brightness[sl, None, None, None] + 0.08 * torch.randn(b, 3, size, size, generator=g)
        images[sl] = (x.clamp(0, 1) * 255).round().to(torch.uint8)
    name = f"synthetic:n={n},classes={classes},size={size},seed={seed}"
    return ImageDataset(images, labels, [f"pattern{c}" for c in range(classes)], name, split)


# ----------------------------------------------------------------------------------------------------------
# torchvision datasets (downloaded once, converted once)
# ----------------------------------------------------------------------------------------------------------

# name -> (torchvision class, how to ask it for a split)
_TORCHVISION = {
    "cifar10": ("CIFAR10", "train"),
    "cifar100": ("CIFAR100", "train"),
    "stl10": ("STL10", "split"),
    "mnist": ("MNIST", "train"),
    "fashion-mnist": ("FashionMNIST", "train"),
}


def _torchvision(name: str, split: str, data_dir: Path) -> ImageDataset:
    """One split of a torchvision dataset; `split` is "train", "test" or (STL-10) "train+unlabeled"."""
    cache = data_dir / f"{name}-{split}.pt"
    cached = _read_cache(cache, ("classes", list))
    if cached is None:
        try:
            import torchvision
        except ImportError:
            raise UserError(
                f"dataset {name!r} needs torchvision; pip install torchvision, or use {OFFLINE_ALTERNATIVES}"
            ) from None
        class_name, split_arg = _TORCHVISION[name]
        cls = getattr(torchvision.datasets, class_name)
        kwargs = {"split": split} if split_arg == "split" else {"train": split == "train"}
        try:
            raw = cls(root=str(data_dir / name), download=True, **kwargs)
        except (OSError, RuntimeError) as e:  # URLError, HTTPError, timeouts are OSErrors
            raise DataUnavailableError(
                f"could not download {name!r} into {data_dir / name} ({type(e).__name__}: {e}); "
                f"if this machine is offline, use {OFFLINE_ALTERNATIVES} instead"
            ) from None
        data = raw.data
        data = torch.as_tensor(np.asarray(data)) if not isinstance(data, torch.Tensor) else data
        if data.dim() == 4 and data.shape[-1] == 3:  # CIFAR stores (N, H, W, 3)
            data = data.permute(0, 3, 1, 2)
        targets = getattr(raw, "targets", None)
        if targets is None:
            targets = raw.labels  # STL-10
        cached = {
            "images": _to_rgb_uint8(data.to(torch.uint8)),
            "labels": torch.as_tensor(np.asarray(targets), dtype=torch.int64),  # STL-10: -1 = unlabelled
            "classes": [str(c) for c in raw.classes],
        }
        _write_cache(cache, cached)
    return ImageDataset(cached["images"], cached["labels"], cached["classes"], name, split.partition("+")[0])


# ----------------------------------------------------------------------------------------------------------
# Cache files: written atomically, read defensively
# ----------------------------------------------------------------------------------------------------------


def _read_cache(path: Path, extra: tuple[str, type]) -> dict | None:
    """The cached data at `path`, or None when missing, from an old format, or unreadable (then rebuilt).

    `extra` names one more entry the file must hold, with its type: ("classes", list) for a single split,
    ("parts", dict) for an imagefolder source.
    """
    if not path.is_file():
        return None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # a truncated or foreign file: ignore it and decode again
        log.warning("ignoring unreadable cache %s (%s); rebuilding it", path, e)
        return None
    ok = (
        isinstance(obj, dict)
        and obj.get("format") == CACHE_FORMAT
        and isinstance(obj.get("images"), torch.Tensor)
        and obj["images"].dtype == torch.uint8
        and isinstance(obj.get("labels"), torch.Tensor)
        and obj["labels"].dtype == torch.int64
        and isinstance(obj.get(extra[0]), extra[1])
    )
    return obj if ok else None


def _write_cache(path: Path, obj: dict) -> None:
    """Save via a temporary file + os.replace, so an interrupted save never leaves a half-written cache."""
    obj["format"] = CACHE_FORMAT
    tmp = path.with_name(f"{path.name}.tmp{os.getpid()}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except (OSError, RuntimeError) as e:  # a read-only data dir or a full disk (RuntimeError from torch.save)
        warnings.warn(f"could not write the dataset cache {path} ({e}); the data will be decoded again next time")
    finally:  # also on Ctrl-C: a half-written temporary file (150 MB for CIFAR) is never left behind
        with contextlib.suppress(OSError):  # e.g. a data dir that is a file: there is no temporary file either
            tmp.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------------------
# imagefolder: folders and tar archives of class sub-folders
# ----------------------------------------------------------------------------------------------------------

_IMAGE_SUFFIXES = {".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".gif", ".webp", ".tif", ".tiff", ".ppm",
                   ".pgm", ".pbm", ".pnm", ".tga", ".avif"}
# Folders of these names next to train/ hold a data set's test split when there is no test/ (ImageNet's val/).
_TEST_ALIASES = ("val", "valid", "validation")
_ARCHIVE_SUFFIXES = (".tar", ".tar.gz", ".tgz", ".tar.bz2", ".tbz2", ".tar.xz", ".txz")


def _is_archive(path: Path) -> bool:
    return path.name.lower().endswith(_ARCHIVE_SUFFIXES)


def _is_hidden(relpath: str) -> bool:
    """Hidden files and folders, and macOS '._x.jpg' / '__MACOSX' litter: never part of a data set."""
    return any(p.startswith(".") or p == "__MACOSX" for p in PurePosixPath(relpath).parts)


def _is_image(relpath: str) -> bool:
    """An image file we should read (by its extension), outside hidden folders."""
    return not _is_hidden(relpath) and PurePosixPath(relpath).suffix.lower() in _IMAGE_SUFFIXES


def _warn_left_out(source: Path, relpaths: list[str]) -> None:
    """Say which files were not read because they are not images of a known type (a folder of .heic photos
    would otherwise vanish from the data set without a word)."""
    if relpaths:
        kinds = Counter(PurePosixPath(r).suffix.lower() or PurePosixPath(r).name for r in relpaths)
        shown = ", ".join(f"{kind} ×{n}" for kind, n in kinds.most_common(5))
        warnings.warn(f"left out {len(relpaths)} file(s) in {source} that are not images of a type read here "
                      f"({shown}); convert any images among them to .png or .jpg", stacklevel=4)


def _warn_empty_folders(source: Path, folders: list[str], image_relpaths: list[str]) -> None:
    """Name the folders with no image anywhere in them: an empty class folder is a class left out, and torchvision's
    ImageFolder refuses one where this loader would otherwise drop it without a word."""
    holding = {str(PurePosixPath(rel).parents[i]) for rel in image_relpaths
               for i in range(len(PurePosixPath(rel).parts) - 1)}
    empty = sorted(f for f in folders if f not in holding and not _is_hidden(f))
    if empty:
        warnings.warn(f"{len(empty)} folder(s) in {source} hold no images and are left out: "
                      f"{', '.join(f + '/' for f in empty[:5])}{', …' if len(empty) > 5 else ''}", stacklevel=4)


def _walk_files(root: Path, folders: list[str] | None = None):
    """Every file below `root`, following symbolic links to folders (a subset built from links to class folders
    is a common layout), each real folder once (a link to a parent folder cannot loop). The folders visited
    below `root` are appended to `folders` (relative posix paths) when a list is given."""
    seen = set()
    for folder, subfolders, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in seen:
            subfolders[:] = []
            continue
        seen.add(real)
        if folders is not None and Path(folder) != root:
            folders.append(Path(folder).relative_to(root).as_posix())
        subfolders.sort()
        for filename in filenames:
            path = Path(folder) / filename
            if path.is_file():
                yield path


def _imagefolder(path_arg: str, data_dir: Path) -> tuple[ImageDataset, ImageDataset]:
    """Both splits of imagefolder:PATH (see `_find_sources` for the layouts understood)."""
    if not path_arg:
        raise UserError(
            "imagefolder needs a path; write imagefolder:PATH with a folder or .tar.gz of class sub-folders"
        )
    path = Path(path_arg).expanduser()
    if not path.exists():
        raise UserError(
            f"imagefolder path {path} does not exist; pass a folder of class sub-folders or a .tar/.tar.gz of one"
        )
    path = path.resolve()
    name = f"imagefolder:{path}"
    primary, sibling = _find_sources(path)
    parts = _decoded(primary, data_dir)

    if "train" in parts and "test" in parts:
        train, test = parts["train"], parts["test"]
    else:
        role = "train" if "train" in parts else "test" if "test" in parts else _role_from_name(primary.name)
        mine = parts.get("train") or parts.get("test") or parts["all"]
        if sibling is not None and role is not None:
            other = _decoded(sibling, data_dir)
            theirs = other.get("test" if role == "train" else "train") or other.get("all")
            if theirs is None:
                raise UserError(
                    f"{sibling} holds no {'test' if role == 'train' else 'train'} images; "
                    f"give it a {'test' if role == 'train' else 'train'}/<class>/ layout or class sub-folders"
                )
            train, test = (mine, theirs) if role == "train" else (theirs, mine)
        else:
            train, test = _holdout(mine)

    if (test["labels"] == UNLABELLED).any():
        raise UserError(f"the test images of {path} include an unlabelled/ folder, but test images need a class to "
                        f"be scored against; move it into the training images")
    classes = sorted(set(train["classes"]) | set(test["classes"]))  # one label space for both splits
    if len(classes) == 1:
        warnings.warn(f"{path} has one class ({classes[0]}), so every image has the same label and the accuracies "
                      f"and clustering scores read 1.0 whatever is learnt; give it a sub-folder per class",
                      stacklevel=3)
    unseen = sorted(set(test["classes"]) - set(train["classes"]))
    if unseen:  # evaluation predicts training classes only: these test images are scored wrong whatever is learnt
        warnings.warn(f"the test images of {path} have classes the training images lack ({', '.join(unseen[:5])}"
                      f"{', …' if len(unseen) > 5 else ''}): kNN and the linear probe can never predict them, so "
                      f"the accuracies are capped; check the class folders of both splits", stacklevel=3)
    return _as_dataset(train, classes, name, "train"), _as_dataset(test, classes, name, "test")


def _as_dataset(part: dict, classes: list[str], name: str, split: str) -> ImageDataset:
    lookup = torch.tensor([classes.index(c) for c in part["classes"]] + [UNLABELLED], dtype=torch.int64)
    labels = lookup[part["labels"]] if len(part["labels"]) else part["labels"]  # index -1 → UNLABELLED
    return ImageDataset(part["images"], labels, classes, name, split)


def _role_from_name(filename: str) -> str | None:
    """'cifar10-jpg-train.tar.gz' -> 'train', 'x_test' -> 'test', 'photos' -> None."""
    for role in SPLITS:
        if re.search(rf"(?<![a-z]){role}(?![a-z])", filename.lower()):
            return role
    return None


def _sibling(path: Path) -> Path | None:
    """The matching other half of a train/test pair: 'x-train.tar.gz' <-> 'x-test.tar.gz', if it exists."""
    role = _role_from_name(path.name)
    if role is None:
        return None
    other = "test" if role == "train" else "train"
    twin = path.with_name(re.sub(rf"(?<![a-zA-Z]){role}(?![a-zA-Z])", other, path.name, flags=re.IGNORECASE))
    return twin if twin != path and twin.exists() else None


def _find_sources(path: Path) -> tuple[Path, Path | None]:
    """Decide what to read for imagefolder:PATH: (primary source, optional sibling holding the other split).

    Layouts understood:
      (a) a folder of class sub-folders               -> 20% held out as test
      (b) a folder with train/<class>/ and test/<class>/ (any case; val/ when there is no test/)
      (c) a .tar/.tar.gz/.tgz archive of (a) or (b), read directly (nothing is extracted to disk)
      (d) 'x-train.tar.gz' holding train/<class>/ only, next to 'x-test.tar.gz' holding the test split
      (e) a folder with no images in it but such a train/test pair of archives (or a single archive)
    """
    if path.is_file():
        if not _is_archive(path):
            zipped = " (a .zip: unzip it and pass the folder, or repack it with `tar czf NAME.tar.gz FOLDER`)"
            raise UserError(
                f"imagefolder path {path} is a file but not a .tar/.tar.gz/.tgz archive"
                f"{zipped if path.suffix.lower() == '.zip' else ''}; pass a folder of class sub-folders or an "
                f"archive of one"
            )
        return path, _sibling(path)
    has_images = any(_is_image(p.relative_to(path).as_posix()) for p in _walk_files(path))
    if has_images:
        return path, _sibling(path)
    archives = sorted(p for p in path.iterdir() if p.is_file() and _is_archive(p))
    zips = sorted(p.name for p in path.iterdir() if p.is_file() and p.suffix.lower() == ".zip")
    if not archives and zips:
        raise UserError(f"imagefolder path {path} holds {', '.join(zips)}, and .zip files are not read; unzip it "
                        f"there (or repack it with `tar czf NAME.tar.gz FOLDER`)")
    train_archives = [p for p in archives if _role_from_name(p.name) == "train"]
    if len(train_archives) == 1:
        return train_archives[0], _sibling(train_archives[0])
    if len(archives) == 1:
        return archives[0], _sibling(archives[0])
    found = ", ".join(p.name for p in archives) or "no images or archives"
    raise UserError(
        f"imagefolder path {path} holds {found}; pass a folder of class sub-folders, "
        f"or a folder with exactly one archive or one *train*/*test* archive pair"
    )


def _list_files(source: Path) -> tuple[list[tuple[str, Path]], str, list[str], list[str]]:
    """Images in a folder as (relative posix path, file) pairs, a fingerprint of their sizes and times, the
    other files that are not hidden (not read: `_warn_left_out` names them), and every sub-folder."""
    files, stamp, left_out, folders = [], hashlib.sha1(), [], []
    for p in sorted(_walk_files(source, folders)):
        rel = p.relative_to(source).as_posix()
        if _is_image(rel):
            st = p.stat()
            files.append((rel, p))
            stamp.update(f"{rel}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
        elif not _is_hidden(rel):
            left_out.append(rel)
    return files, stamp.hexdigest(), left_out, folders


def _cache_path(source: Path, data_dir: Path, content_stamp: str) -> Path:
    """data_dir/cache/imagefolder-<name>-<key>.pt, the key hashing the resolved path with the archive's size and
    mtime, or for a folder with every image file's size and mtime (a folder's own mtime misses edits inside)."""
    if source.is_file():
        st = source.stat()
        content_stamp = f"{st.st_size}\0{st.st_mtime_ns}"
    key = hashlib.sha1(f"{source}\0{content_stamp}\0{CACHE_FORMAT}".encode()).hexdigest()[:16]
    safe = re.sub(r"[^A-Za-z0-9._-]+", "_", source.name)[:48]
    return data_dir / "cache" / f"imagefolder-{safe}-{key}.pt"


def _decoded(source: Path, data_dir: Path) -> dict[str, dict]:
    """The images in one folder or archive, grouped by split: {'train'|'test'|'all': part}.

    A part is {'images': uint8 (N,3,H,W), 'labels': int64 (N,), 'classes': [names]}, labels indexing
    its own classes. Read from the cache when it is there; decoded and cached otherwise.
    """
    if source.is_dir():
        files, stamp, left_out, folders = _list_files(source)
    else:
        files, stamp, left_out, folders = None, "", [], []
    cache = _cache_path(source, data_dir, stamp)
    cached = _read_cache(cache, ("parts", dict))
    if cached is not None:
        try:
            return {
                split: {
                    "images": cached["images"][start:stop],
                    "labels": cached["labels"][start:stop],
                    "classes": list(classes),
                }
                for split, (start, stop, classes) in cached["parts"].items()
            }
        except (TypeError, ValueError):  # a damaged index: fall through and decode again
            pass

    log.info("decoding the images in %s once; the result is cached in %s", source, cache)
    if files is None:
        items = _read_archive(source)
    else:
        items = [(rel, p.read_bytes()) for rel, p in files]
        _warn_left_out(source, left_out)
        _warn_empty_folders(source, folders, [rel for rel, _ in files])
    splits = {split: _decode_part(source, split, members) for split, members in _group(source, items).items()}
    sizes = {split: tuple(part["images"].shape[2:]) for split, part in splits.items()}
    if len(set(sizes.values())) > 1:  # the splits are one data set: one network must take both
        found = ", ".join(f"{split} {w}x{h}" for split, (h, w) in sizes.items())
        raise UserError(f"the splits in {source} have images of different sizes ({found}); resize them all to one "
                        f"size first, e.g. with ImageMagick: `mogrify -auto-orient -resize 32x32! FILES`")
    # Store the parts back to back in one tensor so the cache file is a handful of tensors, not thousands.
    offsets, start = {}, 0
    for split, part in splits.items():
        offsets[split] = [start, start + len(part["labels"]), part["classes"]]
        start += len(part["labels"])
    _write_cache(
        cache,
        {
            "images": torch.cat([p["images"] for p in splits.values()]),
            "labels": torch.cat([p["labels"] for p in splits.values()]),
            "parts": offsets,
            "source": str(source),
        },
    )
    _remove_superseded_caches(cache, source)
    return splits


def _remove_superseded_caches(cache: Path, source: Path) -> None:
    """Delete the caches of this same folder or archive made before it changed (or by an older cache format):
    nothing reads them again, and for CIFAR each is ~180 MB. Another source with the same file name is kept —
    its cache names a different path."""
    if not cache.is_file():  # the new cache could not be written: keep what there is
        return
    for old in cache.parent.glob(cache.name.rsplit("-", 1)[0] + "-*.pt"):
        if old == cache:
            continue
        try:  # mmap: only the small "source" entry is read, not the images
            stale = torch.load(old, map_location="cpu", weights_only=True, mmap=True).get("source") == str(source)
        except Exception:  # unreadable, or not ours: leave it alone
            continue
        if stale:
            with contextlib.suppress(OSError):
                old.unlink()
                log.info("removed %s, the cache of %s before it changed", old, source)


class _TailReader:
    """A read-only file that remembers the last 1,024 bytes read through it: a complete tar archive ends with
    two blocks of zeros, so what is left there tells a whole archive from one cut short at a file boundary."""

    def __init__(self, fileobj):
        self.fileobj, self.tail = fileobj, b""

    def read(self, size: int = -1) -> bytes:
        data = self.fileobj.read(size)
        self.tail = (self.tail + data)[-1024:]
        return data


def _open_decompressed(archive: Path):
    """The archive's tar stream: gzip, bzip2 and xz are recognised by their first bytes, not by the name."""
    import bz2
    import gzip
    import lzma

    with open(archive, "rb") as f:
        magic = f.read(6)
    if magic.startswith(b"\x1f\x8b"):
        return gzip.open(archive, "rb")
    if magic.startswith(b"BZh"):
        return bz2.open(archive, "rb")
    if magic.startswith(b"\xfd7zXZ\x00"):
        return lzma.open(archive, "rb")
    return open(archive, "rb")


def _read_archive(archive: Path) -> list[tuple[str, bytes]]:
    """Every image file in a tar archive as (member path, bytes), read in one sequential pass.

    An archive cut short (a download that stopped) is refused: tar's stream format cannot tell the end of a
    truncated archive from its real end when the cut falls between two files, so the compressed stream is read
    to its end marker and the tar stream must end with its two blocks of zeros."""
    items, left_out, links, folders = [], [], [], []
    try:
        with _open_decompressed(archive) as stream:
            reader = _TailReader(stream)
            with tarfile.open(fileobj=reader, mode="r|") as tar:  # stream mode: one forward pass, fast
                for member in tar:
                    name = member.name.removeprefix("./")
                    if member.isfile() and _is_image(name):
                        items.append((name, tar.extractfile(member).read()))
                    elif member.issym() or member.islnk():  # a stream cannot go back to what a link points to
                        links.append(name)
                    elif member.isdir() and name.strip("/") not in ("", "."):
                        folders.append(name.strip("/"))
                    elif member.isfile() and not _is_hidden(name):
                        left_out.append(name)
            while reader.read(1 << 20):  # the rest (padding) up to the compressed stream's end marker
                pass
            complete = reader.tail == bytes(len(reader.tail)) and len(reader.tail) == 1024
    except EOFError:  # the compressed stream stops before its end marker
        complete = False
    except tarfile.ReadError as e:
        if "unexpected end of data" not in str(e):  # a cut inside a file: the same as any other cut
            raise UserError(f"could not read the archive {archive} ({e}); check that it is a complete .tar/.tar.gz "
                            f"file") from None
        complete = False
    except (tarfile.TarError, OSError) as e:
        raise UserError(
            f"could not read the archive {archive} ({e}); check that it is a complete .tar/.tar.gz file"
        ) from None
    if not complete:
        raise UserError(f"the archive {archive} ends early (it was cut short, e.g. by a download that stopped); "
                        f"download or copy it again")
    if links:
        warnings.warn(f"the archive {archive} holds {len(links)} link(s) (e.g. {links[0]}), which are not followed: "
                      f"what they point to is left out; make the archive with `tar -h` (--dereference)", stacklevel=4)
    _warn_left_out(archive, left_out)
    _warn_empty_folders(archive, folders, [name for name, _ in items])
    return items


def _group(source: Path, items: list[tuple[str, bytes]]) -> dict[str, list[tuple[str, str, bytes]]]:
    """Sort image files into splits and classes by their paths: {split: [(class, path, bytes), ...]}.

    'train/cat/1.jpg' -> split 'train', class 'cat'; 'cat/1.jpg' -> split 'all', class 'cat'. A single
    wrapping folder ('photos/cat/1.jpg', as `tar czf photos.tgz photos` makes) is skipped over. Split folders
    are matched whatever their case (Train/); without a test/ folder, val/ (or valid/, validation/) is the test
    split, as in ImageNet's layout. Images in other folders next to the split folders are not used (a warning
    names them).
    """
    if not items:
        raise UserError(f"found no images (.jpg, .png, ...) in {source}; it should hold class sub-folders of images")
    paths = [PurePosixPath(rel).parts for rel, _ in items]
    depth = 0
    def one_wrapper(d: int) -> bool:  # every image sits below the same non-split folder at depth d
        return (all(len(p) > d + 2 for p in paths) and len({p[d] for p in paths}) == 1
                and paths[0][d].lower() not in SPLITS)

    while one_wrapper(depth):
        depth += 1
    tops = {p[depth].lower() for p in paths}
    has_splits = bool(tops & set(SPLITS))
    test_folder = "test" if "test" in tops else next((a for a in _TEST_ALIASES if a in tops), None)
    if has_splits and test_folder not in (None, "test"):
        warnings.warn(f"{source} has no test/ folder: its {test_folder}/ folder is used as the test split",
                      stacklevel=4)

    groups: dict[str, list[tuple[str, str, bytes]]] = {}
    unused: Counter = Counter()
    for parts, (rel, data) in zip(paths, items):
        parts = parts[depth:]
        if has_splits:
            top = parts[0].lower()
            split = "test" if top == test_folder else top
            if split not in SPLITS:
                unused[parts[0]] += 1  # e.g. a val/ folder next to train/ and test/
                continue
            parts = parts[1:]
        else:
            split = "all"
        if len(parts) < 2:
            split_folder = PurePosixPath(rel).parts[depth]
            raise UserError(
                f"image {rel} in {source} is not inside a class sub-folder; put every image in a folder named "
                f"after its class" + (f" (a folder named {split_folder}/ is read as a split holding class "
                                      f"folders: if {split_folder} is a class, rename its folder, e.g. to "
                                      f"{split_folder}_)" if has_splits else "")
            )
        groups.setdefault(split, []).append((parts[0], rel, data))
    if unused:
        shown = ", ".join(f"{folder}/ ({n} images)" for folder, n in unused.most_common(5))
        warnings.warn(f"{source} is split into train/ and test/ folders, so the images next to them are not used: "
                      f"{shown}", stacklevel=4)
    return groups


def _decode_image(data: bytes) -> np.ndarray:
    """One encoded image -> (H, W, 3) uint8 RGB, turned upright as its EXIF orientation says (a phone photo is
    stored sideways with a note to rotate it), 16-bit grey scaled to 8 bits (PIL's convert would clip it)."""
    from PIL import Image, ImageOps

    if not data:
        raise ValueError("empty file")
    with Image.open(io.BytesIO(data)) as img:
        img = ImageOps.exif_transpose(img)
        if img.mode.startswith("I;16") or (img.mode == "I" and np.asarray(img).max(initial=0) > 255):
            grey = np.asarray(img).astype(np.float64) / 257.0  # 0..65535 -> 0..255
            return np.repeat(np.clip(np.rint(grey), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
        return np.asarray(img.convert("RGB"))


def _decode_part(source: Path, split: str, members: list[tuple[str, str, bytes]]) -> dict:
    """Decode one split's images (in a fixed order: by class, then path) into a part dict; images of an
    unlabelled/ folder get label UNLABELLED and no class.

    A plain loop: a 32x32 JPEG decodes in ~0.1 ms, and PIL holds the GIL for such small images, so
    threads would not help; 50,000 CIFAR images take a few seconds.
    """
    members = sorted(members, key=lambda m: (m[0], m[1]))
    classes = sorted({cls for cls, _, _ in members if cls.lower() not in UNLABELLED_FOLDERS})
    arrays, labels, failed = [], [], []
    for cls, rel, data in members:
        try:
            arrays.append(_decode_image(data))
        except Exception as e:  # noted, and the other files still tried: one message lists every bad file
            # PIL's "cannot identify image file <_io.BytesIO object at 0x…>" names a buffer, not the file: say it plainly.
            failed.append(f"{rel} ({'not an image format PIL can read' if type(e).__name__ == 'UnidentifiedImageError' else e})")
            continue
        labels.append(UNLABELLED if cls.lower() in UNLABELLED_FOLDERS else classes.index(cls))
    if failed:
        more = f" and {len(failed) - 5} more" if len(failed) > 5 else ""
        raise UserError(f"could not decode {len(failed)} image file(s) in {source}: {'; '.join(failed[:5])}{more}; "
                        f"remove or re-save {'that file' if len(failed) == 1 else 'those files'}")

    sizes = Counter((a.shape[1], a.shape[0]) for a in arrays)
    if len(sizes) > 1:
        found = ", ".join(f"{w}x{h} ({n} image{'s' if n > 1 else ''})" for (w, h), n in sizes.most_common(5))
        (w, h), _ = sizes.most_common()[-1]
        odd = next(rel for (_, rel, _), a in zip(members, arrays) if (a.shape[1], a.shape[0]) == (w, h))
        raise UserError(
            f"the {'' if split == 'all' else split + ' '}images in {source} have different sizes ({found}; e.g. "
            f"{odd} is {w}x{h}); resize them all to one size first, e.g. with ImageMagick: "
            f"`mogrify -auto-orient -resize 32x32! FILES`"
        )
    images = torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()
    return {"images": images, "labels": torch.tensor(labels, dtype=torch.int64), "classes": classes}


def _holdout(part: dict, fraction: float = HOLDOUT_FRACTION, seed: int = 0) -> tuple[dict, dict]:
    """Split one part into (train, test), holding out `fraction` of every class (stratified, deterministic);
    unlabelled images all stay in train."""
    g = torch.Generator().manual_seed(seed)
    labels = part["labels"]
    test_idx = []
    for c in range(len(part["classes"])):
        members = (labels == c).nonzero().flatten()
        members = members[torch.randperm(len(members), generator=g)]
        test_idx.append(members[: int(round(fraction * len(members)))])
    is_test = torch.zeros(len(labels), dtype=torch.bool)
    if test_idx:  # no classes at all (only unlabelled/): nothing to hold out, and the trainer says so
        is_test[torch.cat(test_idx)] = True

    def take(mask: torch.Tensor) -> dict:
        return {"images": part["images"][mask], "labels": labels[mask], "classes": part["classes"]}

    return take(~is_test), take(is_test)
