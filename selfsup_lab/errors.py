"""One exception type for mistakes a user can fix.

Everything the command line catches and prints as a single sentence (unknown method, missing path,
corrupt checkpoint, a diverged loss) is a `UserError`. Anything else is a bug in the lab and keeps its
traceback.
"""


class UserError(Exception):
    """A problem with the user's input or environment, stated as one sentence saying what to do."""


class DataUnavailableError(UserError):
    """A dataset could not be loaded (e.g. no network for a download)."""


class TrainingDiverged(UserError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""
