"""Errors that a user's input or a run's state can cause (the entry scripts print them as one
line and exit non-zero; library callers catch them by type)."""


class TempscaleError(Exception):
    """Base class of this library's own errors."""


class CheckpointError(TempscaleError, RuntimeError):
    """A checkpoint exists but cannot be read (corrupted, truncated or from another model)."""


class TrainingDivergedError(TempscaleError, RuntimeError):
    """The training loss (or a weight) became NaN or infinite; nothing after it was saved."""


# What the entry scripts report as "error: ..." instead of a traceback. Anything else is a bug
# and keeps its traceback.
USER_ERRORS = (ValueError, OSError, TempscaleError)
