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


def out_of_memory(err: BaseException, phase: str | None) -> GmError | None:
    """A GmError for torch's out-of-memory failures (CUDA, MPS, the CPU allocator), else None:
    running out of memory is a size or setting the user can change, not a bug."""
    text = str(err).strip()
    first = text.splitlines()[0] if text else type(err).__name__
    if type(err).__name__ == "OutOfMemoryError" or "CUDA out of memory" in text or "MPS backend out of memory" in text:
        device, hint = "GPU", "try --low-vram, a smaller size, -n or --decoding-t, or --dtype fp16"
        detail = first.split(". ")[1] if ". " in first else first  # "Tried to allocate 2.00 GiB"
    elif isinstance(err, MemoryError) or "DefaultCPUAllocator" in text or "can't allocate memory" in text:
        device, hint = "CPU", "try a smaller size, -n or --decoding-t, or close other programs"
        detail = first.split("DefaultCPUAllocator: ")[-1]  # "not enough memory: you tried to allocate N bytes."
    else:
        return None
    where = f" during {phase!r}" if phase else ""
    return GmError(f"out of {device} memory{where}: {detail.rstrip('.')}", hint)
