"""Does evaluating under bf16 autocast move the kNN accuracy? Features in float32 against features in bf16.

On a GPU the trainer computes evaluation features under bf16 autocast (as it trains), then casts them to
float32 for the kNN, the linear probe and k-means. This computes the features of one model both ways and
compares the kNN (METHODS.md §5: k = 200, τ = 0.1, cosine). On a CPU, CPU bf16 autocast stands in for CUDA's:
the rounding of activations to bf16 is the same format, the kernels are not.

    PYTHONPATH=. python benchmarks/eval_precision.py --run runs/simclr-imagefolder     # a trained run
    PYTHONPATH=. python benchmarks/eval_precision.py --dataset imagefolder:PATH --backbone resnet18 \
        --train-subset 5000                                                             # untrained, BN calibrated

Prints one line: the cosine between each image's two feature vectors, both kNN accuracies and how many
predictions differ. Results are recorded by hand in results_simclr.md.
"""
from __future__ import annotations

import argparse
import contextlib
import time

import torch
import torch.nn.functional as F

from selfsup_lab import api
from selfsup_lab.metrics import knn_predict


@contextlib.contextmanager
def without_tf32():
    """Float32 that is float32: on Ampere and later GPUs cuDNN runs float32 convolutions in TF32 (a 10-bit
    mantissa) unless told not to, which would make the "float32" pass a third precision."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def features_both_ways(trainer, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(float32 features, bf16-autocast features) of the same images, both returned as float32. Both passes name
    their precision: on a GPU the trainer's own autocast is bf16, so the float32 pass must switch it off (and
    TF32 with it)."""
    device_type = trainer.device.type
    with without_tf32():
        full = trainer.features(images, autocast=contextlib.nullcontext)
    reduced = trainer.features(images, autocast=lambda: torch.autocast(device_type, dtype=torch.bfloat16))
    return full, reduced


def compare(trainer) -> dict:
    start = time.perf_counter()
    bank, queries = trainer.labelled_train_set, trainer.test_set
    bank_full, bank_bf16 = features_both_ways(trainer, bank.images)
    query_full, query_bf16 = features_both_ways(trainer, queries.images)
    cosine = F.cosine_similarity(query_full, query_bf16, dim=1)
    k, temperature = trainer.config.knn_k, trainer.config.knn_temperature
    predicted_full = knn_predict(bank_full, bank.labels, query_full, k=k, temperature=temperature).cpu()
    predicted_bf16 = knn_predict(bank_bf16, bank.labels, query_bf16, k=k, temperature=temperature).cpu()
    labels = queries.labels.cpu()
    return dict(bank=len(bank.labels), queries=len(labels), cosine_min=float(cosine.min()),
                cosine_mean=float(cosine.mean()), knn_float32=float((predicted_full == labels).float().mean()),
                knn_bf16=float((predicted_bf16 == labels).float().mean()),
                differing=int((predicted_full != predicted_bf16).sum()), seconds=time.perf_counter() - start)


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--run", help="a run directory: its trained model")
    parser.add_argument("--dataset", default="digits", help="without --run: the untrained backbone on this data")
    parser.add_argument("--backbone", default="auto")
    parser.add_argument("--train-subset", type=int, help="without --run: a seeded subset as the kNN bank")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    if args.run:
        trainer, what = api.load_run(args.run, device=args.device).trainer, f"run {args.run}"
    else:
        run = api.untrained_run(args.dataset, linear=False, backbone=args.backbone, device=args.device,
                                train_subset=args.train_subset)
        trainer, what = run.trainer, f"untrained {run.trainer.backbone_name} on {args.dataset} (BN calibrated)"
    result = compare(trainer)
    print(f"{what}, {trainer.device}: bank {result['bank']:,}, {result['queries']:,} queries; cosine(float32, bf16) "
          f"per image min {result['cosine_min']:.5f} mean {result['cosine_mean']:.5f}; kNN float32 "
          f"{result['knn_float32']:.4f}, bf16 {result['knn_bf16']:.4f}; {result['differing']} predictions differ; "
          f"{result['seconds']:.0f} s")
    return result


if __name__ == "__main__":
    main()
