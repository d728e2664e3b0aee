"""SimCLR trained the way the 83.2 % reference trains it, from the lab's own parts, in one short loop.

The lab's SimCLR ends at kNN 74.8 % after 100 epochs on CIFAR-10 (ResNet-18, one H100); the public single-GPU
reference (dkobak/simclr-cifar10, "Training ResNet18 for 100 epochs") reports 83.2 %. It differs from the lab in
its kNN protocol and in most of its recipe (the table in results_simclr.md). The lab's trainer exposes some of
those settings as flags, not all; this script exposes every one, so one run answers the question "is the gap
the recipe, or is something in the lab wrong?":

    the reference's recipe (the defaults here)          the lab's trainer, for comparison
    lr = 0.06·B/256, cosine per epoch, no warm-up         0.06·B/128, 10 warm-up epochs, cosine per step
    each epoch's last, smaller batch kept                dropped
    τ = 0.5                                               0.2
    projector 512 → 1024 → 128, no batch norm            512 → 2048 (batch norm) → 128
    crop area 0.2–1, grayscale p 0.1                      0.08–1, grayscale p 0.2
    weight decay 5e-4 on every parameter                 not on batch-norm weights and biases
    pixels in [0, 1], no normalisation                   the training set's per-channel mean / std
    (float32 training: --precision fp32)                 bf16 autocast on a GPU (the default here too)

What it takes from the lab unchanged: the data (`data.load_splits`: on our GPU machine the CIFAR-10 JPEG copy,
not the reference's lossless PNGs), the ResNet with the CIFAR stem (`models.build_backbone`), the batched
augmentation (`augment.Augmenter`: the same jitter 0.4/0.4/0.4/0.1 with p 0.8 and flips as the reference, the
order of the four jitter operations drawn once per batch rather than per image), the
NT-Xent loss (`methods.simclr.nt_xent_loss`), the kNN (`metrics.knn_accuracy`) and the trainer's random draws
(initial weights from the seed; each epoch's batches and views from `train.epoch_generators`): with every lab
setting put back it trains the trainer's model step for step (a test checks it on a CPU), and a flag's effect is
measured on the same batches and views rather than on another sample. It reports both kNN protocols
on the backbone's float32 features. Training runs under the lab's bf16 autocast by default, the one departure
from the reference (its float32 run would not fit in one 10-minute command on our GPU machine); `--precision
fp32` with `--checkpoint` measures that too. If this reaches the reference, the lab's parts are sound and the gap is its
recipe; each flag then puts one of the lab's settings back, to find the ones that matter. If it does not, the
suspects are the parts it shares with the lab (and the JPEG data).

    PYTHONPATH=. python benchmarks/reference_recipe.py --dataset imagefolder:PATH/cifar10-jpg-train.tar.gz
    PYTHONPATH=. python benchmarks/reference_recipe.py --dataset ... --temperature 0.2   # one lab setting back

With --checkpoint FILE the run is saved after every epoch (atomically: an interrupted run leaves the last whole
epoch) and the same command continues it; without, an interrupted run leaves nothing. With --out FILE the
settings and results are written there as JSON. Results are recorded by hand in results_simclr.md.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import time
from pathlib import Path

import torch
from torch import nn

from selfsup_lab import augment, data, models
from selfsup_lab.errors import UserError
from selfsup_lab.metrics import knn_accuracy
from selfsup_lab.methods.simclr import nt_xent_loss
from selfsup_lab.train import (TrainConfig, _atomic_write_text, atomic_torch_save, build_optimizer, epoch_generators,
                               learning_rate, resolve_device)

# (label, k, τ): the lab's kNN (METHODS.md §5) and the reference's (scikit-learn, 10 neighbours, one vote each).
PROTOCOLS = [("k = 200, weighted exp(s/0.1) (the lab's)", 200, 0.1), ("k = 10, plain vote (the reference's)", 10, math.inf)]


def projector(in_dim: int, hidden: int, out_dim: int, batch_norm: bool) -> nn.Sequential:
    """The reference's Linear-ReLU-Linear, or with batch norm on the hidden layer as the lab's `models.mlp`."""
    if batch_norm:
        return models.mlp(in_dim, hidden, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out_dim))


def optimizer_for(model: nn.Module, lr: float, weight_decay: float, decay_all: bool) -> torch.optim.SGD:
    """SGD with momentum 0.9; weight decay on every parameter (the reference), or the lab's own optimiser
    (`train.build_optimizer`: none on batch-norm weights and biases, the 1-d parameters)."""
    if decay_all:
        return torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay)
    return build_optimizer(model, TrainConfig(optimizer="sgd", momentum=0.9, weight_decay=weight_decay), lr)


def augment_config(args, train_set) -> augment.AugmentConfig:
    """The CIFAR preset with this run's crop scale and grayscale probability; normalised like the lab, or not."""
    mean, std = train_set.channel_stats() if args.normalize else ((0.0, 0.0, 0.0), (1.0, 1.0, 1.0))
    preset = augment.cifar_preset(size=train_set.image_size, mean=mean, std=std)
    return dataclasses.replace(preset, scale=(args.crop_low, 1.0), gray_p=args.gray_p)


def lr_at(args, epoch: int, step: int, steps_per_epoch: int, base_lr: float) -> float:
    """`--schedule epoch`: cosine stepped once per epoch, no warm-up (the reference's CosineAnnealingLR);
    `--schedule step`: the lab's linear warm-up + cosine, updated every step (`train.learning_rate`)."""
    if args.schedule == "epoch":
        return base_lr * 0.5 * (1.0 + math.cos(math.pi * epoch / args.epochs))
    total = args.epochs * steps_per_epoch
    return learning_rate(epoch * steps_per_epoch + step, total, args.warmup_epochs * steps_per_epoch, base_lr)


@torch.no_grad()
def embed(backbone: nn.Module, images: torch.Tensor, mean, std, device, batch_size: int = 1024) -> torch.Tensor:
    """Backbone features of un-augmented images, eval mode, float32 (the reference's evaluation)."""
    backbone.eval()
    out = [backbone(augment.normalize(chunk.to(device), mean, std)).float() for chunk in images.split(batch_size)]
    backbone.train()
    return torch.cat(out)


def write_json(path: Path, obj: dict) -> None:
    """Whole or not at all (the trainer's atomic write: a temporary file renamed over the target)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write_text(path, json.dumps(obj, indent=2))


# Settings that may differ between the piece of a run that wrote a checkpoint and the piece that continues it
# (not the device: the views are drawn by a generator on it, and with --backbone auto the network depends on it).
MAY_CHANGE = {"out", "checkpoint"}


def save_checkpoint(path: Path, state: dict) -> None:
    """After every epoch, whole or not at all (the trainer's `atomic_torch_save`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_torch_save(state, path)


def load_checkpoint(path: Path, settings: dict) -> dict:
    """A checkpoint this run can continue from: readable, and written with the same settings."""
    try:
        state = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as err:  # truncated, or not a checkpoint at all
        raise UserError(f"{path} cannot be read as a checkpoint ({type(err).__name__}); delete it to start "
                        f"again") from None
    changed = sorted(k for k in settings if k not in MAY_CHANGE and state["settings"].get(k) != settings[k])
    if changed:
        raise UserError(f"{path} was written by a run with other settings ({', '.join(changed)}); give the same "
                        f"settings to continue it, or another --checkpoint to start a new run")
    return state


def train_and_evaluate(args) -> dict:
    device = resolve_device(args.device)
    settings = {k: v for k, v in vars(args).items() if k != "out"}
    checkpoint = Path(args.checkpoint) if args.checkpoint else None
    resumed = load_checkpoint(checkpoint, settings) if checkpoint and checkpoint.exists() else None
    train_set, test_set = data.load_splits(args.dataset, data_dir=args.data_dir)
    if args.train_subset and args.train_subset < len(train_set):  # the trainer's subset for the same seed
        keep = torch.randperm(len(train_set), generator=torch.Generator().manual_seed(args.seed))
        train_set = train_set.subset(keep[:args.train_subset])
    config = augment_config(args, train_set)
    augmenter = augment.Augmenter(config)

    # Random draws as the trainer's: weights from the seed, batches and views from (seed, epoch) — so with the
    # lab's settings this loop takes the trainer's steps exactly, and a flag's effect is measured on the same
    # batches, views and initial weights instead of on another draw.
    torch.manual_seed(args.seed)
    backbone = models.build_backbone(models.resolve_backbone_name(args.backbone, device)).to(device)
    head = projector(backbone.feature_dim, args.proj_hidden, 128, args.proj_bn).to(device)
    model = nn.Sequential(backbone, head)
    base_lr = args.base_lr * args.batch_size / 256
    optimizer = optimizer_for(model, base_lr, args.weight_decay, args.decay_all)
    # bf16: the lab's autocast and channels_last on a GPU; fp32: as the reference (TF32 convolutions on a GPU).
    bf16 = args.precision == "bf16" and device.type == "cuda"
    autocast = (lambda: torch.autocast("cuda", dtype=torch.bfloat16)) if bf16 else contextlib.nullcontext
    memory_format = torch.channels_last if bf16 else torch.contiguous_format
    model = model.to(memory_format=memory_format)

    images = train_set.images.to(device).contiguous(memory_format=memory_format)  # the views keep the format
    first_epoch, losses, train_seconds = 0, [], 0.0
    if resumed:  # nothing random to restore: each epoch's generators come from the seed and the epoch
        model.load_state_dict(resumed["model"])
        optimizer.load_state_dict(resumed["optimizer"])
        first_epoch, losses, train_seconds = resumed["epoch"], resumed["epoch_losses"], resumed["train_seconds"]
        print(f"continuing {checkpoint} after epoch {first_epoch}", flush=True)
    # The reference's DataLoader keeps each epoch's last, smaller batch; the lab's sampler drops it.
    sampler = data.RandomBatches(len(images), args.batch_size, drop_last=args.drop_last)
    steps_per_epoch = len(sampler)
    for epoch in range(first_epoch, args.epochs):
        epoch_start, total, steps = time.time(), torch.zeros((), device=device), 0
        batch_gen, aug_gen = epoch_generators(args.seed, epoch, device)
        for step, batch in enumerate(sampler.batches(epoch, batch_gen)):
            if len(batch) < 2:
                continue  # a last batch of one image: NT-Xent needs a negative
            for group in optimizer.param_groups:
                group["lr"] = lr_at(args, epoch, step, steps_per_epoch, base_lr)
            view1, view2 = augmenter.views(images[batch.to(device)], 2, aug_gen)
            with autocast():  # two backbone passes, one per view, as the reference
                loss, _ = nt_xent_loss(model(view1), model(view2), args.temperature)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total, steps = total + loss.detach(), steps + 1
        mean_loss = float(total) / steps
        if not math.isfinite(mean_loss):
            kept = f"{checkpoint} keeps epoch {epoch}" if checkpoint and epoch else "no checkpoint was written"
            raise UserError(f"the loss became {mean_loss} in epoch {epoch + 1}; {kept}")
        losses.append(mean_loss)
        train_seconds += time.time() - epoch_start
        if checkpoint:
            save_checkpoint(checkpoint, {"settings": settings, "epoch": epoch + 1, "model": model.state_dict(),
                                         "optimizer": optimizer.state_dict(), "epoch_losses": losses,
                                         "train_seconds": train_seconds})
        print(f"epoch {epoch + 1}/{args.epochs}: loss {mean_loss:.4f}, lr {optimizer.param_groups[0]['lr']:.4f}, "
              f"{time.time() - epoch_start:.1f} s", flush=True)

    mean, std = config.mean, config.std
    train_features = embed(backbone, train_set.images, mean, std, device)
    test_features = embed(backbone, test_set.images, mean, std, device)
    knn = {label: knn_accuracy(train_features, train_set.labels, test_features, test_set.labels, k=k, temperature=t)
           for label, k, t in PROTOCOLS}
    return {"settings": settings, "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
            "trained_in": "bf16 autocast, channels_last" if bf16 else "fp32",  # --precision bf16 is fp32 on a CPU
            "lr": base_lr, "epoch_losses": losses, "train_seconds": round(train_seconds, 1), "knn_top1": knn}


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="digits", help="as for selfsup-lab train, e.g. imagefolder:PATH (default digits)")
    p.add_argument("--epochs", type=int, default=100)
    p.add_argument("--batch-size", type=int, default=512)
    p.add_argument("--base-lr", type=float, default=0.06, help="lr = base·B/256 (the lab's: 0.12, lr 0.24 at B 512)")
    p.add_argument("--schedule", choices=("epoch", "step"), default="epoch",
                   help="epoch: cosine stepped per epoch, no warm-up; step: the lab's warm-up + cosine per step")
    p.add_argument("--warmup-epochs", type=int, default=0, help="with --schedule step (the lab's: 10, or epochs/10)")
    p.add_argument("--drop-last", action=argparse.BooleanOptionalAction, default=False,
                   help="drop each epoch's last, smaller batch (the lab's)")
    p.add_argument("--temperature", type=float, default=0.5)
    p.add_argument("--proj-hidden", type=int, default=1024)
    p.add_argument("--proj-bn", action=argparse.BooleanOptionalAction, default=False,
                   help="batch norm on the projector's hidden layer (the lab's)")
    p.add_argument("--crop-low", type=float, default=0.2, help="smallest crop area (the lab's 0.08)")
    p.add_argument("--gray-p", type=float, default=0.1, help="grayscale probability (the lab's 0.2)")
    p.add_argument("--weight-decay", type=float, default=5e-4)
    p.add_argument("--decay-all", action=argparse.BooleanOptionalAction, default=True,
                   help="weight decay on batch-norm weights and biases too (--no-decay-all: the lab's)")
    p.add_argument("--normalize", action=argparse.BooleanOptionalAction, default=False,
                   help="normalise with the training set's mean / std (the lab's)")
    p.add_argument("--precision", choices=("bf16", "fp32"), default="bf16",
                   help="bf16: the lab's autocast + channels_last on a GPU (100 epochs in one 10-minute H100 command); "
                        "fp32: as the reference (slower: split it with --checkpoint)")
    p.add_argument("--backbone", default="auto", help="auto (convnet on a CPU, resnet18 on a GPU), resnet18, convnet")
    p.add_argument("--device", default="auto")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--train-subset", type=int, help="train on a seeded subset of N images (a quick check)")
    p.add_argument("--data-dir")
    p.add_argument("--checkpoint", help="save to this file after every epoch, and continue from it if it exists "
                                        "(a long run in several commands)")
    p.add_argument("--out", help="write the settings and results to this JSON file")
    args = p.parse_args(argv)
    checks = [(args.epochs >= 1, "--epochs must be at least 1"), (args.batch_size >= 2, "--batch-size must be at least 2"),
              (0 <= args.warmup_epochs <= args.epochs, "--warmup-epochs must be between 0 and --epochs"),
              (args.warmup_epochs == 0 or args.schedule == "step", "--warmup-epochs needs --schedule step"),
              (args.temperature > 0, "--temperature must be above 0"), (0 < args.crop_low <= 1, "--crop-low must be in (0, 1]"),
              (0 <= args.gray_p <= 1, "--gray-p must be a probability in [0, 1]"),
              (args.train_subset is None or args.train_subset >= 2, "--train-subset must be at least 2")]
    for ok, message in checks:
        if not ok:
            p.error(message)
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    try:
        result = train_and_evaluate(args)
    except UserError as err:  # e.g. a dataset that cannot be found: one sentence, no traceback
        raise SystemExit(f"error: {err}") from None
    print(f"{args.dataset}, {args.epochs} epochs, B = {args.batch_size}, lr {result['lr']:g}, on {result['device']} "
          f"({result['train_seconds'] / 60:.1f} min of training):")
    for label, accuracy in result["knn_top1"].items():
        print(f"  kNN top-1 {accuracy:.4f}   {label}")
    if args.out:
        write_json(Path(args.out), result)
    return result


if __name__ == "__main__":
    main()
