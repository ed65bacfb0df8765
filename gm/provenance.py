"""Which file made an output: its name and the A1111 `Model hash` (first 10 hex digits of sha256).

Hashing a 7 GB checkpoint takes tens of seconds, so a file's sha256 is computed once and kept in
$XDG_CACHE_HOME/gm/hashes.json (default ~/.cache/gm) under its resolved path, with the size and
mtime it had; a file that changed (either differs) is hashed again. The cache is rewritten
atomically (temporary file + rename), and a damaged or unwritable cache only costs a re-hash.
`gm download` records the digests it verifies here too, so a freshly downloaded file is never
hashed twice.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from pathlib import Path

from gm.resources import user_cache_dir

CACHE_NAME = "hashes.json"
HASH_DIGITS = 10  # A1111's "Model hash" (its sha256-based "new" hash, as Civitai lists it)


def cache_path() -> Path:
    return user_cache_dir() / CACHE_NAME


def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()  # follows links: an HF cache snapshot entry stamps its blob
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read() -> dict[str, dict]:
    try:
        data = json.loads(cache_path().read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _key(path: Path) -> str:
    return str(Path(path).resolve())


def cached_sha256(path: Path) -> str | None:
    """The sha256 recorded for `path`, if the file still has the size and mtime it had then."""
    entry = _read().get(_key(path))
    if not isinstance(entry, dict) or not Path(path).is_file():
        return None
    if {k: entry.get(k) for k in ("size", "mtime_ns")} != _stamp(Path(path)):
        return None
    digest = entry.get("sha256")
    return digest if isinstance(digest, str) and len(digest) == 64 else None


def record_sha256(path: Path, digest: str) -> None:
    """Remember `path`'s sha256 at its current size and mtime (best effort: a read-only home
    directory only means the next run hashes again)."""
    data = _read()
    data[_key(path)] = {**_stamp(Path(path)), "sha256": digest.lower()}
    target = cache_path()
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".hashes.", suffix=".tmp", dir=target.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=1, sort_keys=True)
        os.replace(tmp, target)
    except OSError:
        return


def sha256(path: str | Path, progress: Callable[[int], None] | None = None) -> str:
    """The file's sha256 (hex), from the cache when the file has not changed since it was hashed."""
    path = Path(path)
    known = cached_sha256(path)
    if known is not None:
        return known
    h = hashlib.sha256()
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
            if progress is not None:
                progress(len(block))
    digest = h.hexdigest()
    record_sha256(path, digest)
    return digest


def model_hash(path: str | Path) -> str:
    """A1111's `Model hash` of a checkpoint file: the first 10 hex digits of its sha256."""
    return sha256(path)[:HASH_DIGITS]


def file_record(path: str | Path) -> dict[str, str]:
    """What an output records about the file it was made from: path, file name, Model hash."""
    path = Path(path)
    return {"path": str(path.resolve()), "name": path.name, "sha256_10": model_hash(path)}


def engine_record(engine: object) -> dict[str, str] | None:
    """file_record of the checkpoint an engine was loaded from (gm.loader tags it with the path),
    computed once per engine, with a progress bar while a new file is hashed; None for an engine
    that was not loaded from a file."""
    record = getattr(engine, "checkpoint_record", None)
    path = getattr(engine, "checkpoint_file", None)
    if record is not None or path is None:
        return record
    if cached_sha256(path) is None:
        from gm.console import console

        with console.task(f"hash {Path(path).name}", total=Path(path).stat().st_size, unit="B") as bar:
            sha256(path, bar.advance)
    record = file_record(path)
    engine.checkpoint_record = record  # type: ignore[attr-defined]
    return record
