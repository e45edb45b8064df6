"""Errors in what a user gave (a recipe, data, a checkpoint, a registry name). The CLI prints these as one
line (``uda-perturb: error: ...``, exit 2); every other exception keeps its traceback."""
from __future__ import annotations


class UserError(Exception):
    """Base of the errors a user can fix from the message alone."""


class ConfigError(UserError, ValueError):
    """A configuration that does not validate; the message names the key."""


class DataError(UserError, ValueError):
    """A dataset file or value that cannot be used; the message names the file."""


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be loaded (truncated, refused for safety, foreign, another config)."""


class UnknownNameError(UserError, KeyError):
    """A name missing from a registry; the message lists the closest registered names."""

    def __str__(self) -> str:  # KeyError would quote the whole message
        return str(self.args[0]) if self.args else ""
