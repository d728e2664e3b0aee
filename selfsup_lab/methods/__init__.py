"""The methods, one file each. `METHODS` maps a name to (module, class, one-line description).

Modules are imported on first use so that a broken or heavy method never slows down the others.

A method of your own is a `Method` subclass anywhere importable, named by its import path wherever a method
name goes: `selfsup-lab train --method myrules.Centering` (a myrules.py in the current directory or on the
Python path), `--methods naive myrules.Centering` in a comparison, or the class itself from Python,
`selfsup_lab.train(Centering, "digits")` (in a notebook its path is `__main__.Centering`). The run records the
path, so `--resume` and `load_run` find the class again where it can be imported.
"""
from __future__ import annotations

import dataclasses
import importlib
import os
import sys

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
    """The class of a built-in method ('excb') or of one of your own, by its import path ('myrules.Centering')."""
    if name in METHODS:
        module, cls, _ = METHODS[name]
        return getattr(importlib.import_module(f"{__name__}.{module}"), cls)
    if ":" in name or "=" in name:
        raise UserError(f"unknown method '{name}'; a method's options go in --set key=value (only a comparison's "
                        f"--methods takes method:key=value)")
    if "." not in name or not all(part.isidentifier() for part in name.split(".")):
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)} (or give the import path of "
                        f"a Method subclass of your own, e.g. myrules.Centering)")
    module_name, _, class_name = name.rpartition(".")
    try:
        module = _import_from_here(module_name)
    except ImportError as err:
        raise UserError(f"method '{name}': cannot import {module_name} ({err}); a method of your own must be in a "
                        f"module on the Python path or in the current directory") from None
    cls = getattr(module, class_name, None)
    if cls is None and module_name == "__main__":
        raise UserError(f"method '{name}' was defined in a notebook or script, and this session has no "
                        f"{class_name}; run the cell that defines it first (then resume or load the run from "
                        f"Python), or move the class into a module file and name it module.{class_name}")
    if cls is None:
        where = getattr(module, "__file__", None) or "built in"
        raise UserError(f"method '{name}': {module_name} ({where}) has no {class_name}; define or import the class "
                        f"there (if that file is not yours, another module called {module_name} comes first on the "
                        f"Python path: rename your file)")
    check_method_class(cls, name)
    return cls


def check_method_class(cls, name: str) -> None:
    """A method of your own must be a Method subclass with its own training_step and a dataclass of options."""
    if not (isinstance(cls, type) and issubclass(cls, Method)):
        raise UserError(f"method '{name}' is {type(cls).__name__} {getattr(cls, '__name__', cls)!s}, not a subclass "
                        f"of selfsup_lab.methods.Method; subclass Method (or a method such as Naive) and override "
                        f"training_step")
    if cls.training_step is Method.training_step:
        raise UserError(f"method '{name}' does not define training_step; a Method subclass must (methods/base.py "
                        f"says what it returns)")
    if not dataclasses.is_dataclass(cls.Options):
        raise UserError(f"method '{name}': its Options must be a dataclass (an @dataclass class of options with "
                        f"defaults), got {cls.Options!r}")


def _import_from_here(module_name: str):
    """Import a module, looking in the current directory too: `selfsup-lab` (a console script) does not put
    the current directory on sys.path, `python -m` and notebooks do."""
    try:
        return importlib.import_module(module_name)
    except ModuleNotFoundError as err:
        here = os.getcwd()
        if err.name != module_name.split(".")[0] or here in sys.path or "" in sys.path:
            raise
        sys.path.append(here)
        return importlib.import_module(module_name)


def method_path(method) -> str:
    """The name a run records for `method`: a built-in's name as given, a class of your own as its import path."""
    if isinstance(method, type):
        builtin = {class_name: name for name, (_, class_name, _) in METHODS.items()}.get(method.__name__)
        if builtin and method.__module__ == f"{__name__}.{METHODS[builtin][0]}":
            return builtin  # the lab's own class: its short name
        if "." in method.__qualname__:  # inside a function (<locals>) or another class
            raise UserError(f"{method.__qualname__} is defined inside a function or class; define a method of your "
                            f"own at the top level of a module or notebook cell, so that a run can find it again")
        check_method_class(method, method.__qualname__)
        return f"{method.__module__}.{method.__qualname__}"
    if not isinstance(method, str):
        raise UserError(f"a method is a name such as 'excb' or a Method subclass, got {method!r}")
    return method


def short_name(method: str) -> str:
    """'excb' → 'excb'; 'myrules.Centering' → 'Centering' (for run folders and titles)."""
    return method.rpartition(".")[2]


__all__ = ["METHODS", "Method", "MethodContext", "StepOutput", "get_method_class", "method_path", "short_name",
           "parse_options", "describe_options"]
