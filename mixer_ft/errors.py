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


class TrainingError(MixerFtError):
    """A run that cannot go on (diverged, or a checkpoint that does not match the recipe)."""


__all__ = ["CheckpointError", "ConfigError", "DataError", "MixerFtError", "TrainingError", "WeightsUnavailable"]
