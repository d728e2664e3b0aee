"""One run's features under several kNN protocols: ours, and the one behind the 83.2 % SimCLR reference.

The lab reports METHODS.md §5's kNN: the k = 200 most similar training images by cosine, each voting with
weight exp(s/τ), τ = 0.1 (Wu et al. 2018; lightly and solo-learn use it). The public 100-epoch SimCLR reference
the project compares with (dkobak/simclr-cifar10, "Training ResNet18 for 100 epochs": kNN 83.2 %) uses
scikit-learn's `KNeighborsClassifier(n_neighbors=10, metric="cosine")`: the 10 nearest, one vote each. On the
same features the two need not agree, so this prints both (and k = 1, 5, 20 with plain votes) for one run.

    PYTHONPATH=. python benchmarks/knn_protocols.py runs/simclr-imagefolder

A plain vote is `metrics.knn_accuracy` with τ = ∞ (every weight exp(0) = 1); ties go to the smallest class, as in
scikit-learn. Results are recorded by hand in results_simclr.md.
"""
from __future__ import annotations

import argparse
import math

from selfsup_lab import api
from selfsup_lab.metrics import knn_accuracy

# (label, k, τ) read alongside the run's own protocol: the reference's first, then plain votes around it.
OTHER_PROTOCOLS = [("k = 10, plain vote (the 83.2 % reference's)", 10, math.inf),
                   ("k = 1", 1, math.inf), ("k = 5, plain vote", 5, math.inf), ("k = 20, plain vote", 20, math.inf)]


def protocols(knn_k: int = 200, knn_temperature: float = 0.1) -> list[tuple[str, int, float]]:
    """The run's own protocol (METHODS.md §5 by default: k = 200, τ = 0.1; what metrics.json holds) first."""
    return [(f"k = {knn_k}, weighted exp(s/{knn_temperature:g}) (the run's own: metrics.json)", knn_k, knn_temperature),
            *OTHER_PROTOCOLS]


def knn_under_protocols(train_features, train_labels, test_features, test_labels,
                        chosen: list[tuple[str, int, float]] | None = None) -> list[tuple[str, float]]:
    return [(label, knn_accuracy(train_features, train_labels, test_features, test_labels, k=k, temperature=temperature))
            for label, k, temperature in chosen or protocols()]


def main(argv=None) -> list[tuple[str, float]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory (its checkpoint's backbone is evaluated)")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)
    run = api.load_run(args.run, device=args.device)
    train_features, train_labels = run.embed("train")
    test_features, test_labels = run.embed("test")
    config = run.trainer.config
    rows = knn_under_protocols(train_features, train_labels, test_features, test_labels,
                               protocols(config.knn_k, config.knn_temperature))
    print(f"{args.run} ({run.trainer.config.method}, {run.trainer.config.dataset}, epoch {run.trainer.epoch}):")
    for label, accuracy in rows:
        print(f"  kNN top-1 {accuracy:.4f}   {label}")
    return rows


if __name__ == "__main__":
    main()
