"""The output folder of a batch: one folder per job, a JSON Lines manifest, crash-safe moves.

Layout of `--out DIR`:

    DIR/manifest.jsonl          one record per job: name, index, id, hash, status, files, seed, time
    DIR/job-000000/...          the outputs of job 0 (or DIR/<id>/ for a line with an "id")
    DIR/superseded/<name>-<hash>/  outputs of a job whose line changed since they were made
    DIR/manifest.rank-N.jsonl   while several torchrun ranks work: rank N's records (merged at the end)

A job runs in a hidden temporary folder (`.gm-tmp.<pid>.<host>.<name>`); when it has finished, its
record is appended (one whole line, flushed and fsynced) and the folder renamed to its final name
in one step, so a job folder is either absent or complete. Temporary folders of dead processes on
this host are removed at the next start.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

MANIFEST = "manifest.jsonl"
SUPERSEDED = "superseded"
TMP_PREFIX = ".gm-tmp."


def _host() -> str:
    return hashlib.sha256(socket.gethostname().encode()).hexdigest()[:8]


def temp_path(out_dir: Path, name: str) -> Path:
    """A temporary name in `out_dir` owned by this process (host + pid, so a restart can tell it is stale)."""
    return out_dir / f"{TMP_PREFIX}{os.getpid()}.{_host()}.{name}"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # exists, owned by someone else
        return True
    return True


def clean_stale(out_dir: Path) -> list[Path]:
    """Remove the temporary files and folders that dead processes of this host left in `out_dir`."""
    removed = []
    for path in out_dir.glob(f"{TMP_PREFIX}*"):
        parts = path.name[len(TMP_PREFIX):].split(".", 2)
        if len(parts) < 3 or not parts[0].isdigit() or parts[1] != _host() or _alive(int(parts[0])):
            continue  # another host's (shared folder), or a live process's
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)
        removed.append(path)
    return removed


def fsync_dir(path: Path) -> None:
    """Make a rename or a new entry in `path` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def read_records(path: Path) -> list[dict[str, Any]]:
    """The records of a manifest file; a line that is not a whole JSON object (the last one of a
    process killed mid-write) is skipped."""
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return []
    records = []
    for line in text.splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            continue
        if isinstance(record, dict) and isinstance(record.get("job"), str):
            records.append(record)
    return records


def latest(records: Iterable[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The last record of each job name."""
    last: dict[str, dict[str, Any]] = {}
    for record in records:
        last.pop(record["job"], None)
        last[record["job"]] = record
    return last


def append(path: Path, record: dict[str, Any]) -> None:
    """Append one record as one complete line, flushed and fsynced before returning."""
    line = json.dumps(record, sort_keys=True, default=str) + "\n"
    with open(path, "a", encoding="utf-8") as f:
        f.write(line)
        f.flush()
        os.fsync(f.fileno())


def part_path(out_dir: Path, rank: int) -> Path:
    return out_dir / f"manifest.rank-{rank}.jsonl"


def merge(out_dir: Path) -> Path:
    """Fold the rank parts into manifest.jsonl, keeping the latest record of each job, ordered by
    job index. Written to a temporary name and renamed over the old manifest, then the parts are
    deleted: a crash in between leaves records that are merged again (the same ones) next time."""
    manifest = out_dir / MANIFEST
    parts = sorted(out_dir.glob("manifest.rank-*.jsonl"))
    records = read_records(manifest)
    for part in parts:
        records += read_records(part)
    ordered = sorted(latest(records).values(), key=lambda r: (r.get("index", 0), r["job"]))
    tmp = temp_path(out_dir, MANIFEST)
    with open(tmp, "w", encoding="utf-8") as f:
        f.writelines(json.dumps(r, sort_keys=True, default=str) + "\n" for r in ordered)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, manifest)
    fsync_dir(out_dir)
    for part in parts:
        part.unlink(missing_ok=True)
    return manifest


def is_done(record: dict[str, Any] | None, digest: str, out_dir: Path) -> bool:
    """Finished, from the same job options, and every file it wrote is still there."""
    if record is None or record.get("status") != "done" or record.get("hash") != digest:
        return False
    files = record.get("files")
    return isinstance(files, list) and all(isinstance(f, str) and (out_dir / f).is_file() for f in files)


def set_aside(out_dir: Path, name: str, record: dict[str, Any] | None) -> Path | None:
    """Move an old job folder out of the way (to superseded/) before the job is redone: old outputs
    are never mixed with new ones nor taken for current, and never deleted."""
    final = out_dir / name
    if not final.exists():
        return None
    stamp = (record or {}).get("hash") or time.strftime("%Y%m%d-%H%M%S")
    aside = out_dir / SUPERSEDED / f"{name}-{stamp}"
    aside.parent.mkdir(exist_ok=True)
    n = 1
    while aside.exists():
        aside, n = out_dir / SUPERSEDED / f"{name}-{stamp}-{n}", n + 1
    os.rename(final, aside)
    fsync_dir(out_dir)
    return aside


def job_files(folder: Path, name: str) -> list[str]:
    """The files a job wrote in `folder`, as they will be named once it is published: `name/...`, sorted."""
    return sorted(f"{name}/{path.relative_to(folder).as_posix()}" for path in folder.rglob("*") if path.is_file())


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished job folder to its final name (atomic on one file system)."""
    os.rename(tmp, final)
    fsync_dir(final.parent)
