"""One exception type for mistakes a user can fix.

Everything the command line catches and prints as a single sentence (unknown method, missing path,
corrupt checkpoint, a diverged loss) is a `UserError`. Anything else is a bug in the lab and keeps its
traceback.
"""
from __future__ import annotations

import math
from typing import Callable


class UserError(Exception):
    """A problem with the user's input or environment, stated as one sentence saying what to do."""


class DataUnavailableError(UserError):
    """A dataset could not be loaded (e.g. no network for a download)."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept. `what` says what went wrong without
    the advice for `selfsup-lab train`, for callers (the comparisons) that advise otherwise."""

    def __init__(self, message: str, what: str = ""):
        super().__init__(message)
        self.what = what or message


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised by the command line where Ctrl-C raises KeyboardInterrupt, so that both stop a run the
    same clean way (see `cli.sigterm_stops_like_ctrl_c`)."""


def interrupted_exit_code(err: KeyboardInterrupt) -> int:
    """The shell's code for a process stopped by a signal, 128 + its number: 130 for Ctrl-C, 143 for SIGTERM."""
    return 143 if isinstance(err, Terminated) else 130


# A range rule: (setting names, test a value must pass, what the value must be — for the message).
Bounds = list[tuple[tuple[str, ...], Callable[[float], bool], str]]


def check_bounds(settings: object, bounds: Bounds, label: Callable[[str], str] = str) -> None:
    """Raise a `UserError` naming the first setting of `settings` outside its range.

    None means "use the default rule" and always passes; a tuple or list is checked entry by entry.
    `label(name)` is how the message names the setting (a command-line flag, "option 'x' of swav", ...).
    Infinity and NaN pass no range (a temperature of inf would train on a constant loss).
    """
    for names, valid, wanted in bounds:
        for name in names:
            value = getattr(settings, name, None)
            for v in value if isinstance(value, (tuple, list)) else [value]:
                if v is not None and not (_finite(v) and valid(v)):
                    raise UserError(f"{label(name)} must be {wanted}, got {value!r}")


def _finite(value) -> bool:
    return not isinstance(value, float) or math.isfinite(value)
