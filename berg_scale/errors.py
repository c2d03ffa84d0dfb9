"""Exceptions shared across berg-scale.

Every error a user can cause derives from `BergScaleError`; the CLI prints its message
as one line, so messages name the problem and the fix.
"""

from typing import Any


def _restore_error(cls: type[BaseException], args: tuple, state: dict[str, Any]) -> BaseException:
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    error.__dict__.update(state)
    return error


class BergScaleError(Exception):
    """Base class for errors caused by input or environment, not by a bug.

    Picklable whatever a subclass's constructor takes (`ShardReadError(url, reason)`), so
    an error raised in another process (a tar read by a decode process) reaches the
    worker as itself, with its message and attributes.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_restore_error, (type(self), self.args, dict(self.__dict__)))


class ConfigError(BergScaleError, ValueError):
    """A run configuration is invalid."""


class StorageError(BergScaleError):
    """Object storage or the local filesystem refused an operation."""


class UnsafeFileError(BergScaleError):
    """A weight file asked for something a safe loader does not allow."""
