"""Under- vs over-clustering: how many negatives, and which? (METHODS.md §1–3, measured as in §5)

    selfsup-lab compare-negatives                       # digits, B = 64 and 256, a few minutes on a CPU
    selfsup-lab compare-negatives --quick               # CI scale, under a minute
    selfsup-lab compare-negatives --dataset imagefolder:../shared/data/cifar10-jpg-train.tar.gz \\
        --batch-sizes 256 512 --epochs 100              # CIFAR-10 on a GPU

    from selfsup_lab.experiments.negatives import compare_negatives
    result = compare_negatives(batch_sizes=(64, 256), epochs=10, out="runs/negatives")

Four methods span the axis from "no negatives" to "every negative":

    BYOL      no negatives                       → risk: classes merge   (under-clustering)
    triplet   one deputy from a rank window      → the paper's middle ground
    SimCLR    all 2B − 2 negatives               → risk: classes torn    (over-clustering)
    G-SimCLR  all negatives, fewer of them false  → SimCLR with guided batches

Every method gets the same budget (dataset, backbone, epochs, batch size, optimiser, learning-rate
schedule, augmentation, seed); only the method differs. A method may be given options with a spec such as
"triplet:deputy=rank-rule" or "gsimclr:pseudo_labels=encoder,refresh_every=2".

Per run we measure, on the test split (backbone features, no augmentation unless stated): kNN top-1
(METHODS.md §5 protocol), the homogeneity / completeness / fragmentation / mixing of a K = C spherical
k-means clustering, intra- vs inter-class cosines, alignment (two augmented views of each test image) and
uniformity, and the same-class-negative rate of the training batches (mean over epochs). Written to OUT:
results.json, results.md, figures/*.png and one run directory per (method, batch size, seed).
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch

HELP = "under- vs over-clustering: SimCLR / BYOL / truncated triplet / G-SimCLR under one budget"

DEFAULT_METHODS = ("simclr", "byol", "triplet", "gsimclr")
DEFAULT_BATCH_SIZES = (64, 256)
DEFAULT_EPOCHS = 5  # digits, idle 2-core CPU: 14–24 s per run, 2.8 min for the 8 (2026-11-23); 100+ for CIFAR on a GPU
QUICK = dict(batch_sizes=(32, 64), epochs=1, train_subset=128, seeds=(0,), linear=False, alignment_images=128,
             method_options={"gsimclr": {"ae_epochs": 1}})

COLUMNS = [  # (key, header, format)
    ("knn_top1", "kNN top-1", ".3f"), ("homogeneity", "homog.", ".3f"), ("completeness", "compl.", ".3f"),
    ("fragmentation", "frag.", ".2f"), ("mixing", "mixing", ".2f"), ("separation", "intra>inter AUC", ".3f"),
    ("same_class_neg_rate", "same-class neg.", ".4f"), ("alignment", "align.", ".3f"),
    ("uniformity", "unif.", ".3f"), ("steps", "steps", ".0f"), ("seconds", "s/run", ".0f"),
]


from . import (  # noqa: E402  (shared by both experiments)
    UNTRAINED_NOTE, add_progress_argument, add_reuse_arguments, add_training_arguments, aggregate_seeds, distinct,
    epoch_budget, folder_name, knn_protocol, parse_methods, refuse_to_replace, says_how_to_continue, table_cell,
    train_or_reuse, training_options, use_quick_subset,
)


@torch.no_grad()
def _augmented_features(trainer, images_uint8: torch.Tensor, seed: int, batch_size: int = 512):
    """Backbone features (eval mode) of one augmented view of each image, from a seeded generator."""
    generator = torch.Generator(device=trainer.device).manual_seed(seed)
    was_training = trainer.method.training
    trainer.method.eval()
    outs = []
    for start in range(0, len(images_uint8), batch_size):
        views = trainer.augment(images_uint8[start : start + batch_size].to(trainer.device), generator)
        with trainer.autocast():
            outs.append(trainer.method.embed(views).float().cpu())
    trainer.augment.close()  # --augmentation torchvision: its workers are not needed after this
    trainer.method.train(was_training)
    return torch.cat(outs)


def measure(run, seed: int = 0, alignment_images: int = 1000) -> tuple[dict, dict]:
    """The numbers of one finished run, and the arrays its figures need (alignment on the first
    `alignment_images` test images: a thousand pairs estimate a mean well enough)."""
    from .. import analysis

    trainer = run.trainer
    features, labels = run.embed("test")
    report = analysis.clustering_report(features, labels, seed=seed)
    cosines = analysis.cosine_distributions(features, labels, seed=seed)
    test_images = trainer.test_set.images[:alignment_images]
    z1, z2 = (_augmented_features(trainer, test_images, seed * 2 + v) for v in (1, 2))
    history = run.history
    row = {
        "knn_top1": run.metrics.get("knn_top1"), "linear_top1": run.metrics.get("linear_top1"),
        "nmi": run.metrics.get("nmi"), "acc": run.metrics.get("acc"),
        "homogeneity": report["homogeneity"], "completeness": report["completeness"],
        "fragmentation": report["fragmentation"], "mixing": report["mixing"],
        "intra_cos": cosines["intra_mean"], "inter_cos": cosines["inter_mean"], "separation": cosines["separation"],
        "alignment": analysis.alignment(z1, z2), "uniformity": analysis.uniformity(features, seed=seed),
        # epochs in which no batch held two labelled images have no rate (mostly unlabelled data, e.g. STL-10)
        "same_class_neg_rate": float(np.mean(rates)) if (rates := [r["same_class_neg_rate"] for r in history
                                                                  if "same_class_neg_rate" in r]) else None,
        "sampler": type(trainer.sampler).__name__,
    }
    last = history[-1] if history else {}
    if "pseudo_nmi" in last:
        row["pseudo_nmi"] = last["pseudo_nmi"]
    if "deputy_r_lo" in last:
        row["deputy_window"] = [int(last["deputy_r_lo"]), int(last["deputy_r_hi"])]
    # Per-anchor same-class negatives of one epoch of this run's sampler (for the histogram).
    batches = trainer.sampler.batches(trainer.epochs - 1, torch.Generator().manual_seed(seed))
    arrays = {"cosines": cosines,
              "counts": analysis.same_class_negative_counts(trainer.train_set.labels, batches).numpy()}
    return row, arrays


def markdown_table(rows: list[dict]) -> str:
    head = "| method | B | " + " | ".join(h for _, h, _ in COLUMNS) + " |"
    lines = [head, "|" + "---|" * (len(COLUMNS) + 2)]
    for r in rows:
        cells = [table_cell(r, key, fmt) for key, _, fmt in COLUMNS]
        lines.append(f"| {r['method']} | {r['batch_size']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def compare_negatives(methods=DEFAULT_METHODS, dataset: str = "digits", batch_sizes=DEFAULT_BATCH_SIZES,
                      epochs: int | None = None, out: str | Path = "runs/compare-negatives",
                      seeds=(0,), method_options: dict | None = None, progress: bool = False,
                      linear: bool = True, alignment_images: int = 1000, reuse: bool = False,
                      overwrite: bool | None = None, steps: int | None = None, **train_options) -> dict:
    """Train every method at every batch size (and seed) under one budget; write the table and figures.

    `method_options` maps a method name to options for it only (e.g. {"gsimclr": {"ae_epochs": 5}});
    `train_options` are TrainConfig fields shared by every run (backbone, device, lr, train_subset, ...).
    The budget is `epochs` (default DEFAULT_EPOCHS) at every batch size, or `steps`: about the same number of
    optimiser steps at every batch size, so that a larger batch does not also mean a shorter training.
    `linear=False` skips the linear probe (the slowest part of the evaluation at CI scale). `reuse=True`
    takes finished runs with identical settings from OUT/runs instead of training them again and continues
    interrupted ones from their last epoch (add seeds or methods to a comparison, or finish one that was
    interrupted; `train_or_reuse`; a run found with other settings is trained again). An OUT that already
    holds runs is refused unless `reuse` or `overwrite` says what to do with them; from Python,
    `overwrite=None` means "unless reuse".
    Returns {"rows": [one aggregated row per method × batch size], "untrained": the same measurements of the
    untrained backbone every run starts from (`api.untrained_run`; the table's last row), "runs": [every run],
    "out", "figures", "markdown"}.
    """
    from .. import analysis, api, distributed, viz
    from ..methods import get_method_class
    from ..errors import TrainingDiverged, UserError
    from ..train import make_output_dir

    batch_sizes, seeds = distinct(batch_sizes, "--batch-sizes", at_least=2), distinct(seeds, "--seeds")
    epochs_for, budget = epoch_budget(epochs, steps, batch_sizes, dataset, train_options, DEFAULT_EPOCHS)
    refuse_to_replace(out, reuse, overwrite)
    out = Path(out)
    make_output_dir(out / "figures")
    specs = parse_methods(methods)
    for _, name, _ in specs:
        get_method_class(name)  # an unknown name fails now, not after an hour of training
    per_method = method_options or {}
    runs, arrays = [], {}
    for batch_size in batch_sizes:
        for label, name, options in specs:
            for seed in seeds:
                config = api.make_config(name, dataset, epochs=epochs_for[batch_size], batch_size=batch_size,
                                         seed=seed, figures=False, progress=progress,
                                         out=str(out / "runs" / f"{folder_name(label)}-b{batch_size}-s{seed}"),
                                         **train_options, **{**per_method.get(name, {}), **options})
                try:
                    run = train_or_reuse(config, reuse, linear)
                except TrainingDiverged as err:  # the figures need every run: stop, keeping what is finished
                    raise UserError(f"{label} at B = {batch_size}, seed {seed} diverged ({err.what}); the runs finished "
                                    f"so far are kept in {out}: change that method's options or leave it out, and "
                                    f"re-run with --reuse to keep the others") from None
                seconds = run.metrics.get("wall_seconds")
                row, extra = measure(run, seed, alignment_images)
                epochs_run = epochs_for[batch_size]
                row.update(method=label, batch_size=batch_size, seed=seed, seconds=seconds, epochs=epochs_run,
                           steps=epochs_run * run.trainer.steps_per_epoch)
                runs.append(row)
                arrays.setdefault((label, batch_size), extra)  # figures show the first seed
                print(f"[compare-negatives] {label} B={batch_size} seed={seed}: kNN {row['knn_top1']:.3f}, "
                      f"homogeneity {row['homogeneity']:.3f}, completeness {row['completeness']:.3f}, "
                      f"same-class negatives {table_cell(row, 'same_class_neg_rate', '.4f')} ({seconds or 0:.0f} s)",
                      flush=True)
    rows = [aggregate_seeds([r for r in runs if r["method"] == label and r["batch_size"] == b])
            for b in batch_sizes for label, _, _ in specs]
    # Reference: the untrained backbone every run starts from (first seed), measured the same way.
    untrained, _ = measure(api.untrained_run(dataset, seed=seeds[0], linear=linear, batch_size=min(batch_sizes),
                                             **train_options), seeds[0], alignment_images)
    untrained.update(method="untrained network", batch_size="–", steps=0, epochs=0)

    # Reference values for the same-class rate: random batches and the floor no batch can beat.
    train_labels = run.trainer.train_set.labels
    num_classes = int(train_labels.max()) + 1
    reference = {b: {"random_expected": analysis.expected_same_class_negative_rate(train_labels),
                     "floor": analysis.min_same_class_negative_rate(b, num_classes)} for b in batch_sizes}

    figures = []
    markdown = markdown_table(rows + [untrained])
    if not distributed.is_main_process():
        return {"rows": rows, "untrained": untrained, "runs": runs, "out": str(out), "figures": figures,
                "markdown": markdown}

    def save(fig, name):
        figures.append(str(viz.save_figure(fig, out / "figures" / name)))

    save(viz.homogeneity_completeness_figure(rows), "homogeneity_completeness.png")
    save(viz.fragmentation_mixing_figure(rows), "fragmentation_mixing.png")
    save(viz.alignment_uniformity_figure(rows), "alignment_uniformity.png")
    save(viz.metric_vs_batch_figure(rows, ("knn_top1", "homogeneity", "completeness", "same_class_neg_rate"),
                                    reference), "metrics_vs_batch.png")
    save(viz.rank_window_figure(class_counts=sorted({10, 100, 1000, num_classes})), "rank_window.png")
    for b in batch_sizes:
        save(viz.cosine_distributions_figure({label: arrays[(label, b)]["cosines"] for label, _, _ in specs}),
             f"cosine_distributions_b{b}.png")
        counts = {}
        for label, _, _ in specs:
            kind = next(r["sampler"] for r in rows if r["method"] == label and r["batch_size"] == b)
            kind = "random" if kind == "RandomBatches" else f"guided ({label})"
            counts.setdefault(kind, arrays[(label, b)]["counts"])
        save(viz.same_class_negatives_figure(counts, b, num_classes), f"same_class_negatives_b{b}.png")

    notes = f"- {UNTRAINED_NOTE}\n" + "\n".join(
        f"- B = {b}: same-class negative rate of random batches {v['random_expected']:.4f}, floor for any batch "
        f"composition {v['floor']:.4f}" for b, v in reference.items())
    knn = knn_protocol(train_options)
    protocol = (f"dataset {dataset}; {budget} (epochs per batch size: {epochs_for}); seeds {list(seeds)}; "
                "same budget for all methods "
                f"(options: {json.dumps(train_options)}); {knn} cosine, train bank / test queries, final "
                "epoch; clustering = spherical k-means K = C on test backbone features; fragmentation/mixing at 90% "
                "coverage; alignment = two augmented views of each test image; same-class negatives = mean over "
                "training epochs")
    (out / "results.md").write_text(f"# compare-negatives\n\n{protocol}\n\n{markdown}\n\n{notes}\n")
    result = {"rows": rows, "untrained": untrained, "runs": runs,
              "reference": {str(b): v for b, v in reference.items()},
              "protocol": protocol, "figures": figures, "out": str(out)}
    (out / "results.json").write_text(json.dumps(result, indent=2, default=float))
    result["markdown"] = markdown
    return result


def add_arguments(parser) -> None:
    parser.add_argument("--methods", nargs="+", default=list(DEFAULT_METHODS),
                        help="methods to compare; options with name:key=value,... (e.g. triplet:deputy=rank-rule)")
    parser.add_argument("--dataset", default="digits")
    parser.add_argument("--batch-sizes", nargs="+", type=int, help="one run per method and batch size (default "
                        f"{' '.join(map(str, DEFAULT_BATCH_SIZES))}; --quick: {' '.join(map(str, QUICK['batch_sizes']))})")
    parser.add_argument("--epochs", type=int, help=f"epochs per run (default {DEFAULT_EPOCHS})")
    parser.add_argument("--steps", type=int, help="about the same number of optimiser steps for every "
                                                  "batch size (whole epochs; instead of --epochs)")
    parser.add_argument("--seeds", nargs="+", type=int, default=[0], help="several seeds give error bars")
    parser.add_argument("--out", default="runs/compare-negatives")
    add_training_arguments(parser)
    parser.add_argument("--quick", action="store_true", help="CI scale: 1 epoch on 128 images (or all of a smaller training set), B = 32 and 64")
    add_progress_argument(parser, "a progress bar per run")
    add_reuse_arguments(parser, "OUT/runs")


@says_how_to_continue
def run_cli(args) -> int:
    options = training_options(args)
    settings = dict(epochs=args.epochs, steps=args.steps, seeds=tuple(args.seeds))
    if args.batch_sizes:  # else compare_negatives' default, or QUICK's
        settings["batch_sizes"] = tuple(args.batch_sizes)
    if args.quick:
        skip = {"train_subset", "epochs"} if args.steps else {"train_subset"}  # --steps replaces QUICK's epochs
        if args.batch_sizes:  # batch sizes given on the command line win over QUICK's
            skip.add("batch_sizes")
        settings.update({k: v for k, v in QUICK.items() if k not in skip})
        use_quick_subset(args.dataset, options, QUICK["train_subset"])
        options.setdefault("knn_k", 20)  # a bank of 128 images: 20 neighbours, not 200
    result = compare_negatives(methods=tuple(args.methods), dataset=args.dataset, out=args.out,
                               progress=args.progress, reuse=args.reuse, overwrite=args.overwrite, **settings, **options)
    print(result["markdown"])
    print(f"written: {Path(result['out']) / 'results.md'}, results.json and {len(result['figures'])} figures")
    return 0
