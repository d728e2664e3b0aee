"""The Python front door: `selfsup_lab.train(...)` returns a `Run`; `selfsup_lab.load_run(dir)` reopens one.

    run = selfsup_lab.train("simclr", "digits", epochs=20)
    run.history[-1]["loss"], run.metrics["knn_top1"]
    features, labels = run.embed("test")
    clusters = run.assign("test")          # a clustering head with K = number of classes, else None

Keyword options are the fields of `TrainConfig` (epochs, batch_size, backbone, ...); any other keyword is
passed to the method as an option (the same as `--set key=value` on the command line), except `sampler`
and `sampler.KEY`, which choose the batch sampler and its options (`selfsup_lab/samplers.py`).
"""
from __future__ import annotations

import dataclasses
import json
import os
import warnings
from pathlib import Path

import torch

from . import distributed
from .errors import UserError
from .train import CHECKPOINT, Callback, Trainer, TrainConfig, load_checkpoint


def evaluate(trainer: Trainer | Run, linear: bool = True) -> dict:
    """metrics.json: kNN (METHODS.md §5), linear probe, clustering ACC/NMI/ARI and final occupancy, of a `Run`
    (from `train` or `load_run`) or its `Trainer`. Nothing is written: `run.evaluate()` also saves metrics.json.

    Methods without a K = C head are clustered by k-means seeded with the run's own seed, so evaluating the same
    checkpoint twice gives the same numbers."""
    from .metrics import clustering_scores, kmeans_clustering_scores, knn_accuracy, linear_probe

    if isinstance(trainer, Run):
        trainer = trainer.trainer
    if not isinstance(trainer, Trainer):
        raise UserError(f"evaluate takes a run (from selfsup_lab.train or selfsup_lab.load_run), got {trainer!r}; "
                        f"for a run directory, selfsup_lab.load_run(path).evaluate() also writes its metrics.json")
    config = trainer.config
    train_set = trainer.labelled_train_set  # the unlabelled training images (STL-10) have nothing to score
    train_x = trainer.features(train_set.images)
    test_x = trainer.features(trainer.test_set.images)
    if not (torch.isfinite(train_x).all() and torch.isfinite(test_x).all()):
        raise UserError(f"the features of the run in {trainer.out} are NaN or infinite, so there is nothing to evaluate: "
                        f"its training diverged; train again with a lower learning rate (--lr)")
    train_y, test_y = train_set.labels.to(train_x.device), trainer.test_set.labels.to(test_x.device)
    if config.knn_k >= len(train_y) // 2:  # most of the bank votes for every query: kNN tends to the majority class
        warnings.warn(f"kNN takes k = {config.knn_k} neighbours from a bank of only {len(train_y)} labelled training "
                      f"images, so most of them vote for every test image and kNN says little; use fewer "
                      f"neighbours (--knn-k 20, or knn_k=20 from Python)", stacklevel=2)
    metrics = {
        "knn_top1": knn_accuracy(train_x, train_y, test_x, test_y, k=config.knn_k, temperature=config.knn_temperature),
    }
    if linear:
        metrics["linear_top1"] = linear_probe(train_x, train_y, test_x, test_y)
    own_clusters = trainer.features(trainer.test_set.images, fn=trainer.method.assign_clusters) \
        if trainer.method.has_class_sized_head else None
    if own_clusters is not None:
        metrics.update(clustering_scores(test_y.cpu(), own_clusters.long().cpu()))
        metrics["clustering_from"] = "the method's own K = C head"
    else:
        metrics.update(kmeans_clustering_scores(test_x, test_y, seed=config.seed))
        metrics["clustering_from"] = "spherical k-means (K = C) on backbone features"
    for key in ("occupancy", "occupancy_without_rule"):  # the last epoch's, from the training assignments
        if trainer.history and key in trainer.history[-1]:
            metrics[key] = trainer.history[-1][key]
    metrics["protocol"] = (f"kNN k={config.knn_k} τ={config.knn_temperature} cosine on backbone features, labelled train "
                           "split (no augmentation) as bank, test split as queries, final epoch; linear probe on frozen "
                           "standardised features; clustering on the test split")
    metrics["epochs_trained"] = trainer.epoch
    metrics["dataset"] = config.dataset
    metrics["device"] = str(trainer.device)
    return metrics


def untrained_run(dataset: str = "digits", seed: int = 0, linear: bool = True, calibrate_batchnorm: bool = True,
                  **train_options) -> "Run":
    """The *untrained* backbone as a `Run` with its metrics: what a run must beat to have learned anything.

    Every method builds its backbone right after `torch.manual_seed(seed)`, so with the same dataset, backbone,
    train_subset and seed these are the random weights all of them start from. Short runs on small data are
    easily *worse* than this (random conv features are a strong baseline for kNN), so the experiments print
    it as a reference row. Clustering is always k-means (K = C) on the features: an untrained head has none.
    Nothing is written to disk.

    `calibrate_batchnorm`: first set every batch norm's running statistics from one pass over the
    un-augmented training images. Without it an untrained batch norm normalises with mean 0 / variance 1,
    which is not how a trained network's statistics look; with it the reference is the stronger (the fair)
    one: on digits with the ConvNet, kNN top-1 0.889 calibrated against 0.842 without (seed 0, 2026-11-22).
    """
    config = make_config("simclr", dataset, seed=seed, **{**train_options, "progress": False, "figures": False})
    trainer = Trainer(config, callbacks=[])
    if calibrate_batchnorm:
        _calibrate_batchnorm(trainer)
    return Run(trainer, evaluate(trainer, linear=linear))  # metrics["epochs_trained"] == 0


@torch.no_grad()
def _calibrate_batchnorm(trainer: Trainer, batch_size: int = 1024) -> None:
    """Every batch norm's running mean/variance := its average over one pass of the un-augmented train set."""
    norms = [m for m in trainer.method.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    momenta = [norm.momentum for norm in norms]
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # None = cumulative average over the batches seen, not an exponential one
    trainer.method.train()
    images = trainer.train_set.images
    for start in range(0, len(images), batch_size):
        trainer.method.embed(trainer.prepare(images[start : start + batch_size]))
    trainer.method.eval()
    for norm, momentum in zip(norms, momenta):  # later forward passes in train mode behave as usual
        norm.momentum = momentum


class Run:
    """A trained (or training) run: its directory, history, metrics, and the model to embed/assign with."""

    def __init__(self, trainer: Trainer, metrics: dict | None = None):
        self.trainer = trainer
        self.metrics = metrics or {}
        self.figure_files: list[Path] = []  # the figures `train` drew for this run (none if off or failed)

    @property
    def out(self) -> Path:
        return self.trainer.out

    @property
    def history(self) -> list[dict]:
        return self.trainer.history

    @property
    def method(self):
        return self.trainer.method

    @property
    def status(self) -> str:
        return self.trainer.status

    def _split(self, split: str):
        if split not in ("train", "test"):
            raise UserError(f"split must be 'train' or 'test', got '{split}'")
        return self.trainer.labelled_train_set if split == "train" else self.trainer.test_set

    def embed(self, split: str = "test") -> tuple[torch.Tensor, torch.Tensor]:
        """(backbone features, labels) of a split, computed without augmentation. "train" means its labelled
        images (all of them, except for datasets with an unlabelled part such as STL-10)."""
        data = self._split(split)
        return self.trainer.features(data.images).cpu(), data.labels

    def assign(self, split: str = "test") -> torch.Tensor | None:
        """Hard cluster ids from the method's own head when its K equals the number of classes, else None
        (methods without clusters, or K ≠ C: metrics.json then scored spherical k-means with K = C)."""
        if not self.method.has_class_sized_head:
            return None
        return self.trainer.features(self._split(split).images, fn=self.method.assign_clusters).long().cpu()

    def evaluate(self, save: bool = True) -> dict:
        """Compute the metrics (`evaluate`) and, with save, write metrics.json — and history.jsonl again from the
        checkpoint, which a run interrupted right after its checkpoint was written leaves one epoch short."""
        self.metrics = evaluate(self.trainer)
        if save and distributed.is_main_process():
            from .train import HistoryWriter, _atomic_write_text

            HistoryWriter.write(self.trainer)
            _atomic_write_text(self.out / "metrics.json", json.dumps(self.metrics, indent=2))
        return self.metrics

    def figures(self) -> list[Path]:
        """Write the run's figures into out/figures and return their paths."""
        from . import viz

        return viz.save_run_figures(self)

    def __repr__(self) -> str:
        knn = self.metrics.get("knn_top1")
        knn = f", knn_top1={knn:.3f}" if knn is not None else ""
        return f"Run({self.trainer.config.method} on {self.trainer.config.dataset}, {self.status}, epoch {self.trainer.epoch}{knn}, out={self.out})"


def make_config(method: str | type = "simclr", dataset: str = "digits", **options) -> TrainConfig:
    """Split keyword options into TrainConfig fields and method options (`method`: a name, or a Method subclass
    of your own, recorded by its import path)."""
    from .methods import method_path

    method = method_path(method)
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    config_values = {k: v for k, v in options.items() if k in fields}
    if not isinstance(config_values.get("method_options", {}), dict):
        raise UserError(f"method_options must be a dict such as {{'temperature': 0.5}}, "
                        f"got {config_values['method_options']!r}")
    method_options = {**config_values.pop("method_options", {}), **{k: v for k, v in options.items() if k not in fields}}
    # The batch sampler travels with the method options too: `--set sampler=guided sampler.pseudo_labels=encoder`.
    if "sampler" in method_options:
        config_values["sampler"] = method_options.pop("sampler")
    sampler_options = {k.split(".", 1)[1]: method_options.pop(k) for k in list(method_options) if k.startswith("sampler.")}
    if sampler_options:
        config_values["sampler_options"] = {**config_values.get("sampler_options", {}), **sampler_options}
    return TrainConfig(method=method, dataset=dataset, method_options=method_options, **config_values)


def train(method: str | type | None = None, dataset: str | None = None, callbacks: list[Callback] | None = None,
          resume: bool = False, overwrite: bool = True, **options) -> Run:
    """Train `method` (default simclr) on `dataset` (default digits), evaluate, write figures; returns the `Run`.

    `method` is a name (`selfsup-lab methods`) or a `Method` subclass of your own (see `selfsup_lab.methods`).

    A fresh start replaces a run already in `out` (re-running a notebook cell trains again); with
    `overwrite=False`, as the command line uses, it refuses instead.

    A run stopped early (a callback's `request_stop()`, e.g. the dashboard's stop button) is returned
    without final metrics; its last checkpoint is kept and `resume=True` continues it: with the run's own
    settings (method, dataset, epochs, options, ...), so `train(resume=True, out=...)` is enough; what is
    given on top must be a change a resumed run may make (`train.RESUMABLE_CHANGES`, e.g. epochs or device).
    """
    if method is not None:
        from .methods import method_path

        method = method_path(method)
    if resume:
        method, dataset, options = resume_settings(method, dataset, options)
    config = make_config(method or "simclr", dataset or "digits", **options)
    if resume:
        _check_run_data_present(config, "continue")
    trainer = Trainer(config, callbacks=callbacks, resume=resume, overwrite=overwrite).fit()
    run = Run(trainer)
    if trainer.status == "finished":
        run.evaluate()
        if config.figures and distributed.is_main_process():
            try:
                run.figure_files = run.figures()
            except (UserError, OSError) as err:  # e.g. a full disk: the trained run and its metrics are saved all the same
                warnings.warn(f"the figures were not drawn: {err}; the checkpoint and metrics.json are saved, and "
                              f"selfsup_lab.load_run({str(run.out)!r}).figures() draws them later", stacklevel=2)
    return run


def _check_run_data_present(config: TrainConfig, doing: str) -> None:
    """A run reopened or resumed needs its own data, at the path it was trained from (the path is part of the
    run's settings): say so if that folder or archive has gone, rather than ask for another --dataset."""
    name, _, path = config.dataset.partition(":")
    if name == "imagefolder" and path and not Path(path).expanduser().exists():
        raise UserError(f"the run in {config.out} was trained on {path}, which is no longer there (moved or deleted); "
                        f"put it back at that path to {doing} the run")


def resume_settings(method: str | None, dataset: str | None, options: dict) -> tuple[str, str, dict]:
    """The settings of the run to resume in options["out"] (default runs/<method>-<dataset>), with the given
    ones on top; the trainer then refuses any change a resumed run may not make. Where no GPU is visible, a run
    from a GPU machine continues on the CPU: its "cuda" device and compile mode are not taken over, and
    `--backbone auto` keeps the network the run was built with."""
    from .train import check_config_types, run_directory

    given = TrainConfig(method=method or "simclr", dataset=dataset or "digits", out=options.get("out"),
                        method_options=options.get("method_options", {}))
    check_config_types(given)  # a wrong-typed out or method_options: the sentence a fresh start gives
    out = run_directory(given)
    checkpoint = load_checkpoint(out / CHECKPOINT)
    saved = dict(checkpoint["config"])
    if saved.get("backbone", "auto") == "auto" and checkpoint.get("backbone"):
        saved["backbone"] = checkpoint["backbone"]  # "auto" follows the device: keep the network the run has
    if not torch.cuda.is_available():
        if str(saved.get("device", "")).startswith("cuda"):
            saved.pop("device")
        saved.pop("compile", None)
    saved_method, saved_dataset = saved.pop("method", None), saved.pop("dataset", None)
    if not isinstance(saved_method, str) or not isinstance(saved_dataset, str):
        raise UserError(f"the checkpoint in {out} names no method or dataset, so it is not a checkpoint of this lab "
                        f"(or it is damaged); start a new run with another --out")
    saved_options = saved.pop("method_options", None) or {}
    if method is not None and method != saved_method:  # the trainer refuses the change; the run's options would
        saved_options = {}  # otherwise be another method's, and the first one it lacks would be the error
    method_options = {**saved_options, **options.get("method_options", {})}
    fields = {f.name for f in dataclasses.fields(TrainConfig)}
    settings = {**{k: v for k, v in saved.items() if k in fields}, **options, "out": str(out),
                "method_options": method_options}
    return method or saved_method, dataset or saved_dataset, settings


def load_run(out: str | Path, device: str = "auto") -> Run:
    """Reopen a run directory from its checkpoint (for evaluation, embedding, plots)."""
    if not isinstance(out, (str, os.PathLike)):
        raise UserError(f"load_run takes the path of a run directory such as 'runs/excb', got {out!r}")
    out = Path(out)
    if not out.is_dir():
        what = "is a file, not a run directory" if out.exists() else "does not exist"
        raise UserError(f"{out} {what}; pass the --out directory of a training run")
    checkpoint = load_checkpoint(out / CHECKPOINT)
    values = dict(checkpoint["config"])
    values.update(out=str(out), device=device, progress=False, compile=False)
    config = TrainConfig(**{k: v for k, v in values.items() if k in {f.name for f in dataclasses.fields(TrainConfig)}})
    _check_run_data_present(config, "reopen")
    trainer = Trainer(config, callbacks=[])
    trainer._load(checkpoint)
    trainer.status = "finished" if trainer.epoch >= trainer.epochs else f"stopped after epoch {trainer.epoch}"
    metrics_path = out / "metrics.json"
    try:
        metrics = json.loads(metrics_path.read_text()) if metrics_path.exists() else None
    except (OSError, ValueError):  # unreadable: as if absent (`Run.evaluate` writes a new one)
        metrics = None
    if isinstance(metrics, dict) and metrics.get("epochs_trained", trainer.epoch) != trainer.epoch:
        metrics = None  # an earlier epoch's scores (written by a version that kept them on resume): not this run's
    return Run(trainer, metrics)
