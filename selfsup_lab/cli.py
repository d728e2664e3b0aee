"""The `selfsup-lab` command: train, eval, methods, datasets.

Mistakes a user can fix (unknown names, missing paths, corrupt checkpoints, a diverging loss) are printed
as one sentence on stderr with a non-zero exit code — no traceback.
"""
from __future__ import annotations

import argparse
import contextlib
import functools
import os
import re
import signal
import sys
import threading
import warnings
from pathlib import Path

from .errors import Terminated, UserError, interrupted_exit_code


def _parse_set(pairs: list[str]) -> dict:
    options = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise UserError(f"--set expects key=value, got '{pair}'")
        key, value = (part.strip() for part in pair.split("=", 1))  # "temperature = 0.5" is temperature=0.5
        if re.search(r",\s*[A-Za-z_]\w*\s*=", value):  # the comparisons' method:a=1,b=2 spelling
            raise UserError(f"--set takes its key=value pairs separated by spaces, not commas: --set "
                            f"{' '.join(p.strip() for p in pair.split(','))}")
        if key in options:  # which one was meant? Say so rather than keep the last silently
            raise UserError(f"--set gives '{key}' twice ({options[key]} and {value}); give it once")
        options[key] = value
    return options


def _summary(run) -> str:
    m = run.metrics
    parts = [f"{k}={m[k]:.3f}" for k in ("knn_top1", "linear_top1", "acc", "nmi", "ari") if isinstance(m.get(k), float)]
    occ = m.get("occupancy")
    if occ:
        parts.append(f"occupancy entropy={occ['entropy_ratio']:.2f} effective={occ['effective_clusters']:.1f}/"
                     f"{occ['num_clusters']} largest={occ['max_share']:.1%}")
        if occ.get("batch_entropy_ratio") is not None:  # one batch alone: low when batches take turns
            parts.append(f"per batch: entropy={occ['batch_entropy_ratio']:.2f} largest={occ['batch_max_share']:.1%}")
    plain = m.get("occupancy_without_rule")
    if plain:  # the same head with the balancing rule switched off: is the representation itself balanced?
        parts.append(f"without the balancing rule: entropy={plain['entropy_ratio']:.2f} "
                     f"largest={plain['max_share']:.1%} empty={plain['empty']}")
    return "  ".join(parts)


def cmd_train(args) -> int:
    from . import api, distributed
    from .train import CHECKPOINT, TrainConfig, run_directory

    options = dict(epochs=args.epochs, batch_size=args.batch_size, backbone=args.backbone, device=args.device,
                   out=args.out, seed=args.seed, optimizer=args.optimizer, lr=args.lr,
                   weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, crop_scale=args.crop_scale,
                   augmentation=args.augmentation, compile=args.compile,
                   eval_every=args.eval_every, knn_k=args.knn_k, data_dir=args.data_dir, train_subset=args.train_subset,
                   figures=args.figures, progress=args.progress)
    options = {k: v for k, v in options.items() if v is not None}  # what was given on the command line
    method, dataset, method_options = args.method, args.dataset, _parse_set(args.set)
    if args.resume:
        if not args.out:
            raise UserError("--resume needs --out pointing at the run directory to continue")
        if args.overwrite:
            raise UserError("--resume continues the run in --out and --overwrite starts it over; give one of them")

    def continue_command(out) -> str:
        # What a resume changed (--epochs N, --lr X) reaches the checkpoint only with an epoch: repeat it.
        changes = [f"--{flag} {value}" for flag, value in (("epochs", args.epochs), ("lr", args.lr))
                   if args.resume and value is not None]
        return " ".join([f"selfsup-lab train --resume --out {out}", *changes])

    try:
        run = api.train(method, dataset, resume=args.resume, overwrite=args.overwrite, method_options=method_options,
                        **options)
    except KeyboardInterrupt as err:
        out = run_directory(TrainConfig(method=method or "simclr", dataset=dataset or "digits", out=options.get("out")))
        if (out / CHECKPOINT).exists():  # the newline ends a progress bar's line
            print(f"\ninterrupted; the checkpoint of the last completed epoch is kept — continue with: "
                  f"{continue_command(out)}", file=sys.stderr)
        else:
            print("\ninterrupted before the first epoch ended; no checkpoint was written", file=sys.stderr)
        return interrupted_exit_code(err)
    if distributed.is_main_process():
        if run.status != "finished":
            print(f"{run.status}; the last checkpoint is in {run.out} — continue with: {continue_command(run.out)}")
        else:
            print(f"done: {run.out}\n  {_summary(run)}")
            if run.figure_files:  # drawn now: not older ones left in figures/ by an earlier run
                print("  figures: " + ", ".join(str(p) for p in run.figure_files))
    return 0


def cmd_eval(args) -> int:
    from . import api

    run = api.load_run(args.run_dir, device=args.device)
    run.evaluate()
    print(f"metrics written to {run.out / 'metrics.json'}\n  {_summary(run)}")
    return 0


def cmd_methods(args) -> int:
    from .methods import METHODS, describe_options, get_method_class

    named = args.names or list(METHODS)  # a method of your own by its import path, e.g. myrules.Centering
    for name in named:
        method = get_method_class(name)
        description = METHODS[name][2] if name in METHODS else (method.__doc__ or "").strip().split("\n")[0]
        print(f"{name:12s} {description}")
        if args.verbose or args.names:
            for opt, typ, default in describe_options(method.Options):
                shown = "None: set at run time from the data and batch size, see the method's file" \
                    if default is None else default
                print(f"    --set {opt}=<{typ}>  (default {shown})")
    if not args.names:
        print("\na method of your own: --method package.module.ClassName (a Method subclass; see "
              "selfsup_lab/methods/__init__.py); `selfsup-lab methods package.module.ClassName` lists its options")
    return 0


def cmd_datasets(args) -> int:
    from .data import DATASETS

    for name, description in DATASETS.items():
        print(f"{name:16s} {description}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    from .experiments import AUGMENTATIONS, EXPERIMENTS, add_progress_argument

    parser = argparse.ArgumentParser(prog="selfsup-lab", description="Clustering-based self-supervised learning lab.")
    sub = parser.add_subparsers(dest="command")

    t = sub.add_parser("train", help="train a method (default: SimCLR on the bundled digits, offline)")
    t.add_argument("--method", help="see `selfsup-lab methods` (default simclr), or the import path of a Method "
                   "subclass of your own, e.g. myrules.Centering")
    t.add_argument("--dataset", help="see `selfsup-lab datasets` (default digits); imagefolder:PATH for a folder/archive")
    t.add_argument("--epochs", type=int, help="default 40 on digits and synthetic data, 100 otherwise; the first "
                   "min(10, epochs/10) warm up the learning rate (--warmup-epochs), then it follows a cosine")
    t.add_argument("--batch-size", type=int, help="default 256 (METHODS.md's CIFAR recipe: 512, as the README's GPU "
                   "command); the default learning rate scales with it")
    t.add_argument("--backbone", help="auto (convnet on CPU, resnet18 on GPU), convnet, resnet18, resnet34")
    t.add_argument("--device", default=None, help="auto, cpu, cuda")
    t.add_argument("--out", help="run directory (default runs/<method>-<dataset>)")
    t.add_argument("--seed", type=int, help="default 0 (seeds the weights, the batches and the augmentation)")
    t.add_argument("--optimizer", choices=["sgd", "lars"])
    t.add_argument("--lr", type=float, help="base learning rate (default 0.06·B/128 for SGD)")
    t.add_argument("--warmup-epochs", type=int, help="epochs of linear learning-rate warm-up before the cosine "
                   "(default min(10, epochs/10); 0: start the cosine at the base rate)")
    t.add_argument("--crop-scale", type=float, nargs=2, metavar=("LOW", "HIGH"),
                   help="area range of the random resized crop (default 0.08 1; CoKe's CIFAR code: 0.3 1)")
    t.add_argument("--augmentation", choices=AUGMENTATIONS,
                   help="who makes the views: device (default; batched on the training device) or torchvision "
                        "(image by image on the CPU: slow, the reference pipeline to compare with)")
    t.add_argument("--weight-decay", type=float,
                   help="weight decay (default 5e-4, none on batch-norm weights and biases; CoKe's code: 1e-6)")
    t.add_argument("--compile", nargs="?", const=True, default=None, metavar="MODE",
                   help="torch.compile the backbone; MODE reduce-overhead also replays it as CUDA graphs (GPU)")
    t.add_argument("--eval-every", type=int, help="kNN every N epochs (default: at the end only)")
    t.add_argument("--knn-k", type=int, help="neighbours of the kNN evaluation (default 200, METHODS.md §5; fewer for "
                                            "a small training set)")
    t.add_argument("--data-dir", help="dataset cache (default ~/.cache/selfsup-lab)")
    t.add_argument("--train-subset", type=int, help="train on a seeded subset of N images")
    t.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its last checkpoint, with its own settings; a larger "
                        "--epochs extends it (the cosine schedule is recomputed over the new total)")
    t.add_argument("--set", nargs="*", action="extend", default=[], metavar="KEY=VALUE",
                   help="method options, e.g. --set temperature=0.5 (several pairs, or several --set, add up)")
    t.add_argument("--overwrite", action="store_true",
                   help="start from scratch in an --out that already holds a run (its files are replaced)")
    t.add_argument("--figures", action=argparse.BooleanOptionalAction, default=None,
                   help="draw the run's figures at the end (default: drawn; --resume keeps the run's own choice)")
    add_progress_argument(t, "a progress bar with loss, learning rate and throughput")
    t.set_defaults(func=cmd_train)

    e = sub.add_parser("eval", help="recompute metrics.json of a run directory from its checkpoint")
    e.add_argument("run_dir")
    e.add_argument("--device", default="auto")
    e.set_defaults(func=cmd_eval)

    m = sub.add_parser("methods", help="list the methods (-v: with their --set options)")
    m.add_argument("names", nargs="*", help="only these methods, with their options (a method of your own by its "
                   "import path)")
    m.add_argument("-v", "--verbose", action="store_true")
    m.set_defaults(func=cmd_methods)

    d = sub.add_parser("datasets", help="list the datasets")
    d.set_defaults(func=cmd_datasets)

    # Experiments that train several methods under one budget and draw the comparison.
    import importlib

    for name, module_name in EXPERIMENTS.items():
        full_name = f"selfsup_lab.experiments.{module_name}"
        try:
            module = importlib.import_module(full_name)
        except ModuleNotFoundError as err:
            if err.name != full_name:
                raise
            continue  # an experiment not built into this copy: leave its subcommand out
        x = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(x)
        x.set_defaults(func=module.run_cli)
    return parser


def _one_line_warning(message, category, filename, lineno, line=None, others=None) -> str:
    """The lab's own warnings as one line, "warning: ..."; other libraries' in the `others` format (Python's
    own unless the caller had set another). Under torchrun only rank 0 shows the lab's: every rank runs the same
    settings on the same data and would repeat them."""
    if Path(filename).resolve().is_relative_to(Path(__file__).resolve().parent):
        from . import distributed

        return f"warning: {message}\n" if distributed.is_main_process() else ""
    return (others or _python_formatwarning)(message, category, filename, lineno, line)


_python_formatwarning = warnings.formatwarning


def main(argv: list[str] | None = None) -> int:
    callers_format = warnings.formatwarning
    warnings.formatwarning = functools.partial(_one_line_warning, others=callers_format)
    code = None
    try:
        with sigterm_stops_like_ctrl_c(), only_rank_0_speaks():
            code = _run(argv)
        return code
    finally:  # a notebook or test that calls main() gets its own format back
        warnings.formatwarning = callers_format
        _leave_process_group(succeeded=code == 0)


@contextlib.contextmanager
def only_rank_0_speaks():
    """Under torchrun every process runs the command: only rank 0's output, messages and warnings are shown, so
    each sentence appears once. (An unexpected exception's traceback still reaches the terminal from any rank.)"""
    from .distributed import launched_rank

    if launched_rank() == 0:
        yield
        return
    with open(os.devnull, "w") as nowhere, contextlib.redirect_stdout(nowhere), contextlib.redirect_stderr(nowhere):
        yield


def _leave_process_group(succeeded: bool) -> None:
    """Destroy the process group a torchrun command joined, before the interpreter exits: left to the exit,
    gloo's threads can abort the process ("terminate called without an active exception")."""
    from . import distributed

    if distributed.is_distributed():
        distributed.leave_process_group(together=succeeded)


@contextlib.contextmanager
def sigterm_stops_like_ctrl_c():
    """Within this block, SIGTERM raises `Terminated`, a KeyboardInterrupt, instead of ending the process at once.

    A job scheduler stops a run with SIGTERM (Slurm at a time limit or on preemption, Kubernetes, `docker stop`,
    `kill`) and kills it only some seconds later. Python's default would end the process on the spot and leave
    the run's .lock behind, which refuses a `--resume` on another machine (a lock from another host cannot be
    checked). As a KeyboardInterrupt, SIGTERM stops the run the way Ctrl-C does: the checkpoint of the last
    completed epoch is kept (one being written is abandoned, the previous one stays), the lock is removed, the
    message says how to continue, and the exit code is 143.
    """
    if not hasattr(signal, "SIGTERM") or threading.current_thread() is not threading.main_thread():
        yield  # only the main thread may set a signal handler (a notebook or test calling main() from a thread)
        return

    def stop(signum, frame):
        raise Terminated()

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0
    try:
        empty = [name for name, value in vars(args).items() if isinstance(value, str) and not value.strip()]
        if empty and empty[0] == "run_dir":  # e.g. --dataset "$D" with D unset: not quietly the default
            raise UserError("the run directory given is an empty string (an unset shell variable?); pass the --out "
                            "directory of a training run")
        if empty:
            raise UserError(f"--{empty[0].replace('_', '-')} is empty; give it a value or leave it out (an unset "
                            f"shell variable?)")
        return args.func(args)
    except UserError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        print("interrupted", file=sys.stderr)
        return interrupted_exit_code(err)


if __name__ == "__main__":
    sys.exit(main())
