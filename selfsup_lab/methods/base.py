"""What every method shares: options, the context it is built in, and the training-step contract.

A method is an `nn.Module` that owns its backbone, heads and any running statistics (as buffers, so that
checkpoints and `--resume` carry them). The trainer owns everything else — data, augmentation, optimiser,
schedule, mixed precision, checkpoints — and talks to the method through a handful of hooks:

    out = method.training_step(views, indices)   # -> StepOutput(loss, logs, assignments)
    method.after_optimizer_step(progress)         # EMA teachers, prototype renormalisation
    method.on_train_start(trainer) / on_epoch_start(epoch, trainer) / on_epoch_end(epoch, trainer)

A methods/ file therefore reads like its section of METHODS.md and nothing else.
"""
from __future__ import annotations

import dataclasses
import numbers
import types
import typing
from dataclasses import dataclass, field

import numpy as np
import torch
import torch.nn as nn

from ..errors import Bounds, UserError, check_bounds


@dataclass
class MethodContext:
    """Facts about the run that a method may use to pick data-adaptive defaults."""

    num_train: int  # images in the training split
    num_classes: int  # classes of the dataset (used for K = C evaluation heads only, never for training)
    batch_size: int  # global batch size
    epochs: int
    steps_per_epoch: int
    image_size: int
    device: torch.device = field(default_factory=lambda: torch.device("cpu"))


@dataclass
class StepOutput:
    loss: torch.Tensor  # scalar, float32, mean over this rank's anchors
    logs: dict[str, torch.Tensor | float] = field(default_factory=dict)  # scalars averaged per epoch
    assignments: torch.Tensor | None = None  # hard cluster ids of this rank's images (occupancy)
    # The same head's plain argmax with the balancing rule switched off (no Sinkhorn, duals or size estimate),
    # from the same forward pass: is the representation balanced by itself, or is the rule holding it up?
    assignments_without_rule: torch.Tensor | None = None


@dataclass
class NoOptions:
    """The options of a method that has none."""


class Method(nn.Module):
    """Base class: subclasses set `name`, `Options` (a dataclass of options with defaults), and implement
    `training_step`."""

    name: str = "base"
    Options: type = NoOptions
    num_views: int = 2  # global views per image (full-size crops)
    num_small_views: int = 0  # extra small crops (multi-crop), 0 = none
    small_view_size: int = 16
    num_clusters: int | None = None  # K of the head whose occupancy is tracked (clustering methods)

    def __init__(self, backbone: nn.Module, options, context: MethodContext):
        super().__init__()
        self.backbone = backbone
        self.options = options
        self.context = context

    # -- the contract ---------------------------------------------------------------------------------
    def training_step(self, views: list[torch.Tensor], indices: torch.Tensor) -> StepOutput:
        raise NotImplementedError

    def after_optimizer_step(self, progress: float) -> None:
        """Called after every optimiser step; `progress` = global step / total steps, in [0, 1]."""

    def on_train_start(self, trainer) -> None:
        """Called once before the first epoch of a fresh run (not on resume)."""

    def on_epoch_start(self, epoch: int, trainer) -> None:
        pass

    def on_epoch_end(self, epoch: int, trainer) -> None:
        pass

    def lr_scale(self, epoch: int) -> float:
        """Multiplier on the scheduled learning rate (CoKe trains epoch 0 at lr 0)."""
        return 1.0

    def extra_info(self) -> dict:
        """Values worth recording in config.json once the method is built (e.g. the K actually used)."""
        return {}

    # -- evaluation -------------------------------------------------------------------------------------
    def embed(self, images: torch.Tensor) -> torch.Tensor:
        """Backbone features: what kNN and the linear probe evaluate."""
        return self.backbone(images)

    def assign_clusters(self, images: torch.Tensor) -> torch.Tensor:
        """Hard cluster ids from the tracked head (K = `num_clusters`); clustering methods override this."""
        raise NotImplementedError(f"{self.name} has no cluster head")

    @property
    def has_class_sized_head(self) -> bool:
        """Whether the tracked head has K = number of classes, so its argmax can be scored against the labels.

        Any other K (no head, or K ≠ C) makes evaluation run spherical k-means with K = C on backbone
        features instead (METHODS.md §5), so that every method's ACC/NMI/ARI is measured with C clusters.
        """
        return (self.num_clusters == self.context.num_classes
                and type(self).assign_clusters is not Method.assign_clusters)

    def assign(self, images: torch.Tensor) -> torch.Tensor | None:
        """Hard cluster ids from the method's own K = C head, or None when it has none."""
        return self.assign_clusters(images) if self.has_class_sized_head else None


# --- options ------------------------------------------------------------------------------------------

def _unwrap_optional(annotation) -> tuple[object, object, bool]:
    """`int | None` → (int, its origin, True): the type a value must have, and whether None is allowed."""
    optional = type(None) in typing.get_args(annotation)
    origin = typing.get_origin(annotation)
    args = [a for a in typing.get_args(annotation) if a is not type(None)]
    if origin in (typing.Union, types.UnionType) and args:
        annotation, origin = args[0], typing.get_origin(args[0])
    return annotation, origin, optional


def _checked(value, annotation, key: str):
    """A value given from Python (or read back from a run's config) must already have the option's type; a whole
    float counts as an int, an int as a float, a list as a tuple."""
    annotation, origin, optional = _unwrap_optional(annotation)
    if value is None and optional:
        return None
    expected, ok = getattr(annotation, "__name__", str(annotation)), True
    if annotation is bool:
        ok = isinstance(value, (bool, np.bool_))
        value = bool(value) if ok else value
    elif annotation is int:
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)) and float(value).is_integer()
        value = int(value) if ok else value
    elif annotation is float:
        ok = isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))
        value = float(value) if ok else value
    elif origin in (tuple, list):
        expected = "one or more values"
        ok = isinstance(value, (tuple, list)) and len(value) > 0
        if ok:
            items = [_checked(v, typing.get_args(annotation)[0], key) for v in value]
            value = tuple(items) if origin is tuple else items
    elif annotation is str:
        ok = isinstance(value, str)
    if not ok:
        raise UserError(f"option '{key}' expects {expected}, got {value!r}")
    return value


def _convert(value, annotation, key: str):
    """Turn a `--set key=value` string into the option's declared type (other values: check theirs)."""
    if not isinstance(value, str):
        return _checked(value, annotation, key)
    text = value.strip()
    annotation, origin, optional = _unwrap_optional(annotation)
    if text.lower() in ("none", "null") and optional:
        return None
    try:
        if annotation is bool:
            if text.lower() in ("1", "true", "yes", "on"):
                return True
            if text.lower() in ("0", "false", "no", "off"):
                return False
            raise ValueError
        if annotation is int:
            return int(float(text)) if float(text).is_integer() else int(text)
        if annotation is float:
            return float(text)
        if origin in (tuple, list):
            inner = typing.get_args(annotation)[0] if typing.get_args(annotation) else float
            parts = [p for p in text.replace("(", "").replace(")", "").replace("[", "").replace("]", "").split(",") if p.strip()]
            if not parts:
                raise UserError(f"option '{key}' needs one or more values, e.g. {key}=10,20")
            items = [_convert(p, inner, key) for p in parts]
            return tuple(items) if origin is tuple else items
    except ValueError:
        raise UserError(f"option '{key}' expects {getattr(annotation, '__name__', annotation)}, got '{value}'") from None
    return text


def parse_options(options_cls: type, values: dict | None, method_name: str = "method"):
    """Build the method's options dataclass from user values, checking names, types and ranges."""
    values = dict(values or {})
    hints = typing.get_type_hints(options_cls)
    names = [f.name for f in dataclasses.fields(options_cls)]
    unknown = sorted(set(values) - set(names))
    if unknown:
        raise UserError(
            f"unknown option '{unknown[0]}' for {method_name}; valid options: {', '.join(names) or '(none)'}"
        )
    options = options_cls(**{k: _convert(v, hints[k], k) for k, v in values.items()})
    check_bounds(options, OPTION_BOUNDS, lambda name: f"option '{name}' of {method_name}")
    return options


# An option name means the same thing in every method that has it (a temperature is a softmax temperature,
# a momentum an EMA weight), so its valid range is stated once, here, by name. (The triplet's epsilon, a
# probability, is further held to (0, 1) by `rank_window`.)
OPTION_BOUNDS: Bounds = [
    (("temperature", "student_temperature", "teacher_temperature", "epsilon", "boost", "ae_noise"), lambda v: v > 0,
     "above 0"),
    (("base_momentum", "teacher_momentum", "size_momentum", "alpha"), lambda v: 0 <= v <= 1, "in [0, 1]"),
    (("ratio",), lambda v: 0 < v <= 1, "in (0, 1]"),
    (("dual_lr", "gamma", "sinkhorn_iterations", "freeze_prototypes_epochs", "queue_length", "queue_start_epoch",
      "num_small_views"), lambda v: v >= 0, "0 or more"),
    (("proj_hidden", "proj_dim", "pred_hidden", "kmeans_iters", "window_width", "expected_classes",
      "refresh_every", "ae_epochs", "ae_width"), lambda v: v >= 1, "1 or more"),
    (("num_prototypes", "num_clusters", "num_pseudo"), lambda v: v >= 2, "2 or more"),
]


def describe_options(options_cls: type) -> list[tuple[str, str, object]]:
    """(name, type, default) of each option, for `selfsup-lab methods`."""
    hints = typing.get_type_hints(options_cls)
    out = []
    for f in dataclasses.fields(options_cls):
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        out.append((f.name, getattr(hints[f.name], "__name__", str(hints[f.name])), default))
    return out


# --- data-adaptive number of clusters ---------------------------------------------------------------------

MIN_IMAGES_PER_CLUSTER = 20


def adaptive_num_clusters(requested: int, num_train: int, num_classes: int = 2) -> int:
    """The K a clustering head actually uses: never more clusters than the data can fill.

    Rule: K = min(requested, cap) with cap = num_train // 20, raised to the number of classes where that is
    more (so a dataset too small for 20 images per cluster still gets a K = C head); never below 2. A request
    below the number of classes is kept.
    With fewer than ~20 images per cluster on average, most clusters would be empty or hold a handful of
    near-duplicates, so occupancy statistics stop meaning anything. Examples: digits (1,437 training
    images) caps K at 71; CIFAR-10 (50,000) at 2,500. The K used is written to config.json.
    """
    cap = max(num_train // MIN_IMAGES_PER_CLUSTER, num_classes, 2)
    return max(2, min(int(requested), cap))
