"""Errors that the CLI turns into one line + hint (exit 1), or a usage message (exit 2).

Engine code raises these; `commands/` catches them. Everything else is a bug and shows a
traceback only with --debug.
"""

from __future__ import annotations


class GmError(Exception):
    """A failure the user can fix. `hint` says how."""

    exit_code = 1

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.hint = hint

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} ({self.hint})"


class UsageError(GmError):
    """Bad command-line input (a value out of range, a wrong combination). Exit 2."""

    exit_code = 2


class PresetError(GmError):
    """A preset file or override is malformed: names the file, the key and what was expected."""


class CheckpointError(GmError):
    """A checkpoint is missing, corrupt, or does not match the preset."""


class InputError(GmError):
    """An input file (image, video, dataset) cannot be used."""


class OverrideError(PresetError, UsageError):
    """A bad `--set table.key=value`: a preset error that is the command line's fault (exit 2)."""
