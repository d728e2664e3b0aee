"""Collapse vs balance: five answers to "how do we keep the clusters in use?" (METHODS.md §4, measured as in §5)

    selfsup-lab compare-balancing                          # digits, B = 256, the five methods, minutes on a CPU
    selfsup-lab compare-balancing --batch-sizes 32 128 512 # the batch-size sweep (same epochs)
    selfsup-lab compare-balancing --batch-sizes 32 128 512 --steps 220   # ... same optimiser steps
    selfsup-lab compare-balancing --seeds 0 1 2            # three seeds: mean ± std in the table
    selfsup-lab compare-balancing --quick                  # CI scale (seconds of compute per method)
    selfsup-lab compare-balancing --dataset imagefolder:../shared/data/cifar10-jpg-train.tar.gz \\
        --epochs 100 --batch-sizes 64 256 512              # CIFAR-10 on a GPU

    from selfsup_lab.experiments.balancing import compare_balancing
    result = compare_balancing(batch_sizes=(32, 128, 512), out="runs/balancing")

    naive        no balancing                          → collapses: a few clusters take every image
    swav         per-batch equipartition (Sinkhorn)    → balanced, but a B×K constraint gets noisy when B ≪ K
    deepcluster  k-means over a memory bank per epoch  → balanced by construction, at a full pass per epoch
    coke         online k-means with minimum sizes     → dual variables prop up only the small clusters
    excb         running size estimate moves scores   → balanced from an estimate that does not depend on B

Every method gets the same budget (dataset, backbone, epochs, batch size, optimiser, learning-rate schedule,
augmentation, seed); only the method differs. Options for one method only: a spec such as "coke:dual_lr=1"
or `method_options={"coke": {"dual_lr": 1.0}}`. Across batch sizes the budget is the same number of epochs by
default, so a larger batch also means fewer optimiser steps; `steps=` (`--steps`) gives every batch size the
same number of steps instead (epochs = steps / steps per epoch, rounded), which separates the two.

Per run: the occupancy of the tracked head's hard assignments in the last epoch (normalised entropy H/log K,
effective clusters exp H, largest share, empty clusters — `metrics.occupancy_stats` — and H/log K per batch,
the mean of each step's own, which falls below the epoch's when batches sit in few clusters that take turns);
the same head's
occupancy *without* the balancing rule (the plain argmax of its scores in the same training steps,
`StepOutput.assignments_without_rule`: a rule can keep the assignments balanced while the representation
itself collapses); kNN top-1 and the clustering scores of `api.evaluate` (the method's own K = C head where it
has one, else k-means with K = C on the backbone features: the `clustering from` column says which) and the
wall-clock minutes. Written to OUT:
results.md (with a last row for the untrained network, the reference every run must beat), results.json,
figures/comparison.png (entropy over epochs, with and without the rule, one batch alone dotted, + the
sorted-occupancy heatmap per method, one row per batch size; the first seed's runs),
figures/batch_size_sweep.png (with several batch sizes) and one run directory per (method, batch size), or per
(method, batch size, seed) with several seeds. With several seeds a measured table cell reads mean ± sample
standard deviation (± 0 where every seed measured the same).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

HELP = "collapse vs balance: naive / SwAV / DeepCluster / CoKe / ExCB under one budget, occupancy figure + table"

DEFAULT_METHODS = ("naive", "swav", "deepcluster", "coke", "excb")
# digits, B = 256, on an idle 2-core CPU: 12–24 s per method, 1.3 min for all five (2026-11-23). The first
# measurement, on a CPU that other jobs kept ~5× oversubscribed, took 17 min (benchmarks/results_balancing.md).
DEFAULT_EPOCHS = 5
DEFAULT_BATCH_SIZES = (256,)
# CI scale: a 128-image subset, 2 epochs of B = 32, narrow heads — seconds of compute per method.
QUICK = dict(epochs=2, batch_sizes=(32,), train_subset=128, knn_k=20,  # a bank of 128 images: 20 neighbours
             shared_options={"proj_hidden": 64, "pred_hidden": 64})

COLUMNS = [  # (key, header, format)
    ("k", "K", "d"), ("epochs", "epochs", "d"), ("steps", "steps", "d"), ("entropy_ratio", "H/log K", ".3f"),
    ("batch_entropy_ratio", "H/log K per batch", ".3f"), ("effective_clusters", "eff. clusters", ".1f"),
    ("max_share", "largest share", ".3f"), ("empty", "empty", "d"),
    ("entropy_ratio_without_rule", "H/log K without rule", ".3f"), ("empty_without_rule", "empty without rule", "d"),
    ("knn_top1", "kNN top-1", ".3f"),
    ("nmi", "NMI", ".3f"), ("acc", "ACC", ".3f"), ("ari", "ARI", ".3f"), ("minutes", "minutes", ".2f"),
]


from . import (  # noqa: E402  (shared by both experiments)
    UNTRAINED_NOTE, add_progress_argument, add_reuse_arguments, add_training_arguments, aggregate_seeds, distinct,
    epoch_budget, folder_name, knn_protocol, parse_methods, refuse_to_replace, says_how_to_continue, table_cell,
    train_or_reuse, training_options, use_quick_subset,
)


def summarise(run, minutes: float) -> dict:
    """One table row from a finished run (final-epoch occupancy of the tracked head + metrics.json)."""
    occupancy = run.history[-1].get("occupancy", {}) if run.history else {}
    metrics = run.metrics
    without_rule = metrics.get("occupancy_without_rule") or {}
    return {
        "method": run.trainer.config.method, "batch_size": run.trainer.config.batch_size,
        "epochs": run.trainer.epoch, "steps": run.trainer.global_step,
        "k": run.method.num_clusters, "k_info": run.method.extra_info(),
        **{key: occupancy.get(key) for key in ("entropy_ratio", "batch_entropy_ratio", "effective_clusters",
                                               "max_share", "empty")},
        **{f"{key}_without_rule": without_rule.get(key) for key in ("entropy_ratio", "max_share", "empty")},
        **{key: metrics.get(key) for key in ("knn_top1", "linear_top1", "nmi", "acc", "ari", "clustering_from")},
        "minutes": minutes, "out": str(run.out),
    }


def untrained_row(dataset: str, seed: int, train_options: dict) -> dict:
    """The reference row: the untrained backbone every run starts from (`api.untrained_run`)."""
    from .. import api

    t0 = time.perf_counter()
    metrics = api.untrained_run(dataset, seed=seed, **train_options).metrics
    return {"method": "untrained network", "batch_size": "–", "epochs": 0, "steps": 0,
            **{key: metrics.get(key) for key in ("knn_top1", "linear_top1", "nmi", "acc", "ari", "clustering_from")},
            "minutes": (time.perf_counter() - t0) / 60}


def markdown_table(rows: list[dict]) -> str:
    head = "| method | B | " + " | ".join(h for _, h, _ in COLUMNS) + " | clustering from |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 3)]
    for r in rows:
        if r.get("error"):
            lines.append(f"| {r['method']} | {r['batch_size']} | failed: {r['error']} |" + " |" * len(COLUMNS))
            continue
        cells = [table_cell(r, key, fmt) for key, _, fmt in COLUMNS]
        source = "own K = C head" if str(r.get("clustering_from", "")).startswith("the method") else "k-means K = C"
        lines.append(f"| {r['method']} | {r['batch_size']} | " + " | ".join(cells) + f" | {source} |")
    return "\n".join(lines)


def comparison_figure(occupancy: dict, methods: list[str], batch_sizes: list[int], title: str = "",
                      without_rule: dict | None = None, per_batch: dict | None = None):
    """One row per batch size: the entropy of every method over epochs, then each method's sorted occupancy.

    `occupancy` and `without_rule` map (method, batch size) to per-epoch count vectors (the trainer's
    occupancy_log "epochs" and "epochs_without_rule"). With `without_rule`, a second entropy panel shows the
    same heads with the balancing rule switched off, in the same colours. `per_batch` maps (method, batch
    size) to the history's per-epoch `batch_entropy_ratio` (one batch alone), drawn dotted in the first panel.
    """
    from .. import viz

    plt = viz._plt()
    panels = 2 if without_rule else 1
    cols = panels + len(methods)
    fig, axes = plt.subplots(len(batch_sizes), cols, figsize=(3.3 * cols, 2.9 * len(batch_sizes)), squeeze=False)
    for row, batch_size in zip(axes, batch_sizes):
        series = {m: occupancy[(m, batch_size)] for m in methods if occupancy.get((m, batch_size))}
        batches = {m: (per_batch or {}).get((m, batch_size)) for m in series}
        viz.entropy_curve(series, ax=row[0], title=f"B = {batch_size}: H / log K per epoch", batch_entropy=batches)
        if without_rule:
            plain = {m: without_rule.get((m, batch_size)) or [] for m in series}  # keeps each method's colour
            viz.entropy_curve(plain, ax=row[1], title=f"B = {batch_size}: the same, balancing rule off")
        for ax, method in zip(row[panels:], methods):
            counts = occupancy.get((method, batch_size))
            if counts:
                viz.occupancy_heatmap(counts, ax=ax, title=f"{method}, B = {batch_size} (K = {len(counts[0])})")
            else:
                ax.set_axis_off()
                ax.set_title(f"{method}, B = {batch_size}: failed", fontsize=10)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def sweep_figure(rows: list[dict], methods: list[str], title: str = ""):
    """Final occupancy entropy, largest share and kNN top-1 against the batch size, one line per method."""
    from .. import viz

    plt = viz._plt()
    panels = [("entropy_ratio", "final H / log K"), ("max_share", "final largest-cluster share"),
              ("knn_top1", "kNN top-1")]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.8 * len(panels), 3.1))
    for ax, (key, label) in zip(axes, panels):
        for method in methods:
            points = sorted((r["batch_size"], r[key]) for r in rows
                            if r["method"] == method and not r.get("error") and r.get(key) is not None)
            if points:
                ax.plot(*zip(*points), marker="o", label=method)
        ax.set_xscale("log", base=2)
        ax.set_xlabel("batch size B")
        ax.set_title(label, fontsize=10)
        ax.grid(alpha=0.3)
    axes[0].legend(fontsize=8, frameon=False)
    if title:
        fig.suptitle(title, fontsize=11)
    fig.tight_layout()
    return fig


def compare_balancing(methods=DEFAULT_METHODS, dataset: str = "digits", epochs: int | None = None,
                      batch_sizes=None, out: str | Path = "runs/compare-balancing", seeds=(0,),
                      quick: bool = False, method_options: dict | None = None, shared_options: dict | None = None,
                      progress: bool = True, steps: int | None = None, reuse: bool = False,
                      overwrite: bool | None = None, **train_options) -> dict:
    """Train every method at every batch size under one budget; write the table and the comparison figures.

    `methods` are names or specs ("coke:dual_lr=1"); `method_options` maps a method name to options for it
    only; `shared_options` are method options given to every method that has them (e.g. proj_hidden);
    `train_options` are TrainConfig fields shared by every run (backbone, device, lr, train_subset, ...).
    `batch_sizes`: one run per method and batch size (default DEFAULT_BATCH_SIZES, with `quick` QUICK's).
    `steps` (instead of `epochs`) gives every batch size about the same number of optimiser steps.
    `quick=True` shrinks everything to CI scale (QUICK). A run that fails is reported in the table (and in
    the result's "failed") instead of stopping the others.

    Returns {"rows", "untrained", "failed", "out", "table", "json", "figures", "minutes"}; "untrained" is the
    reference row of the untrained backbone (`api.untrained_run`, same dataset, subset and seed).
    `seeds`: one run per seed for every (method, batch size); "rows" then hold the mean over seeds (KEY_std:
    the standard deviation) and "runs" every single run. `reuse=True` loads finished runs with identical
    settings from OUT and continues interrupted ones from their last epoch (`train_or_reuse`), so a long
    comparison can be run in pieces; the `min` column is then the time of the invocation that finished a run (a
    run found with other settings is trained again). An OUT that already holds runs is refused unless `reuse` or
    `overwrite` says what to do with them; from Python, `overwrite=None` means "unless reuse".
    """
    from .. import api, distributed
    from ..errors import TrainingDiverged, UserError
    from ..methods import get_method_class
    from ..train import TrainConfig, make_output_dir

    specs = parse_methods(methods)  # (label, method name, options); the label names rows and folders
    labels = [label for label, _, _ in specs]
    if batch_sizes is None:  # batch sizes that were given win over QUICK's
        batch_sizes = QUICK["batch_sizes"] if quick else DEFAULT_BATCH_SIZES
    if quick:
        epochs = QUICK["epochs"] if epochs is None and steps is None else epochs
        use_quick_subset(dataset, train_options, QUICK["train_subset"])
        train_options.setdefault("knn_k", QUICK["knn_k"])
        shared_options = {**QUICK["shared_options"], **(shared_options or {})}
    batch_sizes = distinct(batch_sizes, "--batch-sizes", at_least=2)  # self-supervised losses compare images
    seeds = distinct(seeds, "--seeds")
    fields = {f for f in TrainConfig.__dataclass_fields__}
    unknown = sorted(set(train_options) - fields)
    if unknown:
        raise UserError(f"unknown training option '{unknown[0]}'; per-method options go in method_options or a "
                        "spec such as 'coke:dual_lr=1'")
    classes = {name: get_method_class(name) for _, name, _ in specs}  # unknown names fail before any training
    epochs_for, budget = epoch_budget(epochs, steps, batch_sizes, dataset, train_options, DEFAULT_EPOCHS)
    refuse_to_replace(out, reuse, overwrite)
    out = make_output_dir(Path(out))

    def run_name(label: str, batch_size: int, seed: int) -> str:  # one seed keeps the short name
        return f"{folder_name(label)}-b{batch_size}" + (f"-s{seed}" if len(seeds) > 1 else "")

    runs, failed, occupancy, without_rule, per_batch = [], [], {}, {}, {}
    start = time.perf_counter()
    for seed in seeds:
        for batch_size in batch_sizes:
            for label, name, given in specs:
                valid = classes[name].Options.__dataclass_fields__
                options = {**{k: v for k, v in (shared_options or {}).items() if k in valid},
                           **(method_options or {}).get(name, {}), **given}
                config = api.make_config(name, dataset, epochs=epochs_for[batch_size], batch_size=batch_size,
                                         seed=seed, figures=False, out=str(out / run_name(label, batch_size, seed)),
                                         progress=progress, method_options=options, **train_options)
                try:
                    run = train_or_reuse(config, reuse)
                except TrainingDiverged as err:  # this method's loss became NaN: the others may still train
                    error = f"diverged: {err.what}"
                    failed.append({"method": label, "batch_size": batch_size, "seed": seed, "error": error})
                    runs.append({"method": label, "batch_size": batch_size, "seed": seed, "error": error})
                    print(f"[compare-balancing] {label} B={batch_size} seed={seed}: {error}", flush=True)
                    continue
                except UserError:
                    raise  # a mistake in the arguments: every run would hit it
                except Exception as err:  # a bug in one method should not cost the others' results
                    message = f"{type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''}"
                    failed.append({"method": label, "batch_size": batch_size, "seed": seed, "error": message})
                    runs.append({"method": label, "batch_size": batch_size, "seed": seed, "error": message})
                    continue
                minutes = run.metrics.get("wall_seconds", float("nan")) / 60
                row = {**summarise(run, minutes), "method": label, "seed": seed}
                runs.append(row)
                shown = {key: "–" if row[key] is None else format(row[key], fmt) for key, fmt in
                         (("entropy_ratio", ".2f"), ("max_share", ".1%"), ("empty", "d"), ("knn_top1", ".3f"))}
                occupancy_text = "no clusters" if row["k"] is None else (
                    f"occupancy entropy {shown['entropy_ratio']}, largest cluster {shown['max_share']}, "
                    f"{shown['empty']} of {row['k']} empty")
                print(f"[compare-balancing] {label} B={batch_size} seed={seed}: {occupancy_text}, "
                      f"kNN {shown['knn_top1']} ({minutes * 60:.0f} s)", flush=True)
                occupancy[(label, batch_size, seed)] = run.trainer.occupancy_log.get("epochs", [])
                without_rule[(label, batch_size, seed)] = run.trainer.occupancy_log.get("epochs_without_rule", [])
                batch_curve = [r.get("occupancy", {}).get("batch_entropy_ratio") for r in run.history]
                per_batch[(label, batch_size, seed)] = batch_curve if None not in batch_curve else None
    rows = [aggregate_seeds([r for r in runs if r["method"] == label and r["batch_size"] == b])
            for b in batch_sizes for label in labels]
    untrained = aggregate_seeds([{**untrained_row(dataset, seed, {"batch_size": min(batch_sizes), **train_options}),
                                  "seed": seed} for seed in seeds])
    minutes = (time.perf_counter() - start) / 60

    result = {"rows": rows, "runs": runs, "untrained": untrained, "failed": failed, "out": str(out),
              "minutes": minutes, "figures": []}
    if not distributed.is_main_process():
        return result
    from .. import data, viz

    make_output_dir(out / "figures")  # one sentence if it cannot be made (e.g. a file of that name)
    title = f"{data.display_name(dataset)}, {budget}, seed {seeds[0]}"
    first_seed = {(m, b): counts for (m, b, seed), counts in occupancy.items() if seed == seeds[0]}
    first_seed_plain = {(m, b): counts for (m, b, seed), counts in without_rule.items() if seed == seeds[0]}
    first_seed_batches = {(m, b): curve for (m, b, seed), curve in per_batch.items() if seed == seeds[0]}
    figures = [(comparison_figure(first_seed, labels, batch_sizes, title=title, without_rule=first_seed_plain,
                                  per_batch=first_seed_batches), "comparison.png")]
    if len(batch_sizes) > 1:
        figures.append((sweep_figure(rows, labels, title=title), "batch_size_sweep.png"))
    for fig, filename in figures:
        result["figures"].append(str(viz.save_figure(fig, out / "figures" / filename)))

    knn = knn_protocol(train_options)
    protocol = (f"dataset {dataset}; {budget} (epochs per batch size: {epochs_for}); seeds {seeds}; "
                f"training options {train_options or 'defaults'}; "
                "occupancy = hard assignments of the tracked head (K = C head if the method has one) over the "
                "last epoch; 'without rule' = the same head's plain argmax (no Sinkhorn, duals or size estimate) "
                f"in the same training steps; {knn} cosine on backbone features (train split without "
                "augmentation as bank, test split as queries, final epoch); NMI/ACC/ARI on the test split")
    (out / "results.md").write_text(f"# compare-balancing\n\n{protocol}\n\n{markdown_table(rows + [untrained])}\n\n"
                                    f"{UNTRAINED_NOTE}\n\nTotal: {minutes:.1f} minutes.\n")
    payload = {"protocol": protocol, "dataset": dataset, "epochs": epochs_for, "steps": steps,
               "batch_sizes": batch_sizes,
               "seeds": seeds, "methods": labels, "rows": rows, "runs": runs, "untrained": untrained,
               "minutes": minutes,
               "occupancy_per_epoch": {run_name(m, b, s): counts for (m, b, s), counts in occupancy.items()}}
    (out / "results.json").write_text(json.dumps(payload, indent=1, default=str))
    result.update(table=str(out / "results.md"), json=str(out / "results.json"))
    return result


# --- command line -------------------------------------------------------------------------------------------

def add_arguments(parser) -> None:
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="methods or specs such as coke:dual_lr=1 (default: all five)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default {DEFAULT_EPOCHS}; --quick: {QUICK['epochs']})")
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="one run per method and batch size (default "
                        f"{' '.join(map(str, DEFAULT_BATCH_SIZES))}; --quick: {' '.join(map(str, QUICK['batch_sizes']))})")
    parser.add_argument("--steps", type=int, help="about the same number of optimiser steps for every "
                                                  "batch size (whole epochs; instead of --epochs)")
    parser.add_argument("--out", default="runs/compare-balancing")
    parser.add_argument("--seeds", "--seed", nargs="+", type=int, default=[0],
                        help="one run per seed; several give mean ± std in the table")
    add_training_arguments(parser, explicit_auto=True)
    parser.add_argument("--quick", action="store_true", help="CI scale: 128 images (or all of a smaller training set), 2 epochs, B = 32")
    add_progress_argument(parser, "a progress bar per run")
    add_reuse_arguments(parser, "OUT")


@says_how_to_continue
def run_cli(args) -> int:
    train_options = training_options(args)
    result = compare_balancing(methods=args.methods, dataset=args.dataset, epochs=args.epochs,
                               batch_sizes=args.batch_sizes, out=args.out, seeds=args.seeds, quick=args.quick,
                               progress=args.progress, steps=args.steps, reuse=args.reuse, overwrite=args.overwrite,
                               **train_options)
    print(markdown_table(result["rows"] + [result["untrained"]]))
    print(UNTRAINED_NOTE)
    print(f"\n{result['minutes']:.1f} minutes; written to {result['out']}: results.md, results.json, "
          + ", ".join("figures/" + Path(f).name for f in result["figures"]))
    for failure in result["failed"]:
        print(f"warning: {failure['method']} (B = {failure['batch_size']}, seed {failure['seed']}) failed: "
              f"{failure['error']}")
    return 1 if result["failed"] else 0
