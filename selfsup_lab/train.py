"""The training loop, shared by every method.

    data (uint8 tensor on the device) → batch of indices (random, or guided: samplers.py) → V augmented views
    → method.training_step → loss → backward → (average gradients over ranks) → optimiser step
    → method.after_optimizer_step (EMA teachers) → callbacks (progress bar, history, live plots)

and at every epoch end: occupancy statistics, the batches' same-class-negative rate, optional kNN,
history.jsonl, an atomic checkpoint.

Reproducibility: every epoch re-seeds all random number generators from (seed, epoch). A run interrupted
anywhere and resumed with `--resume` restarts from the last completed epoch with the same optimiser state
and the same random stream, so on a CPU it reproduces the uninterrupted run's weights exactly.
"""
from __future__ import annotations

import contextlib
import dataclasses
import errno
import functools
import json
import math
import numbers
import os
import shutil
import socket
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from . import distributed, samplers
from .errors import Bounds, TrainingDiverged, UserError, check_bounds

CHECKPOINT = "checkpoint.pt"


# --- configuration ------------------------------------------------------------------------------------

@dataclass
class TrainConfig:
    method: str = "simclr"
    dataset: str = "digits"
    epochs: int | None = None  # None: 40 on digits/synthetic, 100 otherwise
    batch_size: int = 256
    backbone: str = "auto"  # auto: convnet on CPU, resnet18 on GPU
    device: str = "auto"
    out: str | None = None  # run directory; default runs/<method>-<dataset>
    seed: int = 0
    optimizer: str = "sgd"  # sgd | lars
    lr: float | None = None  # None: 0.06·B/128 for SGD, 0.3·B/256 for LARS
    weight_decay: float = 5e-4  # not applied to BN parameters and biases
    momentum: float = 0.9
    # Area range of the random resized crop (the shared recipe: 0.08–1; CoKe's CIFAR code, SeCu, uses 0.3–1).
    # Small crops of small images often lose the object; every other part of the augmentation is fixed.
    crop_scale: tuple[float, float] = (0.08, 1.0)
    # Who makes the views: "device" (batched tensor ops on the training device, augment.Augmenter) or
    # "torchvision" (the same recipe image by image with torchvision's PIL transforms on the CPU: slow, the
    # reference to check the device pipeline against).
    augmentation: str = "device"
    # None: min(10, epochs // 10) — METHODS.md's 10 warm-up epochs from 100 epochs up; a short run (a 5-epoch
    # comparison, a 20-epoch lesson) keeps a tenth of its steps for warm-up rather than spending half or all on it
    warmup_epochs: int | None = None
    amp: bool | None = None  # bf16 autocast; None: on for CUDA (on a CPU only if True: most CPUs are slower in bf16)
    channels_last: bool | None = None  # None: on for CUDA
    # torch.compile the backbone: False, True (= "default") or a mode name. "reduce-overhead" replays the
    # compiled forward and backward as CUDA graphs — on a fast GPU a ResNet-18 step on 32 px images is
    # limited by how fast the CPU launches kernels, and a graph launches them all at once (CUDA only).
    compile: bool | str = False
    eval_every: int = 0  # kNN every N epochs (0: only at the end)
    knn_k: int = 200
    knn_temperature: float = 0.1
    occupancy_every: int = 0  # snapshot cluster counts every N steps (0: 4 times per epoch)
    data_dir: str | None = None
    train_subset: int | None = None  # train on a seeded subset of this many images (quick modes)
    sync_batchnorm: bool = True  # global-batch BN statistics when running on several processes
    figures: bool = True
    progress: bool = True
    method_options: dict = field(default_factory=dict)
    sampler: str = "auto"  # which images share a batch: auto (the method's choice) | random | guided (samplers.py)
    sampler_options: dict = field(default_factory=dict)  # guided: pseudo_labels, num_pseudo, refresh_every, ...

    def resolved_epochs(self) -> int:
        if self.epochs is not None:
            return self.epochs
        return 40 if self.dataset.split(":")[0] in ("digits", "synthetic") else 100


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


def resolve_compile_mode(value: bool | str, device: torch.device) -> str | None:
    """The torch.compile mode asked for by `compile` (None: do not compile)."""
    if value is False or value is None or value in ("", "none", "off", "false"):
        return None
    mode = "default" if value is True or value in ("true", "on") else str(value)
    if mode not in COMPILE_MODES:
        raise UserError(f"unknown compile mode '{value}'; choose one of: {', '.join(COMPILE_MODES)}")
    if mode == "reduce-overhead" and device.type != "cuda":
        raise UserError("--compile reduce-overhead replays CUDA graphs and needs a GPU; on a CPU use --compile")
    return mode


def uses_cuda_graphs(compile_mode: str | None, device: torch.device) -> bool:
    """Whether the compiled backbone is replayed as CUDA graphs: each training step must then be marked
    (`torch.compiler.cudagraph_mark_step_begin`), since a replay overwrites the last step's graph outputs."""
    return device.type == "cuda" and compile_mode in ("reduce-overhead", "max-autotune")


def resolve_device(name: str) -> torch.device:
    if not isinstance(name, str):  # torch.device objects included: a name keeps config.json readable
        raise UserError(f"--device must be a name such as 'auto', 'cpu' or 'cuda', got {name!r}")
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise UserError(f"unknown device '{name}'; use auto, cpu or cuda") from None
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise UserError(f"--device {name} was asked for but no GPU is visible; use --device cpu or auto")
        if device.index is not None and device.index >= torch.cuda.device_count():
            raise UserError(f"--device {name} was asked for but only {torch.cuda.device_count()} GPU(s) are visible "
                            f"(cuda:0 … cuda:{torch.cuda.device_count() - 1}); use one of those, or auto")
    elif device.type != "cpu":  # mps, xpu, meta, ...: the lab is written and tested for CPU and CUDA only
        raise UserError(f"--device {name} is not supported; use auto, cpu or cuda")
    return device


# --- optimisation -------------------------------------------------------------------------------------

class LARS(torch.optim.Optimizer):
    """SGD with momentum and a layer-wise trust ratio (You et al., 2017), as SimCLR/BYOL use it.

    For each parameter tensor w with gradient g (weight decay λ included):  update = g + λw, scaled by
    η·‖w‖/‖g + λw‖ so each layer moves by a fixed fraction of its own norm. BN parameters and biases
    (groups with `lars_exclude=True`) get plain SGD without weight decay, as is standard.
    """

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 0.0, trust: float = 0.001):
        super().__init__(params, dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust=trust,
                                      lars_exclude=False))

    @torch.no_grad()
    def step(self, closure=None):
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                update = p.grad
                if not group["lars_exclude"]:
                    update = update.add(p, alpha=group["weight_decay"])
                    w_norm, u_norm = torch.norm(p), torch.norm(update)
                    ratio = torch.where((w_norm > 0) & (u_norm > 0), group["trust"] * w_norm / u_norm,
                                        torch.ones_like(w_norm))
                    update = update.mul(ratio)
                buf = self.state[p].setdefault("momentum_buffer", torch.zeros_like(p))
                buf.mul_(group["momentum"]).add_(update)
                p.add_(buf, alpha=-group["lr"])


def build_optimizer(model: torch.nn.Module, config: TrainConfig, lr: float) -> torch.optim.Optimizer:
    """Two parameter groups: weights with weight decay; BN parameters and biases (1-D tensors) without."""
    decay, no_decay = [], []
    for p in model.parameters():
        if p.requires_grad:
            (no_decay if p.ndim <= 1 else decay).append(p)
    if config.optimizer == "sgd":
        return torch.optim.SGD([{"params": decay, "weight_decay": config.weight_decay},
                                {"params": no_decay, "weight_decay": 0.0}], lr=lr, momentum=config.momentum)
    if config.optimizer == "lars":
        return LARS([{"params": decay}, {"params": no_decay, "weight_decay": 0.0, "lars_exclude": True}],
                    lr=lr, momentum=config.momentum, weight_decay=config.weight_decay)
    raise UserError(f"unknown optimizer '{config.optimizer}'; choose sgd or lars")


def epoch_generators(seed: int, epoch: int, device: torch.device) -> tuple[torch.Generator, torch.Generator]:
    """The random generators of one epoch: (batches, on the CPU; augmentation, on the training device).

    Seeded from the run's seed and the epoch alone, so a resumed run draws what the uninterrupted run drew
    without checkpointing a generator's state. Each rank augments its share of the batch with its own stream.
    """
    epoch_seed = seed * 1_000_003 + epoch
    torch.manual_seed(epoch_seed)
    batch_gen = torch.Generator().manual_seed(epoch_seed)
    aug_gen = torch.Generator(device=device).manual_seed(epoch_seed * 31 + distributed.rank() + 1)
    return batch_gen, aug_gen


def learning_rate(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Linear warm-up to `base_lr`, then a cosine decay to 0."""
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * min(progress, 1.0)))


# --- callbacks ----------------------------------------------------------------------------------------

class Callback:
    """Hooks the trainer calls; override what you need. `trainer.request_stop()` ends training cleanly."""

    def on_train_start(self, trainer: "Trainer") -> None: ...
    def on_step_end(self, trainer: "Trainer", logs: dict) -> None: ...
    def on_epoch_end(self, trainer: "Trainer", record: dict) -> None: ...
    def on_train_end(self, trainer: "Trainer") -> None: ...

    def close(self) -> None:
        """Called last whenever training stops: after on_train_end, or instead of it when an exception (Ctrl-C,
        divergence) ends training. Release what the callback holds open (a progress bar left open would be
        redrawn below the error message)."""


class ProgressBar(Callback):
    """A tqdm bar over all steps with loss, learning rate and throughput."""

    def on_train_start(self, trainer):
        from tqdm.auto import tqdm

        self.bar = tqdm(total=trainer.total_steps, initial=trainer.global_step, unit="step",
                        desc=f"{trainer.config.method} on {trainer.config.dataset}", dynamic_ncols=True)

    def on_step_end(self, trainer, logs):
        self.bar.update(1)
        if trainer.global_step % 5 == 0 or trainer.global_step == trainer.total_steps:
            self.bar.set_postfix(epoch=trainer.epoch + 1, loss=f"{logs['loss']:.3f}", lr=f"{logs['lr']:.3g}",
                                 views_s=f"{logs['views_per_s']:.0f}", refresh=False)

    def on_train_end(self, trainer):
        self.close()

    def close(self):
        if getattr(self, "bar", None) is not None:
            self.bar.close()  # tqdm: a second close does nothing


class HistoryWriter(Callback):
    """history.jsonl: one JSON object per epoch. Rewritten whole and atomically at the start (a resumed run's
    history, no duplicates) and after every epoch (an append cut short would leave a half line no reader parses)."""

    def on_train_start(self, trainer):
        self.write(trainer)

    def on_epoch_end(self, trainer, record):
        self.write(trainer)

    @staticmethod
    def write(trainer):
        if trainer.out is not None and distributed.is_main_process():
            _atomic_write_text(trainer.out / "history.jsonl", "".join(json.dumps(r) + "\n" for r in trainer.history))


# --- checkpoints --------------------------------------------------------------------------------------

# What a run directory holds (a fresh run in a folder with other files warns that it mixes in with them).
RUN_FILES = {CHECKPOINT, "config.json", "metrics.json", "history.jsonl", "figures"}
# checkpoint.pt.tmp while it is written; left behind only if the process was killed (kill -9), and then replaced
# by the run's next write of that file
TEMPORARY = ".tmp"
LOCK = ".lock"  # "pid@host" of the process writing the run: two runs into one folder would mix their files


def _process_start(pid: int) -> str | None:
    """When process `pid` started (clock ticks since boot, from Linux's /proc), or None where that cannot be read.
    With the pid it names one process: a pid alone is reused, so a killed run's pid may belong to another process
    later (in a restarted container, often to the very command that asks)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except (OSError, ValueError):
        return None
    fields = stat.rpartition(")")[2].split()  # the fields after "(command name)", which may hold spaces
    return fields[19] if len(fields) > 19 else None  # field 22 of proc(5), starttime


class RunLock:
    """out/.lock while a process writes a run there. A second run into the same folder is refused in one sentence
    (the two would overwrite each other's checkpoint and leave config.json describing the other run); a lock left
    by a process that no longer exists (killed) on this machine is taken over. The file holds "pid@host" and,
    where Linux tells it, a second line with the process's start time, so a reused pid is not mistaken for the
    run's process."""

    def __init__(self, out: Path):
        self.path = out / LOCK
        self.held = False

    def acquire(self) -> "RunLock":
        started = _process_start(os.getpid())
        me = f"{os.getpid()}@{socket.gethostname()}" + (f"\nstarted {started}" if started else "")
        for _ in range(2):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
            except FileExistsError:
                owner, owner_started = self._owner()
                if owner is None or not self._alive(owner, owner_started):  # killed, or unreadable: take it over
                    with contextlib.suppress(OSError):
                        self.path.unlink()
                    continue
                raise UserError(f"another run (process {owner}) is writing to {self.path.parent}; wait for it to "
                                f"finish or choose another --out (if no run is writing there, delete "
                                f"{self.path})") from None
            except OSError:  # a folder we cannot write: the run's own first write says so in one sentence
                return self
            with os.fdopen(fd, "w") as f:
                f.write(me)
            self.held = True
            return self
        return self  # lost a race for a stale lock twice: go on without one rather than refuse

    def _owner(self) -> tuple[str | None, str | None]:
        """("pid@host", its start time or None) from the lock file; (None, None) if it is not a lock's."""
        try:
            owner, _, started = self.path.read_text().strip().partition("\n")
        except (OSError, ValueError):
            return None, None
        if not owner.partition("@")[0].isdigit():
            return None, None
        return owner, started.removeprefix("started ").strip() or None

    @staticmethod
    def _alive(owner: str, started: str | None = None) -> bool:
        pid, _, host = owner.partition("@")
        if host != socket.gethostname() or os.name == "nt":  # another machine's process: cannot tell, so alive
            return True
        try:
            os.kill(int(pid), 0)  # signal 0: only asks whether the process exists
        except ProcessLookupError:
            return False
        except OSError:  # e.g. another user's process: it exists
            pass
        now = _process_start(int(pid))
        return started is None or now is None or now == started  # a later start: the pid was reused

    def release(self) -> None:
        if self.held:
            with contextlib.suppress(OSError):
                self.path.unlink()
            self.held = False


def make_output_dir(path: Path) -> Path:
    """Create a run (or experiment) directory, or say in one sentence why it cannot be created."""
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise UserError(f"cannot create the output directory {path} ({e.strerror}); "
                        f"choose a writable place with --out") from None
    return path


def _write_atomically(path: Path, write) -> None:
    """`write(tmp)` to a temporary file, then rename: a crash or a full disk mid-write leaves the previous file
    intact and no temporary behind; a place that cannot be written is one sentence, not a traceback."""
    tmp = path.with_name(path.name + TEMPORARY)
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException as err:  # a write error or Ctrl-C mid-write: the previous file stays, no temporary
        disk_full = isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)
        if isinstance(err, RuntimeError):  # torch.save reports a full disk as "unexpected pos ...": look at it
            with contextlib.suppress(OSError):
                disk_full = shutil.disk_usage(path.parent).free < 1 << 20  # (measured before the temporary goes)
        with contextlib.suppress(OSError):
            tmp.unlink(missing_ok=True)
        if not isinstance(err, (OSError, RuntimeError)):  # torch.save reports file errors as RuntimeError
            raise
        reason = err.strerror if isinstance(err, OSError) and err.strerror else str(err).splitlines()[0]
        if isinstance(err, PermissionError):
            advice = f"make {path.parent} writable (a new run can also go to another --out)"
        elif disk_full:
            reason = "the disk is full" if isinstance(err, RuntimeError) else reason
            advice = "free some disk space (a new run can also go to another --out)"
        else:  # e.g. a folder of the system's, such as /proc/self
            advice = f"{path.parent} cannot hold the run's files: choose another --out"
        raise UserError(f"cannot write {path} ({reason}); {advice}") from None


def _atomic_write_text(path: Path, text: str) -> None:
    _write_atomically(path, lambda tmp: tmp.write_text(text))


def atomic_torch_save(obj, path: Path) -> None:
    _write_atomically(path, lambda tmp: torch.save(obj, tmp))


def load_checkpoint(path: Path) -> dict:
    if not path.exists():
        raise UserError(f"no checkpoint at {path}; train first, or give the run directory of an earlier training run")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated file, not a torch file, ...
        raise UserError(f"checkpoint {path} is unreadable ({type(err).__name__}); it cannot be used: train the run "
                        "again (--overwrite) or into another --out") from None
    if not isinstance(checkpoint, dict) or "method" not in checkpoint or "config" not in checkpoint:
        raise UserError(f"{path} is not a selfsup-lab checkpoint; train the run again (--overwrite) or into "
                        "another --out")
    return checkpoint


def json_ready(value):
    """Tensors → numbers, so logs can go to JSON."""
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    if isinstance(value, dict):
        return {k: json_ready(v) for k, v in value.items()}
    return value


# --- the trainer ----------------------------------------------------------------------------------------

# Settings outside their meaningful range stop the run before any data is loaded. Those in _FLAGS have
# command-line flags; the others are keywords of selfsup_lab.train(...).
CONFIG_BOUNDS: Bounds = [
    (("lr", "knn_temperature"), lambda v: v > 0, "above 0"),
    (("weight_decay", "warmup_epochs", "eval_every", "occupancy_every"), lambda v: v >= 0, "0 or more"),
    (("momentum",), lambda v: 0 <= v < 1, "in [0, 1)"),
    (("crop_scale",), lambda v: 0 < v <= 1, "two fractions of the image area in (0, 1]"),
    (("train_subset",), lambda v: v >= 2, "2 or more images"),
    (("knn_k",), lambda v: v >= 1, "1 or more"),
    # Each epoch's random generators are seeded with seed·1,000,003·31 + …, which must stay within 64 bits.
    (("seed",), lambda v: 0 <= v < 2**32, "between 0 and 4294967295 (2**32 − 1)"),
]
_FLAGS = {"lr": "--lr", "weight_decay": "--weight-decay", "eval_every": "--eval-every",
          "occupancy_every": "--occupancy-every",
          "train_subset": "--train-subset", "crop_scale": "--crop-scale", "epochs": "--epochs",
          "augmentation": "--augmentation", "warmup_epochs": "--warmup-epochs",
          "batch_size": "--batch-size", "seed": "--seed", "knn_k": "--knn-k"}


# Setting types, checked before anything else so that a wrong one from Python (lr="0.1") gets a sentence, not a
# TypeError from deep inside: whole numbers, numbers, and yes/no settings (None: decided by the device).
_WHOLE = ("epochs", "batch_size", "seed", "warmup_epochs", "eval_every", "train_subset", "knn_k", "occupancy_every")
_REAL = ("lr", "weight_decay", "momentum", "knn_temperature")
_YES_NO = ("amp", "channels_last", "sync_batchnorm", "figures", "progress")
_NONE_MEANS_DEFAULT = ("epochs", "warmup_epochs", "train_subset", "lr", "amp", "channels_last")  # see TrainConfig


def check_config_types(config: TrainConfig) -> None:
    """Refuse a setting of the wrong type in one sentence; turn numpy numbers (from a notebook's sweep) into
    Python ones in place, so that they serialise and index like the numbers they are."""
    def flag(name):
        return _FLAGS.get(name, name)

    for name in _WHOLE + _REAL + _YES_NO:
        value = getattr(config, name)
        if value is None and name in _NONE_MEANS_DEFAULT:
            continue
        if name in _YES_NO:
            if not isinstance(value, (bool, np.bool_)):
                raise UserError(f"{flag(name)} must be True or False (or None for the default), got {value!r}")
            setattr(config, name, bool(value))
        elif isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral if name in _WHOLE
                                                                    else numbers.Real):
            kind = "a whole number" if name in _WHOLE else "a number"
            raise UserError(f"{flag(name)} must be {kind}, got {value!r}")
        else:
            setattr(config, name, int(value) if name in _WHOLE else float(value))
    for name in ("method_options", "sampler_options"):
        if not isinstance(getattr(config, name), dict):
            raise UserError(f"{name} must be a dict such as {{'temperature': 0.5}}, got {getattr(config, name)!r}")
    for name in ("out", "data_dir"):  # paths: text or a pathlib.Path (None: the default place)
        if getattr(config, name) is not None and not isinstance(getattr(config, name), (str, os.PathLike)):
            raise UserError(f"{name} must be a path such as 'runs/my-run', got {getattr(config, name)!r}")
    crop = config.crop_scale
    if isinstance(crop, (tuple, list)) and not all(isinstance(v, numbers.Real) and not isinstance(v, bool)
                                                   for v in crop):
        raise UserError(f"--crop-scale must be two numbers such as (0.08, 1.0), got {crop!r}")


# What a resumed run may change: where and how it runs, what it shows and evaluates, how far it goes (a larger
# --epochs extends the cosine schedule over the new total, so the learning rate rises again: a warm restart),
# and the learning rate (to continue a diverged run more gently). Everything else must match the run's own.
RESUMABLE_CHANGES = {"epochs", "device", "out", "progress", "figures", "data_dir", "eval_every", "compile", "lr",
                     "amp", "channels_last", "knn_k", "knn_temperature", "occupancy_every"}


def run_directory(config: TrainConfig) -> Path:
    """Where a run writes: --out, or runs/<method>-<dataset>."""
    from .data import canonical_spec

    if config.out:
        return Path(config.out)
    from .methods import short_name

    return Path("runs") / f"{short_name(config.method)}-{canonical_spec(config.dataset).split(':')[0]}"


def _first_non_finite(module: torch.nn.Module) -> str | None:
    """The name of the first parameter or buffer holding a NaN or infinity, or None."""
    tensors = list(module.named_parameters()) + list(module.named_buffers())
    for name, tensor in tensors:
        if tensor.is_floating_point() and not torch.isfinite(tensor).all():
            return f"{'parameter' if isinstance(tensor, torch.nn.Parameter) else 'buffer'} {name}"
    return None


def _shown(value) -> str:
    """A setting as a message shows it: None is the setting left to its default ("auto"), not a Python word."""
    return "auto (left to its default)" if value is None else repr(value)


def _comparable(value):
    """Lists and tuples compare alike (a checkpoint may hold either), nested dicts entry by entry."""
    if isinstance(value, (list, tuple)):
        return tuple(_comparable(v) for v in value)
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items()}
    return value


class Trainer:
    """Builds data, model, optimiser and augmentation from a `TrainConfig` and runs the loop."""

    def __init__(self, config: TrainConfig, callbacks: list[Callback] | None = None, resume: bool = False,
                 overwrite: bool = True):
        from . import augment, data, models
        from .methods import MethodContext, get_method_class, parse_options

        self.config = config
        self.resume = resume
        self.overwrite = overwrite  # False: a fresh start refuses an --out that already holds a run
        self.device = distributed.init_from_environment(resolve_device(config.device))  # cuda:LOCAL_RANK under torchrun
        check_config_types(config)
        if callbacks is not None and not isinstance(callbacks, (list, tuple)):  # before any data is loaded
            raise UserError(f"callbacks must be a list such as [LiveDashboard()], got {callbacks!r}")
        for cb in callbacks or []:  # the trainer calls every hook, close() included, on each of them
            if not isinstance(cb, Callback):
                raise UserError(f"callbacks must be selfsup_lab.Callback objects (subclass it and override the hooks "
                                f"you need), got {cb!r}")
        config.dataset = data.canonical_spec(config.dataset)  # one name per data set; reopens from any directory
        if config.data_dir is not None:  # the same cache whichever directory the run is resumed from
            config.data_dir = str(Path(config.data_dir).expanduser().resolve())
        self.epochs = config.resolved_epochs()
        if self.epochs < 1:
            raise UserError(f"--epochs must be at least 1, got {self.epochs}")
        if config.batch_size < 2:
            raise UserError(f"--batch-size must be at least 2 (self-supervised losses compare images), got {config.batch_size}")
        check_bounds(config, CONFIG_BOUNDS, lambda name: _FLAGS.get(name, name))
        if config.warmup_epochs is not None and config.warmup_epochs > self.epochs:
            raise UserError(f"{_FLAGS['warmup_epochs']} ({config.warmup_epochs}) must not exceed the epochs "
                            f"({self.epochs}): the learning rate would never reach its base value")
        if (not isinstance(config.crop_scale, (tuple, list)) or len(config.crop_scale) != 2
                or config.crop_scale[0] > config.crop_scale[1]):
            raise UserError(f"--crop-scale takes two numbers LOW HIGH with LOW <= HIGH (e.g. 0.3 1), "
                            f"got {config.crop_scale!r}")
        if config.augmentation not in augment.AUGMENTERS:
            raise UserError(f"unknown augmentation {config.augmentation!r}; choose device (batched, on the training "
                            f"device) or torchvision (image by image on the CPU, the reference)")
        if config.batch_size % distributed.world_size():
            raise UserError(f"batch size {config.batch_size} must divide evenly over {distributed.world_size()} processes")
        self.use_amp = self.device.type == "cuda" if config.amp is None else bool(config.amp)
        self.channels_last = self.device.type == "cuda" if config.channels_last is None else config.channels_last
        self.compile_mode = resolve_compile_mode(config.compile, self.device)
        self.cuda_graphs = uses_cuda_graphs(self.compile_mode, self.device)

        # Method class and options first: a typo there should fail before any data is loaded.
        method_cls = get_method_class(config.method)
        options = parse_options(method_cls.Options, config.method_options, config.method)

        # Data: kept as uint8 tensors; the training images live on the device.
        with distributed.main_process_first(self.device):  # one download and one cache under torchrun
            self.train_set, self.test_set = data.load_splits(config.dataset, data_dir=config.data_dir)
        if not (self.test_set.labels >= 0).any():  # found now, not after the whole training run
            raise UserError(f"{config.dataset} has no labelled test images to evaluate on; give it a test/ split, or "
                            f"class folders with at least 3 images each (a fifth of every class is held out)")
        if config.train_subset is not None and config.train_subset > len(self.train_set):
            warnings.warn(f"train_subset {config.train_subset} is more than the {len(self.train_set)} training images "
                          f"of {config.dataset}, so all of them are trained on; give a smaller number for a subset",
                          stacklevel=2)
        elif config.train_subset is not None and config.train_subset < len(self.train_set):
            keep = torch.randperm(len(self.train_set), generator=torch.Generator().manual_seed(config.seed))
            self.train_set = self.train_set.subset(keep[: config.train_subset])
        # Evaluation's training side (kNN bank, linear probe): the labelled images; all of them but for
        # datasets with an unlabelled part (STL-10), which is trained on but has nothing to score against.
        self.labelled_train_set = self.train_set.labelled()
        if not len(self.labelled_train_set):
            raise UserError(f"the training images of {config.dataset!r} include none with a label, so nothing can "
                            f"be evaluated; use a larger train_subset or a dataset with labelled training images")
        self.mean, self.std = self.train_set.channel_stats()
        self.train_images = self.train_set.images.to(self.device)
        self.sampler = samplers.build_sampler(config.sampler, config.sampler_options, options,
                                              len(self.train_set), config.batch_size, config.seed)
        self.steps_per_epoch = len(self.sampler)
        self.total_steps = self.steps_per_epoch * self.epochs

        # Model.
        torch.manual_seed(config.seed)
        self.backbone_name = models.resolve_backbone_name(config.backbone, self.device)
        side, smallest = min(self.train_set.images.shape[2:]), models.MIN_IMAGE_SIDE.get(self.backbone_name, 1)
        if side < smallest:
            raise UserError(f"the {self.backbone_name} backbone needs images of at least {smallest}×{smallest} pixels "
                            f"(it halves them three times) and {config.dataset} has {side}-pixel sides; use larger "
                            f"images or --backbone resnet18")
        backbone = models.build_backbone(self.backbone_name)
        context = MethodContext(num_train=len(self.train_set), num_classes=self.train_set.num_classes,
                                batch_size=config.batch_size, epochs=self.epochs,
                                steps_per_epoch=self.steps_per_epoch, image_size=self.train_set.image_size,
                                device=self.device)
        self.method = method_cls(backbone, options, context).to(self.device)
        if distributed.world_size() > 1:
            if config.sync_batchnorm:
                self.method = models.convert_sync_batchnorm(self.method)
            distributed.broadcast_module(self.method)
        if self.channels_last:
            self.method = self.method.to(memory_format=torch.channels_last)
        if self.compile_mode:
            self.method.backbone.compile(mode=self.compile_mode)

        # Optimiser and schedule.
        default_lr = 0.06 * config.batch_size / 128 if config.optimizer == "sgd" else 0.3 * config.batch_size / 256
        self.base_lr = config.lr if config.lr is not None else default_lr
        warmup_epochs = config.warmup_epochs if config.warmup_epochs is not None else min(10, self.epochs // 10)
        self.warmup_steps = warmup_epochs * self.steps_per_epoch
        self.optimizer = build_optimizer(self.method, config, self.base_lr)

        # Augmentation: the shared recipe at the dataset's resolution, normalised with its statistics.
        preset = dataclasses.replace(augment.cifar_preset(size=self.train_set.image_size, mean=self.mean, std=self.std),
                                     scale=tuple(config.crop_scale))
        make_augmenter = augment.AUGMENTERS[config.augmentation]
        if config.augmentation == "torchvision":  # image by image on the CPU, in worker processes as a DataLoader's
            workers = min(16, (os.cpu_count() or 1) // distributed.world_size())
            make_augmenter = functools.partial(make_augmenter, workers=workers if workers > 1 else 0)
        self.augment = make_augmenter(preset)
        self.augment_small = make_augmenter(augment.small_crop_preset(self.method.small_view_size, preset))

        # Run state.
        self.out = run_directory(config)
        self.epoch = 0
        self.global_step = 0
        self.history: list[dict] = []
        # per-epoch and per-window cluster counts; "epochs_without_rule": the same head's plain argmax per epoch
        self.occupancy_log: dict = {"epochs": [], "steps": [], "epochs_without_rule": []}
        self.status = "created"
        self._stop_requested = False
        self.callbacks = list(callbacks) if callbacks is not None else []
        wants_bar = config.progress and distributed.is_main_process()  # under torchrun: one bar, rank 0's
        if wants_bar and not any(isinstance(c, ProgressBar) for c in self.callbacks):
            self.callbacks.insert(0, ProgressBar())
        self.callbacks.append(HistoryWriter())

    # -- helpers for methods and callbacks -----------------------------------------------------------------
    def request_stop(self) -> None:
        """Stop after the current step; the checkpoint of the last completed epoch is kept."""
        self._stop_requested = True

    def autocast(self):
        if self.use_amp:
            return torch.autocast(self.device.type, dtype=torch.bfloat16)
        return contextlib.nullcontext()

    def prepare(self, images_uint8: torch.Tensor) -> torch.Tensor:
        """Un-augmented, normalised images for evaluation and feature banks."""
        from .augment import normalize

        x = normalize(images_uint8.to(self.device), self.mean, self.std)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    @torch.no_grad()
    def features(self, images_uint8: torch.Tensor, fn=None, batch_size: int = 1024, autocast=None) -> torch.Tensor:
        """Apply `fn` (default: the backbone) to all images in eval mode, chunked, returned in float32.

        `autocast`: a context-manager factory to compute under instead of the trainer's own (bf16 on a GPU),
        e.g. `contextlib.nullcontext` for float32 throughout."""
        fn = fn or self.method.embed
        autocast = autocast or self.autocast
        was_training = self.method.training
        self.method.eval()
        outs = []
        # Nearly equal chunks rather than a remainder: an `fn` that runs batch norm in train mode (ExCB's and
        # DeepCluster's epoch-0 projections) fails on a last chunk of one image.
        for chunk in torch.tensor_split(images_uint8, max(1, -(-len(images_uint8) // batch_size))):
            with autocast():
                # A copy even when fn already returns float32: a CUDA graph (--compile reduce-overhead) writes
                # its next chunk's output into the same memory.
                outs.append(fn(self.prepare(chunk)).to(torch.float32, copy=True))
        self.method.train(was_training)
        return torch.cat(outs)

    # -- checkpointing -------------------------------------------------------------------------------------
    def checkpoint_state(self) -> dict:
        return {
            "format": 1,
            "config": dataclasses.asdict(self.config),
            "backbone": self.backbone_name,
            "epoch": self.epoch,  # completed epochs
            "global_step": self.global_step,
            "data": self._data_summary(),  # checked when the run is resumed or reopened
            "method": self.method.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "history": self.history,
            "occupancy_log": self.occupancy_log,
            "sampler": samplers.state_dict(self.sampler),  # guided batches: the pseudo-labels
        }

    def save_checkpoint(self) -> None:
        if distributed.is_main_process():
            atomic_torch_save(self.checkpoint_state(), self.out / CHECKPOINT)

    def _diverged(self, what: str) -> None:
        """Stop the run: `what` went wrong; the last checkpoint (if any) stays as it is."""
        self.status = "diverged"
        if self.epoch:
            kept = f"the checkpoint of epoch {self.epoch} is kept in {self.out}"
            advice = ("lower the learning rate (--lr; with --resume to continue from the checkpoint — if that "
                      "diverges again, the checkpoint's weights have blown up too: start again with --overwrite)")
        else:
            kept, advice = "no checkpoint was written yet", "lower the learning rate (--lr)"
        raise TrainingDiverged(f"{what}; {kept} — {advice} or check the method's options", what=what)

    def _check_resume_matches(self, checkpoint: dict) -> None:
        """A resumed run continues with the settings it was started with: refuse any other change, so that
        "--resume" never quietly trains something else (only `RESUMABLE_CHANGES` may differ)."""
        from . import data
        from .methods import parse_options

        saved, now = checkpoint["config"], dataclasses.asdict(self.config)
        changed = []
        for name, value in now.items():
            if name in RESUMABLE_CHANGES or name == "method_options" or name not in saved:
                continue
            if name == "backbone" and saved[name] == "auto":  # compared below as the network auto chose
                continue
            if name == "dataset" and data.same_dataset(saved[name], value):  # older runs: the spec as given
                continue
            if _comparable(saved[name]) != _comparable(value):
                changed.append(f"{_FLAGS.get(name, name)} is {_shown(value)} here and {_shown(saved[name])} in the run")
        if saved["method"] == self.config.method:
            saved_options = dataclasses.asdict(parse_options(type(self.method.options), saved.get("method_options"),
                                                             saved["method"]))
            for name, value in dataclasses.asdict(self.method.options).items():
                if _comparable(saved_options[name]) != _comparable(value):
                    changed.append(f"option '{name}' is {_shown(value)} here and {_shown(saved_options[name])} in "
                                   f"the run")
        if not changed and checkpoint.get("backbone", self.backbone_name) != self.backbone_name:
            changed.append(f"the backbone would be {self.backbone_name} here and is {checkpoint['backbone']} in the run "
                           f"(--backbone auto follows the device: pass --backbone {checkpoint['backbone']})")
        if checkpoint["epoch"] > self.epochs:  # nothing would train, and the schedule would be another run's
            raise UserError(f"the run in {self.out} has already trained {checkpoint['epoch']} epochs, more than "
                            f"--epochs {self.epochs}; pass a larger --epochs to extend it, or re-evaluate it with "
                            f"`selfsup-lab eval {self.out}`")
        if not changed and checkpoint["epoch"] == self.epochs:  # nothing will train: these would change nothing
            unused = [_FLAGS.get(name, name) for name in ("lr", "eval_every", "occupancy_every")
                      if _comparable(saved.get(name)) != _comparable(getattr(self.config, name))]
            if unused:
                raise UserError(f"the run in {self.out} has already trained all its {self.epochs} epochs, so "
                                f"{' and '.join(unused)} would change nothing (and config.json would no longer "
                                f"describe the run); leave {'it' if len(unused) == 1 else 'them'} out to "
                                f"re-evaluate it, or pass a larger --epochs to extend it")
        if changed:
            raise UserError(f"--resume continues the run in {self.out} with its own settings, but "
                            f"{'; '.join(changed)}; drop the changed settings, or start a new run with another --out")

    def _data_summary(self) -> dict:
        return {"num_train": len(self.train_set), "num_test": len(self.test_set),
                "classes": list(self.train_set.classes)}

    def _check_data_unchanged(self, checkpoint: dict) -> None:
        """The data set must be the one the run was trained on: a folder of images that gained or lost images
        since would otherwise be trained or scored on without a word (or fail on per-image state's size)."""
        saved, now = checkpoint.get("data"), self._data_summary()
        if not saved or saved == now:  # (checkpoints written before this check have no "data")
            return
        differs = [f"{saved[k]} → {now[k]} {what}" for k, what in (("num_train", "training images"),
                                                                    ("num_test", "test images")) if saved[k] != now[k]]
        if saved["classes"] != now["classes"]:
            differs.append(f"classes {', '.join(saved['classes'][:5])} → {', '.join(now['classes'][:5])}")
        raise UserError(f"the data of {self.config.dataset} changed since the run in {self.out} was trained "
                        f"({'; '.join(differs)}); restore it as it was, or train a new run with another --out")

    def _load(self, checkpoint: dict) -> None:
        self._check_data_unchanged(checkpoint)
        try:
            self.method.load_state_dict(checkpoint["method"])
            self.optimizer.load_state_dict(checkpoint["optimizer"])
        except (RuntimeError, ValueError, KeyError) as err:
            # torch's first line only names the model; the first missing key or size mismatch says what differs
            lines = [line.strip() for line in str(err).splitlines() if line.strip()]
            detail = (lines[1] if len(lines) > 1 else lines[0] if lines else type(err).__name__)[:200]
            raise UserError(f"checkpoint in {self.out} does not match this method/backbone ({detail}); "
                            "resume with the run's original settings or start a new --out") from None
        damaged = _first_non_finite(self.method)
        if damaged:  # the trainer never saves non-finite weights (see _diverged): the file is damaged, or very old
            raise UserError(f"the checkpoint in {self.out} holds NaN or infinite values ({damaged}), which training "
                            f"does not save: the file is damaged (or from a diverged run of an early version); train "
                            f"the run again (--overwrite, with a lower --lr if it diverged) or into another --out")
        self.epoch = checkpoint["epoch"]
        self.global_step = checkpoint["global_step"]
        self.history = checkpoint["history"]
        # On top of the fresh (empty) log, so a key that older checkpoints lack starts empty.
        self.occupancy_log = {**self.occupancy_log, **checkpoint.get("occupancy_log", {})}
        samplers.load_state_dict(self.sampler, checkpoint.get("sampler"))

    # -- the loop ----------------------------------------------------------------------------------------------
    def fit(self) -> "Trainer":
        lock, foreign = RunLock(self.out), []
        if distributed.is_main_process() and (self.out.is_dir() or not self.resume):
            # e.g. --out . or --out runs: the run is mixed in with other files (nothing is lost)
            if not self.resume and self.out.is_dir() and not (self.out / CHECKPOINT).exists():
                ours = RUN_FILES | {name + TEMPORARY for name in RUN_FILES}  # (a killed run's temporaries too)
                foreign = sorted(p.name for p in self.out.iterdir() if p.name not in ours and not p.name.startswith("."))
            make_output_dir(self.out)
            lock.acquire()
        try:
            return self._fit(foreign)
        finally:
            lock.release()

    def _fit(self, foreign: list[str]) -> "Trainer":
        if self.resume:
            checkpoint = load_checkpoint(self.out / CHECKPOINT)
            self._check_resume_matches(checkpoint)
            self._load(checkpoint)
            if self.epoch < self.epochs and distributed.is_main_process():
                # The metrics of the epochs done so far: once training goes on they describe no checkpoint
                # (an interrupted extension would leave them beside a later one). Written again at the end.
                with contextlib.suppress(OSError):
                    (self.out / "metrics.json").unlink(missing_ok=True)
        else:
            if not self.overwrite and (self.out / CHECKPOINT).exists():
                raise UserError(f"{self.out} already holds a run (checkpoint.pt); continue it with --resume --out "
                                f"{self.out}, train it again from scratch with --overwrite, or choose another --out")
            if distributed.is_main_process():
                stale_files = [self.out / name for name in ("metrics.json", "history.jsonl", CHECKPOINT)]
                stale_files += (self.out / "figures").glob("*.png")  # a replaced run's pictures are not this run's
                for stale in stale_files:
                    try:
                        stale.unlink(missing_ok=True)
                    except OSError as err:
                        raise UserError(f"cannot replace the run in {self.out}: {stale.name} cannot be deleted "
                                        f"({err.strerror}); make the folder writable or choose another --out") from None
            self.method.on_train_start(self)
        if distributed.is_main_process():
            self.write_config()
            if foreign:  # said once the folder is known to take the run's files
                warnings.warn(f"{self.out} already holds files that are not a run's ({', '.join(foreign[:3])}"
                              f"{', …' if len(foreign) > 3 else ''}); the run's files are written among them — a new "
                              f"folder per run keeps runs apart", stacklevel=3)

        for cb in self.callbacks:
            cb.on_train_start(self)
        self.status = "running"
        try:
            self._loop()
        except BaseException:  # diverged or interrupted: on_train_end will not run, close() still does
            for cb in self.callbacks:
                try:
                    cb.close()
                except Exception as err:  # the error that stopped training is the one to report
                    warnings.warn(f"{type(cb).__name__}.close() failed while training stopped: {err}")
            raise
        finally:  # finished, stopped, diverged or interrupted: torchvision's worker processes are not left idle
            self.augment.close()
            self.augment_small.close()
        if self.epoch >= self.epochs:
            self.status = "finished"
        for cb in self.callbacks:
            cb.on_train_end(self)
        for cb in self.callbacks:
            cb.close()
        return self

    def _loop(self) -> None:
        """Epochs until the budget is spent or a stop is requested; a checkpoint after each one."""
        from .metrics import assignment_counts, batch_balance, knn_accuracy, occupancy_stats

        config = self.config
        window = config.occupancy_every or max(1, self.steps_per_epoch // 4)
        K = self.method.num_clusters

        while self.epoch < self.epochs and not self._stop_requested:
            epoch = self.epoch
            batch_gen, aug_gen = epoch_generators(config.seed, epoch, self.device)
            self.method.train()
            if hasattr(self.sampler, "on_epoch_start"):  # guided batches: (re)compute pseudo-labels
                self.sampler.on_epoch_start(epoch, self)
            self.method.on_epoch_start(epoch, self)
            batches = self.sampler.batches(epoch, batch_gen)
            sums: dict[str, float] = {}
            epoch_counts = torch.zeros(K, dtype=torch.long, device=self.device) if K else None
            window_counts = torch.zeros_like(epoch_counts) if K else None
            batch_balance_sum = torch.zeros(2, dtype=torch.float64, device=self.device)  # Σ_steps (H/log K, largest)
            steps_with_counts = 0
            counts_without_rule = None  # stays None for methods that do not report assignments without their rule
            views_seen, t0 = 0, time.perf_counter()
            local = config.batch_size // distributed.world_size()
            # This rank's share of every batch, moved to the device in one copy per epoch: a copy from host memory
            # first waits for the GPU to finish all it was given, so one per step would keep the host from
            # launching a step's kernels while the GPU still runs the previous step's backward.
            shares = [batch[distributed.rank() * local : (distributed.rank() + 1) * local] for batch in batches]
            shares = torch.cat(shares).to(self.device).split([len(share) for share in shares])

            for step, batch in enumerate(shares):
                lr = learning_rate(self.global_step, self.total_steps, self.warmup_steps, self.base_lr)
                lr *= self.method.lr_scale(epoch)
                for group in self.optimizer.param_groups:
                    group["lr"] = lr

                images = self.train_images[batch]
                views = self.augment.views(images, self.method.num_views, aug_gen)  # one call for all views
                if self.method.num_small_views:
                    views += self.augment_small.views(images, self.method.num_small_views, aug_gen)
                if self.channels_last:
                    views = [v.contiguous(memory_format=torch.channels_last) for v in views]
                if self.cuda_graphs:
                    torch.compiler.cudagraph_mark_step_begin()  # last step's graph outputs may be overwritten
                with self.autocast():
                    out = self.method.training_step(views, batch)
                loss = out.loss.float()
                # The global batch's numbers, the same on every rank: what the progress bar and callbacks show, and
                # a NaN on any one rank stops every rank before a single weight moves.
                step_logs = distributed.mean_over_ranks(
                    {"loss": loss.item(), **{k: float(v) for k, v in json_ready(out.logs).items()}}, self.device)
                if not math.isfinite(step_logs["loss"]):
                    self._diverged(f"the {config.method} loss became {step_logs['loss']} at epoch {epoch + 1}, "
                                   f"step {step + 1}")

                self.optimizer.zero_grad(set_to_none=True)
                loss.backward()
                distributed.average_gradients(self.method)
                if lr > 0:  # CoKe's epoch 0 runs at lr 0: no update at all (not even weight decay)
                    self.optimizer.step()
                self.global_step += 1
                self.method.after_optimizer_step(self.global_step / self.total_steps)

                views_seen += sum(v.shape[0] for v in views) * distributed.world_size()
                if out.assignments is not None and K:
                    counts = distributed.all_reduce_sum(assignment_counts(out.assignments.detach(), K))
                    epoch_counts += counts
                    window_counts += counts
                    batch_balance_sum += batch_balance(counts)
                    steps_with_counts += 1
                    if (step + 1) % window == 0:
                        self.occupancy_log["steps"].append(
                            {"epoch": epoch, "step": self.global_step, "counts": window_counts.tolist()})
                        window_counts.zero_()
                if out.assignments_without_rule is not None and K:
                    counts = distributed.all_reduce_sum(assignment_counts(out.assignments_without_rule.detach(), K))
                    counts_without_rule = counts if counts_without_rule is None else counts_without_rule + counts
                step_logs["lr"] = lr
                for k, v in step_logs.items():
                    sums[k] = sums.get(k, 0.0) + v
                elapsed = max(time.perf_counter() - t0, 1e-9)
                step_logs["views_per_s"] = views_seen / elapsed
                for cb in self.callbacks:
                    cb.on_step_end(self, step_logs)
                if self._stop_requested:
                    break

            if self._stop_requested and step + 1 < self.steps_per_epoch:
                self.status = f"stopped during epoch {epoch + 1}"
                break  # the half-finished epoch is not checkpointed: --resume redoes it exactly
            self.method.on_epoch_end(epoch, self)
            if self.device.type == "cuda":
                torch.cuda.synchronize()
            record = {"epoch": epoch + 1, **{k: v / (step + 1) for k, v in sums.items()},
                      "views_per_s": views_seen / max(time.perf_counter() - t0, 1e-9)}
            record["lr"] = lr
            record.update(samplers.epoch_statistics(self.sampler, batches, self.train_set.labels))  # -1s skipped
            if K:
                record["occupancy"] = occupancy_stats(epoch_counts)
                if steps_with_counts:  # the same, batch by batch: the mean of each step's own statistics
                    batch_entropy, batch_largest = (batch_balance_sum / steps_with_counts).tolist()
                    record["occupancy"].update(batch_entropy_ratio=batch_entropy, batch_max_share=batch_largest)
                self.occupancy_log["epochs"].append(epoch_counts.tolist())
            if counts_without_rule is not None:
                record["occupancy_without_rule"] = occupancy_stats(counts_without_rule)
                self.occupancy_log["epochs_without_rule"].append(counts_without_rule.tolist())
            if config.eval_every and (epoch + 1) % config.eval_every == 0 and epoch + 1 < self.epochs:
                bank = self.labelled_train_set
                record["knn_top1"] = knn_accuracy(self.features(bank.images), bank.labels,
                                                  self.features(self.test_set.images), self.test_set.labels,
                                                  k=config.knn_k, temperature=config.knn_temperature)
            broken = _first_non_finite(self.method)  # a finite loss can hide inf running variances or weights
            if broken:
                self._diverged(f"the {config.method} {broken} became NaN or infinite during epoch {epoch + 1}")
            self.epoch = epoch + 1
            self.history.append(record)
            self.save_checkpoint()
            for cb in self.callbacks:
                cb.on_epoch_end(self, record)
            if self._stop_requested:
                self.status = f"stopped after epoch {self.epoch}"

    def write_config(self) -> None:
        info = {**dataclasses.asdict(self.config), "resolved": {
            "epochs": self.epochs, "backbone": self.backbone_name, "device": str(self.device),
            "lr": self.base_lr, "warmup_steps": self.warmup_steps, "steps_per_epoch": self.steps_per_epoch,
            "amp_bf16": self.use_amp, "channels_last": self.channels_last, "world_size": distributed.world_size(),
            "num_train": len(self.train_set), "num_train_labelled": len(self.labelled_train_set),
            "num_test": len(self.test_set),
            "sampler": type(self.sampler).__name__,
            "method_options": dataclasses.asdict(self.method.options), **self.method.extra_info()}}
        _atomic_write_text(self.out / "config.json", json.dumps(info, indent=2, default=str))
