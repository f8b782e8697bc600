"""User-facing errors.

Everything a user can get wrong (a bad value, a missing file, a corrupt input) raises a
subclass of :class:`NNShrinkError` whose message names the bad value. The command line
prints these as one line and exits with status 2; anything else is a bug.
"""


class NNShrinkError(Exception):
    """A problem with the user's input or environment, explained in the message."""


class ConfigError(NNShrinkError, ValueError):
    """A configuration value (flag, recipe key, argument) is out of range or unknown."""


class DataError(NNShrinkError):
    """A dataset is missing or its files are malformed."""


class CheckpointError(NNShrinkError):
    """A checkpoint cannot be read or does not fit the model it names."""


class OutputError(NNShrinkError):
    """An output cannot be written where asked (not a regular file, exists, disk full, no permission)."""


class StageError(NNShrinkError):
    """A compression stage failed in user code (``fine_tune`` or ``evaluate``); names the stage."""


class DeviceError(ConfigError):
    """A compressed-runtime layer got input on a device its kernels do not run on (CPU only)."""
