"""Errors a user can act on. The CLI prints their message, no traceback, and exits non-zero."""


class MixerFtError(Exception):
    """Base class: the message says what is wrong and what to do."""


class ConfigError(MixerFtError, ValueError):
    """A variant name, config field or option value that is not valid."""


class CheckpointError(MixerFtError):
    """A checkpoint that cannot be read, is unsafe, or does not fit the model."""


class WeightsUnavailable(MixerFtError):
    """Weights that are neither cached nor downloadable (offline, or the network failed)."""
