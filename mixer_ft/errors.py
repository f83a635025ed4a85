"""Errors a user can act on. The CLI prints their message, no traceback, and exits 2.

Every error class of mixer_ft lives here, so ``except MixerFtError`` catches them all and a
caller can import any of them without pulling in the module that raises it.
"""


class MixerFtError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(MixerFtError, ValueError):
    """A variant name, config field or option value that is not valid."""


class CheckpointError(MixerFtError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class WeightsUnavailable(MixerFtError):
    """Weights that are neither cached nor downloadable (offline, or the network failed)."""


class DataError(MixerFtError):
    """A data source that cannot be read as an image classification set."""


class Undecodable(DataError):
    """An image of the compact store whose pixels do not decode (its header did, when it was indexed); ``why``
    says how, in a few words."""

    def __init__(self, message: str, why: str) -> None:
        super().__init__(message)
        self.why = why


class SourceError(DataError):
    """A byte source (a file, a tar member, an HTTP body) that could not be read whole and as what it claims to be:
    cut short, damaged, too large, too slow, or something else (an HTML page). ``source`` names it (as it may be
    printed), ``why`` says what went wrong in a few words, ``read`` and ``size`` the bytes read and expected."""

    def __init__(self, source: str, why: str, read: int = 0, size: int | None = None) -> None:
        super().__init__(f"{source} could not be read whole: {why}.")
        self.source, self.why, self.read, self.size = source, why, read, size


class TrainingError(MixerFtError):
    """A run that cannot go on (diverged, or a checkpoint that does not match the recipe)."""


class StorageError(MixerFtError):
    """A file that could not be written (disk full, too large, read-only) or a folder another run holds."""


class RunStopped(MixerFtError):
    """A run stopped on request (SIGINT or SIGTERM) after writing a checkpoint; not a failure of the input.

    Attributes:
        exit_code: 128 + the signal's number, as a shell reports a process the signal ended.
        announce: False on all but the main process of a multi-process run, which says it once.
    """

    def __init__(self, message: str, exit_code: int, announce: bool = True) -> None:
        super().__init__(message)
        self.exit_code, self.announce = exit_code, announce


__all__ = ["CheckpointError", "ConfigError", "DataError", "MixerFtError", "RunStopped", "SourceError", "StorageError",
           "TrainingError", "Undecodable", "WeightsUnavailable"]
