"""Spherical k-means at DeepCluster's scale: how long one re-clustering takes, and what the twin check costs.

DeepCluster re-clusters its whole memory bank at every epoch start (CIFAR-10: 50,000 × 128 features, three
heads of K = 2,500), so `kmeans.spherical_kmeans` sits on the critical path once per epoch. Since 2026-11-23
every assignment round also checks for centroids that point the same way as an earlier one (`kmeans._twins`,
a K × K matmul), which re-seeds them like empty clusters. This times one k-means with the check and with it
switched off, on the same data and seed, and reports both and the time spent inside the check.

    PYTHONPATH=. python benchmarks/kmeans.py                        # CIFAR-10 scale, on the GPU if there is one
    PYTHONPATH=. python benchmarks/kmeans.py --device cpu --repeats 2

Results are appended to benchmarks/RESULTS_kmeans.md (date, device, sizes, seconds).
"""
from __future__ import annotations

import argparse
import datetime
import platform
import time
from pathlib import Path

import torch

from selfsup_lab import kmeans


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_kmeans(features: torch.Tensor, k: int, iters: int, twin_check: bool) -> tuple[float, float, int, torch.Tensor]:
    """(seconds for one spherical_kmeans, seconds inside the twin check, its calls, the assignments)."""
    original = kmeans._twins
    inside = {"seconds": 0.0, "calls": 0}

    def timed_twins(centroids):
        _synchronize(centroids.device)
        start = time.perf_counter()
        out = original(centroids) if twin_check else torch.zeros(centroids.shape[0], dtype=torch.bool,
                                                                 device=centroids.device)
        _synchronize(centroids.device)
        inside["seconds"] += time.perf_counter() - start
        inside["calls"] += 1
        return out

    kmeans._twins = timed_twins
    try:
        _synchronize(features.device)
        start = time.perf_counter()
        _, assignments = kmeans.spherical_kmeans(features, k, iters=iters, generator=torch.Generator().manual_seed(0))
        _synchronize(features.device)
        return time.perf_counter() - start, inside["seconds"], inside["calls"], assignments
    finally:
        kmeans._twins = original


def main(argv=None) -> list[dict]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num", type=int, default=50_000, help="points (default: CIFAR-10's training set)")
    parser.add_argument("--dim", type=int, default=128, help="feature dimension (DeepCluster's projection)")
    parser.add_argument("--k", type=int, default=2_500, help="clusters (DeepCluster's capped K on CIFAR-10)")
    parser.add_argument("--iters", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3, help="timed runs of each variant (after one warm-up)")
    parser.add_argument("--device", default="auto", help="auto, cpu, cuda")
    parser.add_argument("--results", default=str(Path(__file__).with_name("RESULTS_kmeans.md")))
    args = parser.parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)

    # Random unit vectors: the k-means does the same work per iteration whatever the features are.
    generator = torch.Generator().manual_seed(0)
    features = torch.nn.functional.normalize(torch.randn(args.num, args.dim, generator=generator), dim=1).to(device)
    time_kmeans(features, args.k, 1, twin_check=True)  # warm-up (kernels, allocator)
    rows = []
    for twin_check in (True, False):
        runs = [time_kmeans(features, args.k, args.iters, twin_check) for _ in range(args.repeats)]
        seconds = sorted(r[0] for r in runs)
        rows.append(dict(twin_check=twin_check, median_s=seconds[len(seconds) // 2], min_s=seconds[0],
                         inside_s=sorted(r[1] for r in runs)[len(runs) // 2], calls=runs[0][2],
                         assignments=runs[0][3]))
    same = torch.equal(rows[0]["assignments"], rows[1]["assignments"])

    name = torch.cuda.get_device_name(device) if device.type == "cuda" else f"CPU ({platform.machine()}, " \
        f"{torch.get_num_threads()} threads)"
    lines = [f"\n### k-means — {datetime.datetime.now():%Y-%m-%d %H:%M} — {name}\n",
             f"`spherical_kmeans`, {args.num:,} × {args.dim} random unit vectors, K = {args.k:,}, {args.iters} "
             f"iterations, seed 0, {args.repeats} timed runs per row after one warm-up; torch {torch.__version__}. "
             f"Same assignments with and without the check: {'yes' if same else 'no'}.\n",
             "| twin check | median s | fastest s | s inside the check (median) | check calls per k-means |",
             "|---|---:|---:|---:|---:|"]
    for row in rows:
        lines.append(f"| {'on' if row['twin_check'] else 'off'} | {row['median_s']:.2f} | {row['min_s']:.2f} | "
                     f"{row['inside_s']:.3f} | {row['calls']} |")
    text = "\n".join(lines) + "\n"
    results = Path(args.results)
    if not results.exists():
        results.write_text("# Spherical k-means timings (`benchmarks/kmeans.py`)\n")
    with results.open("a") as f:
        f.write(text)
    print(text)
    return rows


if __name__ == "__main__":
    main()
