"""The methods, one file each. `METHODS` maps a name to (module, class, one-line description).

Modules are imported on first use so that a broken or heavy method never slows down the others.
"""
from __future__ import annotations

import importlib

from ..errors import UserError
from .base import Method, MethodContext, StepOutput, describe_options, parse_options

METHODS: dict[str, tuple[str, str, str]] = {
    "simclr": ("simclr", "SimCLR", "contrastive baseline: NT-Xent against every other view in the batch"),
}


def get_method_class(name: str) -> type[Method]:
    if name not in METHODS:
        raise UserError(f"unknown method '{name}'; choose one of: {', '.join(METHODS)}")
    module, cls, _ = METHODS[name]
    return getattr(importlib.import_module(f"{__name__}.{module}"), cls)


__all__ = ["METHODS", "Method", "MethodContext", "StepOutput", "get_method_class", "parse_options", "describe_options"]
