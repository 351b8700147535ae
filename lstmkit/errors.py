"""User-facing errors: the CLI prints these as one line (`error: ...`) and exits non-zero, no traceback.

Raise them for anything a user can fix (a path, a file's contents, an option, a run directory). The message
says what was wrong and what to do. Programming errors stay ordinary exceptions, with their tracebacks.
"""

from __future__ import annotations


class LstmkitError(Exception):
    """A mistake in what the user gave us, with a one-line message that says what to do."""

    exit_code = 1


class DataError(LstmkitError):
    """A data file or data value that cannot be used (missing, empty, malformed, wrong labels, ...)."""


class ConfigError(LstmkitError):
    """A configuration key or value that does not exist or does not type-check."""

    exit_code = 2


class RunDirError(LstmkitError):
    """A run directory (or a checkpoint in it) that is missing, damaged or incompatible."""
