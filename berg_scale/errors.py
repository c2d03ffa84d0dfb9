"""Exceptions shared across berg-scale.

Every error a user can cause derives from `BergScaleError`; the CLI prints its message
as one line, so messages name the problem and the fix.
"""


class BergScaleError(Exception):
    """Base class for errors caused by input or environment, not by a bug."""


class ConfigError(BergScaleError, ValueError):
    """A run configuration is invalid."""


class StorageError(BergScaleError):
    """Object storage or the local filesystem refused an operation."""


class UnsafeFileError(BergScaleError):
    """A weight file asked for something a safe loader does not allow."""
