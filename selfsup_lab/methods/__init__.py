"""The methods, one file each. `METHODS` maps a name to (module, class, one-line description).

Modules are imported on first use so that a broken or heavy method never slows down the others.
"""
from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Method, MethodContext, StepOutput, describe_options, parse_options

METHODS: dict[str, tuple[str, str, str]] = {
    # contrastive / negatives (METHODS.md §1–3)
    "simclr": ("simclr", "SimCLR", "contrastive baseline: NT-Xent against every other view in the batch"),
    "gsimclr": ("gsimclr", "GSimCLR", "SimCLR with pseudo-label-guided batches (fewer same-class negatives)"),
    "byol": ("byol", "BYOL", "no negatives: predict an EMA target's projection"),
    "triplet": ("triplet", "TruncatedTriplet", "BYOL + one negative 'deputy' from a rank window (under/over-clustering)"),
    # clustering and its balancing rules (METHODS.md §4)
    "naive": ("naive", "Naive", "swapped prediction with no balancing at all: collapses on purpose"),
    "swav": ("swav", "SwAV", "per-batch equipartition with Sinkhorn-Knopp"),
    "deepcluster": ("deepcluster", "DeepCluster", "offline k-means over a feature memory bank every epoch"),
    "coke": ("coke", "CoKe", "online constrained k-means: dual variables enforce a minimum cluster size"),
    "excb": ("excb", "ExCB", "explicit cluster balancing from an online cluster-size estimate"),
}


def get_method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    module, cls, _ = METHODS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


__all__ = ["METHODS", "Method", "MethodContext", "StepOutput", "get_method_class", "parse_options", "describe_options"]
