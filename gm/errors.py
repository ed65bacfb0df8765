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


# ---------------------------------------------------------------------------------------------
# Naming the cause of failures that arrive as plain Python/OS errors (issue: "internal error" only
# for real bugs). `explain` is called by the command boundary for anything that is not a GmError.

class DiskFullError(GmError):
    """No space left (or quota exceeded) while writing: names the folder, free and needed bytes."""


class StdoutClosed(GmError):
    """The reader of stdout went away (`gm ... | head -1`). Not an error to print: the command
    ends quietly with exit 141 (128 + SIGPIPE, what a shell reports for a Unix tool killed by
    SIGPIPE), and stdout is pointed at /dev/null so Python's flush at exit cannot complain."""

    exit_code = 141
    quiet = True


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where SIGINT would raise KeyboardInterrupt: the same tidy-up paths run
    (temporaries removed, empty output folders removed, training saves a checkpoint); exit 143."""

    exit_code = 143

    def __str__(self) -> str:
        return "terminated (SIGTERM)"


def interruption(signum: int) -> KeyboardInterrupt:
    """The exception for a run stopped by a signal it handled itself (training saves, then stops):
    Terminated (exit 143) for SIGTERM, KeyboardInterrupt (exit 130) otherwise."""
    import signal

    return Terminated() if signum == getattr(signal, "SIGTERM", -1) else KeyboardInterrupt()


_FILE_LOCALS = ("filename", "path", "file", "fp", "final", "tmp", "folder", "source")


def _human(n: float) -> str:
    for unit in ("bytes", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "bytes" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n:.1f} TiB"  # pragma: no cover


def culprit(err: BaseException) -> str | None:
    """The file an error is about: its `filename`, else the innermost open file object or
    file-like local (`path`, `filename`, ...) of the traceback's frames."""
    import io
    import os

    name = getattr(err, "filename", None)
    if isinstance(name, (str, os.PathLike)) and str(name):
        return str(name)
    frames = []
    tb = err.__traceback__
    while tb is not None:
        frames.append(tb.tb_frame)
        tb = tb.tb_next
    for frame in reversed(frames):
        values = frame.f_locals
        for value in values.values():
            if isinstance(value, io.IOBase) and isinstance(getattr(value, "name", None), str):
                return value.name
        for key in _FILE_LOCALS:
            value = values.get(key)
            if isinstance(value, os.PathLike) or (isinstance(value, str) and os.sep in value):
                return str(value)
    return None


def disk_full(where: object, needed: int | None = None) -> DiskFullError:
    """The one-line error for ENOSPC/EDQUOT while writing `where` (a file or a folder)."""
    import os
    import shutil
    from pathlib import Path

    folder = Path(str(where)) if where is not None else Path.cwd()
    try:
        folder = folder if folder.is_dir() else folder.parent
    except OSError:
        folder = folder.parent
    sizes = [f"about {_human(needed)} needed"] if needed else []
    try:
        sizes.append(f"{_human(shutil.disk_usage(folder).free)} free")
    except OSError:
        pass
    detail = f" ({', '.join(sizes)})" if sizes else ""
    return DiskFullError(f"disk full: no space left on device in {folder}{os.sep}{detail}".replace(os.sep * 2, os.sep),
                         "free some space or write elsewhere (--out); nothing was left half-written")


def _os_error(err: OSError) -> GmError | None:
    import errno

    where = culprit(err)
    code = err.errno
    if code in (errno.ENOSPC, errno.EDQUOT):
        return disk_full(where)
    if where is None:
        return None
    if code == errno.EROFS:
        return GmError(f"{where}: read-only file system", "write somewhere else (e.g. --out in your home folder)")
    if code in (errno.EACCES, errno.EPERM):
        from pathlib import Path

        try:
            is_dir = Path(where).is_dir()
        except OSError:  # a parent folder we may not enter
            is_dir = False
        if is_dir:
            return GmError(f"{where}: permission denied (cannot write in this folder)",
                           f"pick another folder, or allow writing: chmod u+w {where}")
        return GmError(f"{where}: permission denied", f"check its permissions (ls -l {where}; chmod u+rw {where})")
    if code == errno.ENOENT:
        return InputError(f"{where}: no such file or folder", "check the path")
    if code in (errno.EISDIR, errno.ENOTDIR):
        return InputError(f"{where}: {err.strerror}", "check the path")
    return None


def _safetensors_error(err: Exception) -> GmError:
    """SafetensorError: the Rust side's I/O errors carry the errno in their text."""
    import errno

    text, where = str(err), culprit(err)
    if "code: 28" in text or "No space left" in text or "StorageFull" in text:
        return disk_full(where)
    if "code: 13" in text or "PermissionDenied" in text:
        return _os_error(PermissionError(errno.EACCES, "Permission denied", where)) or GmError(text)
    name = where or "a safetensors file"
    return CheckpointError(f"{name}: not a valid safetensors file ({text.splitlines()[0]})",
                           "download it again (gm download --verify NAME checks it)")


def _in_header_reader(err: BaseException) -> str | None:
    """The file, when a malformed-but-JSON safetensors header broke gm.checkpoint.read_header."""
    tb = err.__traceback__
    while tb is not None:
        code = tb.tb_frame.f_code
        if code.co_name == "read_header" and code.co_filename.replace("\\", "/").endswith("gm/checkpoint.py"):
            return str(tb.tb_frame.f_locals.get("path"))
        tb = tb.tb_next
    return None


def explain(err: BaseException) -> GmError | None:
    """A GmError naming the cause and the fix for a failure that has a name, else None (a bug).

    Covers: disk full, permission denied, read-only file system, missing paths, a closed stdout
    (StdoutClosed: quiet, exit 141), a file that is not UTF-8, Pillow's decompression-bomb guard,
    safetensors files that are not safetensors, and out-of-memory (out_of_memory)."""
    if isinstance(err, GmError):
        return err
    if isinstance(err, BrokenPipeError):
        silence_stdout()
        return StdoutClosed("stdout closed")
    if isinstance(err, UnicodeDecodeError):
        where = culprit(err) or "a text file"
        bad = err.object[err.start:err.start + 1].hex() if isinstance(err.object, bytes) else "?"
        what = "preset file" if where.endswith(".toml") else "file"
        return InputError(f"{where}: {what} is not UTF-8 text (byte 0x{bad} at offset {err.start})",
                          "save it as UTF-8")
    kind = type(err).__name__
    if kind == "DecompressionBombError":
        from gm.io.media import bomb_error

        return bomb_error(err, culprit(err))
    if kind == "SafetensorError":
        return _safetensors_error(err)  # type: ignore[arg-type]
    if isinstance(err, (TypeError, KeyError, AttributeError, ValueError)):
        where = _in_header_reader(err)
        if where is not None:
            return CheckpointError(f"{where}: safetensors header is JSON but not a tensor table ({kind}: {err})",
                                   "download the file again (gm download --verify NAME checks it)")
    if isinstance(err, OSError):
        return _os_error(err)
    return out_of_memory(err, None)


def silence_stdout() -> None:
    """Point fd 1 at /dev/null: after the reader of a pipe has gone, Python's own flush at exit
    would otherwise print 'Exception ignored ... BrokenPipeError'."""
    import os
    import sys

    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # no real fd 1 (e.g. under a test runner)
        pass


def check_finite(t: object, phase: str, hint: str = "") -> None:
    """Raise GmError if a tensor/array holds NaN or Inf: a NaN result is an error, never a file."""
    import math

    import numpy as np

    torch = __import__("sys").modules.get("torch")
    if torch is not None and isinstance(t, torch.Tensor):
        ok = bool(torch.isfinite(t).all()) if t.is_floating_point() or t.is_complex() else True
    elif isinstance(t, float):
        ok = math.isfinite(t)
    else:
        arr = np.asarray(t)
        ok = bool(np.isfinite(arr).all()) if arr.dtype.kind in "fc" else True
    if not ok:
        raise GmError(f"non-finite values (NaN/Inf) in {phase}",
                      hint or "check the weights and the settings (guidance scale, strength, lr)")


def install_sigterm() -> None:
    """Turn SIGTERM into a Terminated exception (a KeyboardInterrupt): the command's tidy-up runs
    and it exits 143. Only from the main thread; a no-op elsewhere or where SIGTERM is missing."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "SIGTERM"):
        return

    def _raise(signum: int, frame: object) -> None:
        raise Terminated()

    signal.signal(signal.SIGTERM, _raise)
