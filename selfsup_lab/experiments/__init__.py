"""Experiments: several methods, one budget, one comparison figure and table.

Each module exposes HELP, add_arguments(parser), run_cli(args) -> exit code, and a Python function that
notebooks call directly. `EXPERIMENTS` maps the `selfsup-lab` subcommand to the module.
"""
import dataclasses
import functools
import re
import sys

EXPERIMENTS = {
    "compare-balancing": "balancing",  # collapse vs balance: naive / SwAV / DeepCluster / CoKe / ExCB
    "compare-negatives": "negatives",  # under vs over-clustering: SimCLR / BYOL / triplet / G-SimCLR
}

# Both experiments end their table with the untrained network (`api.untrained_run`) and explain it so:
UNTRAINED_NOTE = ("The last row is the untrained network (the weights every run starts from, batch-norm statistics "
                  "from one pass over the training images): a run below it has not learned better features than "
                  "random ones.")


def aggregate_seeds(rows: list[dict]) -> dict:
    """One row from rows that differ only by seed: a number that differs between seeds becomes its mean, with
    the sample standard deviation as KEY_std; everything else is kept. Failed runs (rows with an "error")
    are left out, unless every seed failed."""
    import statistics

    ok = [r for r in rows if not r.get("error")] or rows
    out = {k: v for k, v in ok[0].items() if k != "seed"}
    for key, value in ok[0].items():
        values = [r[key] for r in ok if r.get(key) is not None]
        numeric = isinstance(value, (int, float)) and not isinstance(value, bool)
        if numeric and key != "seed" and len(set(values)) > 1:
            out[key] = statistics.mean(values)
            out[key + "_std"] = statistics.stdev(values)
    out["seeds"] = [r.get("seed") for r in ok]
    return out


# Table columns that are the protocol, not a measurement: equal for every seed by design, so shown without ± 0.
SETTING_COLUMNS = ("k", "epochs", "steps")


def table_cell(row: dict, key: str, fmt: str) -> str:
    """A value as the column formats it; a mean over seeds ± its std (a whole-number column gets one decimal).
    A measurement that every seed got exactly the same reads "± 0", so that no cell of a several-seed row looks
    like a single run's."""
    value = row.get(key)
    if value is None:
        return "–"
    if fmt == "d" and isinstance(value, float):  # e.g. 0.7 empty clusters on average over seeds
        value, fmt = (int(value), "d") if value.is_integer() else (value, ".1f")
    cell = format(value + 0, fmt).replace("-0.000", "0.000")  # no "-0.000" for a tiny negative (or -0.0)
    std = row.get(key + "_std")
    if std is None and len(row.get("seeds") or ()) > 1 and key not in SETTING_COLUMNS:
        std = 0.0  # aggregate_seeds keeps a value the seeds agree on as it is
    if std is not None:
        cell += f" ± {format(std, '.1f' if fmt == 'd' else fmt)}"
    return cell


# Training settings every comparison passes unchanged to all its runs (TrainConfig fields; None = its default).
TRAINING_FLAGS = ("backbone", "device", "lr", "weight_decay", "crop_scale", "augmentation", "train_subset", "knn_k",
                  "data_dir")

# The choices of --augmentation: augment.AUGMENTERS' keys (a test keeps them equal), named here so that the
# command line's --help does not have to import torch.
AUGMENTATIONS = ("device", "torchvision")


def add_training_arguments(parser, explicit_auto: bool = False) -> None:
    """The command-line flags of TRAINING_FLAGS, shared by compare-balancing and compare-negatives.

    `explicit_auto`: --backbone and --device default to "auto" (written into the results' protocol line)
    instead of being left out; the runs are the same either way.
    """
    auto = "auto" if explicit_auto else None
    parser.add_argument("--backbone", default=auto, help="auto (convnet on CPU, resnet18 on GPU), convnet, resnet18")
    parser.add_argument("--device", default=auto, help="auto, cpu, cuda")
    parser.add_argument("--lr", type=float, help="base learning rate for every run (default 0.06·B/128)")
    parser.add_argument("--crop-scale", type=float, nargs=2, metavar=("LOW", "HIGH"),
                        help="area range of the random resized crop (default 0.08 1; CoKe's CIFAR code: 0.3 1)")
    parser.add_argument("--augmentation", choices=AUGMENTATIONS,
                        help="who makes the views: device (default) or torchvision (per image on the CPU, the reference)")
    parser.add_argument("--weight-decay", type=float,
                        help="weight decay for every run (default 5e-4, none on batch-norm weights and biases)")
    parser.add_argument("--train-subset", type=int, help="train on a seeded subset of N images")
    parser.add_argument("--knn-k", type=int, help="neighbours of the kNN evaluation (default 200; fewer for a small "
                                                  "training set)")
    parser.add_argument("--data-dir", help="dataset cache (default ~/.cache/selfsup-lab)")


def add_progress_argument(parser, what: str) -> None:
    """--progress / --no-progress, spelled the same on every subcommand; the bars are shown unless switched off."""
    import argparse

    parser.add_argument("--progress", action=argparse.BooleanOptionalAction, default=True,
                        help=f"{what} (default: shown)")


def add_reuse_arguments(parser, where: str) -> None:
    """--reuse and --overwrite, what a comparison does with the runs already in `where` (see refuse_to_replace)."""
    parser.add_argument("--reuse", action="store_true",
                        help=f"reuse finished runs with identical settings found in {where} and continue interrupted "
                             "ones, instead of training them again (a long comparison in pieces)")
    parser.add_argument("--overwrite", action="store_true",
                        help="train every run again in an OUT that already holds runs (without it, such an OUT is "
                             "refused)")


def training_options(args) -> dict:
    """The TRAINING_FLAGS the user set (or that have a command default), as TrainConfig keyword arguments."""
    return {k: getattr(args, k) for k in TRAINING_FLAGS if getattr(args, k) is not None}


def knn_protocol(train_options: dict) -> str:
    """How the comparison's runs were scored by kNN, for its results.md ("kNN k=200 τ=0.1")."""
    from ..train import TrainConfig

    k, tau = (train_options.get(key, getattr(TrainConfig, key)) for key in ("knn_k", "knn_temperature"))
    return f"kNN k={k} τ={tau}"


def parse_method(spec: str) -> tuple[str, dict]:
    """A method with options in one word: 'triplet:deputy=rank-rule,r_hi=12' → ('triplet', {...})."""
    from ..errors import UserError

    name, _, rest = spec.partition(":")
    options = {}
    for item in filter(None, (s.strip() for s in rest.split(","))):
        key, eq, value = item.partition("=")
        if not eq:
            raise UserError(f"method spec '{spec}': '{item}' is not key=value (write e.g. coke:dual_lr=1)")
        if key.strip() in options:
            raise UserError(f"method spec '{spec}' gives '{key.strip()}' twice; give it once")
        options[key.strip()] = value.strip()
    return name.strip(), options


def parse_methods(specs) -> list[tuple[str, str, dict]]:
    """(label, method name, options) per spec; the label (the spec as written, e.g. 'coke:alpha=0') names the
    run's row and folder, so one method can be compared with itself under other options. A Method subclass of
    your own (from Python) is labelled by its class name."""
    from ..errors import UserError
    from ..methods import get_method_class, method_path, parse_options, short_name

    parsed = []
    for spec in specs:
        if isinstance(spec, type):  # a Method subclass of your own, from Python
            path = method_path(spec)
            parsed.append((short_name(path), path, {}))
        else:
            label = str(spec).strip()
            parsed.append((label, *parse_method(label)))
    labels = [label for label, _, _ in parsed]
    repeated = sorted({label for label in labels if labels.count(label) > 1})
    if repeated:
        raise UserError(f"method {repeated[0]!r} is listed twice; list each method or spec once")
    same = {}  # 'simclr' and 'simclr:temperature=0.2' (its default) would train one run twice under two names
    for label, name, options in parsed:
        resolved = (name, repr(dataclasses.asdict(parse_options(get_method_class(name).Options, options, name))))
        if resolved in same:
            raise UserError(f"{same[resolved]!r} and {label!r} are the same run (the same method and options, "
                            f"defaults included); list it once")
        same[resolved] = label
    return parsed


def folder_name(label: str) -> str:
    """A run folder's name for a method label: 'triplet:deputy=median' → 'triplet_deputy=median'."""
    return re.sub(r"[^\w=.-]+", "_", label)


# Settings that change how a run is evaluated, not what is trained: a reused run is evaluated again with them.
EVALUATION_ONLY = ("knn_k", "knn_temperature", "eval_every")


def changed_settings(config, ignore: tuple[str, ...] = ()) -> list[str] | None:
    """The settings in which the run in config.out differs from `config` ("lr 0.1 → 0.5"; [] if none; `ignore`
    leaves some out), or None when config.out holds no run's config.json."""
    import dataclasses
    import json
    from pathlib import Path

    from .. import data

    try:
        saved = json.loads((Path(config.out) / "config.json").read_text())
    except (OSError, ValueError):
        return None
    ignore = {"out", "progress", "figures", "device", "data_dir", *ignore}  # where it ran, not what it trained
    wanted = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    saved["dataset"], wanted["dataset"] = (data.canonical_spec(d) for d in (saved.get("dataset", ""), wanted["dataset"]))
    # A setting missing from an older config.json did not exist then: that run used today's default.
    defaults = json.loads(json.dumps(dataclasses.asdict(type(config)()), default=str))
    return [f"{k} {saved.get(k, defaults.get(k))} → {v}" for k, v in wanted.items()
            if k not in ignore and saved.get(k, defaults.get(k)) != v]


def finished_run(config) -> bool:
    """Whether config.out holds a finished run (metrics.json written) trained with exactly these settings (it may
    have been evaluated otherwise: EVALUATION_ONLY)."""
    from pathlib import Path

    return (Path(config.out) / "metrics.json").exists() and changed_settings(config, EVALUATION_ONLY) == []


def refuse_to_replace(out, reuse: bool, overwrite: bool | None) -> None:
    """A comparison never replaces earlier runs by accident (as `selfsup-lab train` never replaces a run):
    OUT holding run checkpoints needs --reuse (keep them) or --overwrite (train them all again). From Python
    `overwrite=None` means "unless reuse", so that re-running a notebook cell trains again, as `api.train` does."""
    from pathlib import Path

    from ..errors import UserError
    from ..train import CHECKPOINT

    if overwrite is None:
        overwrite = not reuse
    if reuse and overwrite:
        raise UserError("--reuse keeps the runs in --out and --overwrite trains them again; give one of them")
    if not reuse and not overwrite and any(Path(out).glob(f"**/{CHECKPOINT}")):
        raise UserError(f"{out} already holds the runs of a comparison; add --reuse to keep the finished ones with the "
                        f"same settings and continue the rest, --overwrite to train them all again, or choose "
                        f"another --out")


def train_or_reuse(config, reuse: bool = False, linear: bool = True):
    """One run of an experiment, evaluated, with metrics.json written; returns the `api.Run`.

    With `reuse`, a finished run with the same settings in config.out is loaded instead of trained again (and
    evaluated again if only EVALUATION_ONLY settings differ), and an interrupted one (a checkpoint but no
    metrics.json) is continued from its last epoch — so a comparison can be run in pieces, e.g. under a time
    limit per command; a run trained with other settings is trained again. metrics.json records "wall_seconds" (training +
    evaluation in the invocation that finished the run) and whether it was "resumed".
    """
    import json
    import time
    from pathlib import Path

    from .. import api, distributed
    from ..train import CHECKPOINT, Trainer, _atomic_write_text

    if reuse and finished_run(config):
        run = api.load_run(config.out, device=config.device)
        if changed_settings(config):  # evaluated otherwise (e.g. another --knn-k): the same weights, new metrics
            for key in EVALUATION_ONLY:
                setattr(run.trainer.config, key, getattr(config, key))
            kept = {key: run.metrics.get(key) for key in ("wall_seconds", "resumed")} if run.metrics else {}
            run.metrics = {**api.evaluate(run.trainer, linear=linear), **kept}
            if distributed.is_main_process():
                _atomic_write_text(run.out / "metrics.json", json.dumps(run.metrics, indent=2))
                recorded = json.loads((run.out / "config.json").read_text())  # the run's own, with the new keys
                recorded.update({key: getattr(config, key) for key in EVALUATION_ONLY})
                _atomic_write_text(run.out / "config.json", json.dumps(recorded, indent=2, default=str))
        return run
    t0 = time.perf_counter()
    resume = reuse and (Path(config.out) / CHECKPOINT).exists()
    trained_otherwise = changed_settings(config, EVALUATION_ONLY) if resume else []
    if trained_otherwise:  # another run's checkpoint: continuing it would report wrong numbers
        print(f"[reuse] {config.out} was trained with other settings ({', '.join(trained_otherwise)}): "
              f"training it again", flush=True)
        resume = False
    run = api.Run(Trainer(config, resume=resume).fit())
    run.metrics = api.evaluate(run.trainer, linear=linear)
    run.metrics.update(wall_seconds=time.perf_counter() - t0, resumed=resume)
    if distributed.is_main_process():
        # atomic: a metrics.json is what marks a run finished for the next --reuse
        _atomic_write_text(run.out / "metrics.json", json.dumps(run.metrics, indent=2))
    return run


def use_quick_subset(dataset: str, train_options: dict, size: int) -> None:
    """Quick mode's seeded subset of `size` training images, unless the user gave train_subset or the training
    set has no more than `size` images: then all of them are trained on, without the warning that a too-large
    train_subset of the user's own gets."""
    if train_options.get("train_subset") is None and _num_training_images(dataset, train_options) > size:
        train_options["train_subset"] = size


def epochs_for_steps(steps: int, batch_sizes, dataset: str, train_options: dict) -> dict[int, int]:
    """Epochs that give each batch size about `steps` optimiser steps (the trainer drops the last partial
    batch, so an epoch of N images is N // B steps; at least one epoch)."""
    return _steps_budget(steps, batch_sizes, dataset, train_options)[0]


def _steps_budget(steps: int, batch_sizes, dataset: str, train_options: dict) -> tuple[dict[int, int], dict[int, int]]:
    """(epochs, optimiser steps those epochs really give) per batch size, for `epochs_for_steps`."""
    from ..errors import UserError

    if steps < 1:
        raise UserError(f"steps must be at least 1, got {steps}")
    num_train = _check_batch_sizes_fit(batch_sizes, dataset, train_options)
    epochs, taken = {}, {}
    for batch_size in batch_sizes:
        per_epoch = num_train // batch_size
        epochs[batch_size] = max(1, round(steps / per_epoch))
        taken[batch_size] = epochs[batch_size] * per_epoch
    return epochs, taken


def _num_training_images(dataset: str, train_options: dict) -> int:
    """How many training images every run gets (the data set's, or its train_subset)."""
    from .. import data

    num_train = len(data.load_dataset(dataset, "train", train_options.get("data_dir")))
    if train_options.get("train_subset"):
        num_train = min(num_train, int(train_options["train_subset"]))
    return num_train


def _check_batch_sizes_fit(batch_sizes, dataset: str, train_options: dict) -> int:
    """The number of training images every run gets; a batch size larger than that is refused before any run
    trains, naming this command's own flag (--batch-sizes)."""
    from ..errors import UserError

    num_train = _num_training_images(dataset, train_options)
    if max(batch_sizes) > num_train:
        raise UserError(f"batch size {max(batch_sizes)} is larger than the {num_train}-image training set; "
                        "use smaller --batch-sizes")
    return num_train


def distinct(values, flag: str, at_least: int | None = None) -> list[int]:
    """Batch sizes or seeds as whole numbers, each once: a repeated one would train the same run twice into one
    folder and show a spread over seeds that is not there. `at_least`: the smallest value allowed, checked here
    so that the message names the comparison's own flag."""
    from ..errors import UserError

    values = [int(v) for v in values]
    if not values:
        raise UserError(f"{flag} needs at least one value")
    repeated = sorted({v for v in values if values.count(v) > 1})
    if repeated:
        raise UserError(f"{flag} lists {repeated[0]} twice; give each value once")
    if at_least is not None and min(values) < at_least:
        raise UserError(f"{flag} must each be at least {at_least}, got {min(values)}")
    return values


def epoch_budget(epochs: int | None, steps: int | None, batch_sizes, dataset: str, train_options: dict,
                 default_epochs: int) -> tuple[dict[int, int], str]:
    """Epochs per batch size and the budget's name for tables: `epochs` (or `default_epochs`) at every batch
    size, or — with `steps` — about `steps` optimiser steps at every batch size (`epochs_for_steps`)."""
    from ..errors import UserError

    if steps is not None and epochs is not None:
        raise UserError("give either epochs or steps, not both: steps sets the epochs of each batch size")
    if steps is not None:
        epochs_for, taken = _steps_budget(int(steps), batch_sizes, dataset, train_options)
        if all(n == int(steps) for n in taken.values()):
            return epochs_for, f"{steps} steps per run"
        # Runs train whole epochs: say what each batch size really gets rather than the number asked for.
        really = ", ".join(f"{n} at B = {b}" for b, n in taken.items())
        far = [b for b, n in taken.items() if abs(n - int(steps)) > 0.25 * int(steps)]
        if far:  # e.g. fewer steps than one epoch: the runs are not comparable the way --steps promises
            import warnings

            got = ", ".join(f"{n} steps at B = {b}" for b, n in taken.items())
            warnings.warn(f"--steps {steps} cannot be matched at B = {', '.join(map(str, far))}: runs train whole "
                          f"epochs, so they get {got}; ask for several epochs of the largest batch size",
                          stacklevel=2)
        return epochs_for, f"about {steps} steps per run (whole epochs: {really})"
    epochs = default_epochs if epochs is None else int(epochs)
    _check_batch_sizes_fit(batch_sizes, dataset, train_options)
    return {b: epochs for b in batch_sizes}, f"{epochs} epochs"


def says_how_to_continue(run_cli):
    """Wrap an experiment's `run_cli`: Ctrl-C keeps what was trained (every finished epoch of every run is
    checkpointed) and says how to continue, as `selfsup-lab train` does."""
    @functools.wraps(run_cli)
    def wrapper(args) -> int:
        try:
            return run_cli(args)
        except KeyboardInterrupt as err:  # (SIGTERM too: see cli.sigterm_stops_like_ctrl_c)
            from ..errors import interrupted_exit_code

            how = "with --reuse instead of --overwrite" if getattr(args, "overwrite", False) else "with --reuse"
            print(f"interrupted; finished runs and the interrupted run's last epoch are kept — re-run the same "
                  f"command {how} to continue", file=sys.stderr)
            return interrupted_exit_code(err)
    return wrapper
