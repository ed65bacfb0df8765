"""Output files: numbered names in the output folder, written to a temporary name and renamed.

Never overwrites: the final name is claimed with a hard link (atomic, fails if the name
exists), so two gm processes writing to one folder cannot clobber each other. A failure mid-write
(full disk, Ctrl-C, SIGTERM) removes the hidden temporary; a kill -9 can leave one behind, never
a half-written result under a final name.
"""

from __future__ import annotations

import errno
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from gm.errors import InputError, UsageError, disk_full, explain

_NUMBER = re.compile(r"^(\d+)")


# Folders ensure_dir created in this process, deepest last: a command that fails removes those
# that are still empty (remove_created_if_empty), so a failed run leaves no trace in the tree.
_created: list[Path] = []


def ensure_dir(out_dir: str | Path) -> Path:
    out = Path(out_dir).expanduser()
    missing = [p for p in (out, *out.parents) if not p.exists()]
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        _created.extend(p for p in reversed(missing) if p.is_dir())  # the part that was made goes too
        raise UsageError(f"cannot create output folder {out}: {err.strerror}", "pick another --out") from None
    _created.extend(reversed(missing))
    if not os.access(out, os.W_OK):
        raise UsageError(f"output folder {out} is not writable", "pick another --out")
    return out


def forget_created() -> None:
    _created.clear()


def remove_created_if_empty() -> None:
    """rmdir (never anything else) the folders ensure_dir made, deepest first, where still empty."""
    while _created:
        try:
            _created.pop().rmdir()
        except OSError:  # not empty (or gone): keep it
            pass


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def next_number(out_dir: Path) -> int:
    """One more than the largest leading number of any file in `out_dir` (0 if none)."""
    numbers = [int(m.group(1)) for p in out_dir.iterdir() if (m := _NUMBER.match(p.name))]
    return max(numbers, default=-1) + 1


@contextmanager
def _named_errors(folder: Path) -> Iterator[None]:
    """A full disk or a refused folder becomes its one-line GmError (FileExistsError, which means
    "take the next number", and unnamed OSErrors pass unchanged)."""
    try:
        yield
    except FileExistsError:
        raise
    except OSError as err:
        named = disk_full(folder) if err.errno in (errno.ENOSPC, errno.EDQUOT) else explain(err)
        if named is None:
            raise
        raise named from None


def _fsync(path: Path) -> None:
    with path.open("rb") as fh:
        os.fsync(fh.fileno())


def write_atomic(final: Path, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Call `write(tmp_path)`, then move the result to `final` without ever replacing a file
    (`replace=True`: swap it in for an older version in one step, e.g. a training run's latest grid).

    The temporary (`.<stem>.XXXX.tmp<suffix>` beside `final`) is removed on every failure,
    KeyboardInterrupt and SIGTERM included; a full disk is a DiskFullError naming the folder."""
    tmp: Path | None = None
    try:
        with _named_errors(final.parent):
            fd, tmp_name = tempfile.mkstemp(prefix=f".{final.stem}.", suffix=f".tmp{final.suffix}", dir=final.parent)
            tmp = Path(tmp_name)
            os.close(fd)
            write(tmp)
            _fsync(tmp)  # the bytes are on disk before the name points at them
            os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; results get the usual permissions
            if replace:
                os.replace(tmp, final)  # readers see the old file or the new one, never a part
            else:
                os.link(tmp, final)  # atomic; raises FileExistsError instead of overwriting
    finally:
        if tmp is not None:
            tmp.unlink(missing_ok=True)
    return final


def write_atomic_dir(final: Path, write: Callable[[Path], None]) -> Path:
    """Like write_atomic for a folder of files (e.g. video frames): `write(tmp_dir)` fills a hidden
    temporary folder that is renamed to `final` when complete (FileExistsError if `final` exists)."""
    tmp: Path | None = None
    try:
        with _named_errors(final.parent):
            tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
            write(tmp)
            for f in tmp.iterdir():
                _fsync(f)
            os.chmod(tmp, 0o777 & ~_umask())
            if final.exists():
                raise FileExistsError(final)
            os.rename(tmp, final)  # an empty folder at `final` (a race) would be replaced: checked above
            tmp = None
    finally:
        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def write_text_atomic(final: Path, text: str, replace: bool = False) -> Path:
    """A small text file (config, manifest) written atomically; `replace` allows an update in place."""
    if not replace:
        return write_atomic(final, lambda tmp: tmp.write_text(text, encoding="utf-8"))
    tmp = final.with_name(f".{final.name}.tmp-{os.getpid()}")
    try:
        with _named_errors(final.parent):
            tmp.write_text(text, encoding="utf-8")
            _fsync(tmp)
            os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)
    return final


def write_numbered(out_dir: Path, suffix: str, write: Callable[[Path], None], digits: int = 6,
                   tag: str = "") -> Path:
    """Write to `out_dir/NNNNNN<tag><suffix>`, taking the next free number."""
    for _ in range(1000):
        final = out_dir / f"{next_number(out_dir):0{digits}d}{tag}{suffix}"
        try:
            return write_atomic(final, write)
        except FileExistsError:
            continue  # another process took the number: try the next
    raise InputError(f"could not find a free file name in {out_dir}")


def expand_inputs(items: list[str], suffixes: tuple[str, ...], what: str = "image") -> list[Path]:
    """Files, folders (their matching files, sorted) and `-` (paths read from stdin)."""
    import sys

    paths: list[Path] = []
    for item in items:
        if item == "-":
            paths += [Path(line.strip()) for line in sys.stdin if line.strip()]
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.suffix.lower() in suffixes)
            if not found:
                raise InputError(f"{path}: no {what} files ({', '.join(suffixes)}) in this folder")
            paths += found
        else:
            paths.append(path)
    for path in paths:
        if not path.is_file():
            raise InputError(f"{path}: no such file", f"give an existing {what} file, a folder or -")
    if not paths:
        raise UsageError(f"no {what} given", f"pass {what} files, a folder, or - to read paths from stdin")
    return paths
