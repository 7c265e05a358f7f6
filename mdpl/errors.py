"""The refusals mdpl gives a user: bad configuration, data or checkpoints, each a message naming what is wrong.

`run.py` prints a `UserError` as one line (`error: <message>`) and exits with status 2; any other exception
is a fault of mdpl or of the machine and keeps its traceback. The subclasses also derive from the built-in
type that fits, so `except ValueError` / `except FileNotFoundError` keep working for library callers.
"""

from __future__ import annotations


class UserError(Exception):
    """Something the user gave (a key, a file, a checkpoint) cannot be used; the message says what and why."""


class ConfigError(UserError, ValueError):
    """A configuration value that is not allowed; the message names the key, the value and what is allowed."""


class DataError(UserError, ValueError):
    """A data file (Arrow file, missing table, raw dataset) that cannot be used; the message names the file."""


class CheckpointError(UserError, ValueError):
    """A checkpoint or weights file that cannot be used here; the message names the file and what it holds."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder that the configuration names does not exist."""


class Interrupted(Exception):
    """A run stopped by SIGTERM (Lightning ends it at the next batch); what it saved so far is kept."""


def fail(key: str, value: object, expected: str) -> None:
    """Raise the ConfigError for `key=value`, naming what is expected instead."""
    raise ConfigError(f"config {key}={value!r}: expected {expected}")
