"""Plain HTTP downloads: resume, checksums, a verification cache, safe archive extraction.

Replaces the downloads the reference leaves to torchvision and rembg at first use (docs/reference.md
§7.3: MNIST and CIFAR-10 into ./.data, rembg's u2net model). A download goes to a hidden
`.NAME.part` file next to its destination, is resumed with an HTTP Range request after a
dropped connection (or in a later run), is checked against its md5/sha256, and only then is
renamed to its final name: an interrupted or corrupt download never sits under the real name.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import os
import shutil
import tarfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

from gm.errors import CheckpointError, GmError

CHUNK = 1 << 20
ATTEMPTS = 5  # connection drops survived per file (each resumes where the last stopped)
TIMEOUT_S = 30.0
VERIFIED = ".gm-verified.json"  # per-folder cache: file -> size, mtime, digest


def file_digest(path: Path, algorithm: str, progress: Callable[[int], None] | None = None) -> str:
    """Hex digest (md5 or sha256) of a file, read in 16 MiB chunks; `progress(nbytes)` after each."""
    h = hashlib.new(algorithm)
    with path.open("rb") as f:
        while block := f.read(1 << 24):
            h.update(block)
            if progress is not None:
                progress(len(block))
    return h.hexdigest()


def check_digest(path: Path, algorithm: str, expected: str, label: str,
                 progress: Callable[[int], None] | None = None) -> None:
    got = file_digest(path, algorithm, progress)
    if got != expected.lower():
        raise CheckpointError(
            f"{label}: {algorithm} mismatch (expected {expected[:12]}…, got {got[:12]}…)",
            "the download is corrupt or the server sent another file; run the command again, "
            "or check GM_DATA_MIRROR / HF_ENDPOINT",
        )


# --- verification cache -------------------------------------------------------------------------

def _stamp(path: Path) -> dict[str, int]:
    st = path.stat()
    return {"size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _read_cache(folder: Path) -> dict[str, dict]:
    try:
        data = json.loads((folder / VERIFIED).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def record_verified(path: Path, algorithm: str, digest: str, expected: str = "") -> None:
    """Remember that `path` (at its current size and mtime) has this digest; `expected` keeps a
    digest obtained at download time (the Hub's ETag) for later offline checks."""
    cache = _read_cache(path.parent)
    entry = {**cache.get(path.name, {}), **_stamp(path), "algorithm": algorithm, "digest": digest.lower()}
    if expected:
        entry["expected"] = expected.lower()
    cache[path.name] = entry
    tmp = path.parent / f".{VERIFIED}.tmp"
    tmp.write_text(json.dumps(cache, indent=1, sort_keys=True))
    os.replace(tmp, path.parent / VERIFIED)


def cache_entry(path: Path) -> dict:
    entry = _read_cache(path.parent).get(path.name)
    return entry if isinstance(entry, dict) else {}


def cached_digest(path: Path, algorithm: str) -> str | None:
    """The digest recorded for `path` if the file has not changed since (same size and mtime)."""
    entry = _read_cache(path.parent).get(path.name)
    if not isinstance(entry, dict) or entry.get("algorithm") != algorithm:
        return None
    if not path.is_file() or {k: entry.get(k) for k in ("size", "mtime_ns")} != _stamp(path):
        return None
    return str(entry.get("digest"))


# --- HTTP with resume ---------------------------------------------------------------------------

def _open(url: str, offset: int) -> tuple[object, int, int | None]:
    """(response, offset it starts at, total size or None). A server that ignores Range restarts at 0."""
    request = urllib.request.Request(url, headers={"User-Agent": "gm-download"})
    if offset:
        request.add_header("Range", f"bytes={offset}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as err:
        if err.code == 416 and offset:  # nothing left to send: the part file is complete
            return None, offset, offset
        raise
    length = response.headers.get("Content-Length")
    if response.status == 206:
        total = response.headers.get("Content-Range", "").rpartition("/")[2]
        return response, offset, int(total) if total.isdigit() else None
    return response, 0, int(length) if length and length.isdigit() else None


def http_download(url: str, dest: Path, *, md5: str = "", sha256: str = "", size: int = 0,
                  progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Fetch `url` to `dest` through `.dest.part`, resuming after drops; verify; rename.

    `progress(done_bytes, total_bytes)` is called as data arrives.
    """
    dest.parent.mkdir(parents=True, exist_ok=True)
    part = dest.parent / f".{dest.name}.part"
    label = dest.name
    for attempt in range(ATTEMPTS + 1):
        offset = part.stat().st_size if part.exists() else 0
        try:
            response, start, total = _open(url, offset)
            if response is None:
                break
            with response, part.open("ab" if start else "wb") as out:  # type: ignore[attr-defined]
                done = start
                while True:
                    try:
                        block = response.read(CHUNK)  # type: ignore[attr-defined]
                    except http.client.IncompleteRead as err:  # keep what arrived, resume after it
                        out.write(err.partial)
                        raise ConnectionError(f"connection closed after {done + len(err.partial)} bytes") from None
                    if not block:
                        break
                    out.write(block)
                    done += len(block)
                    if progress is not None:
                        progress(done, total or size or None)
            expected = total or size
            if expected and part.stat().st_size < expected:
                raise ConnectionError(f"connection closed at {part.stat().st_size} of {expected} bytes")
            break
        except urllib.error.HTTPError as err:
            raise GmError(f"{label}: HTTP {err.code} {err.reason} from {url}",
                          "check the URL, or set GM_DATA_MIRROR to a mirror that has the file") from None
        except (urllib.error.URLError, http.client.HTTPException, OSError) as err:
            if attempt == ATTEMPTS:
                raise GmError(f"{label}: download failed after {ATTEMPTS} retries ({err})",
                              "run the same command again: it resumes where it stopped") from None
            time.sleep(min(2.0**attempt * 0.25, 5.0))
    try:
        if size and part.stat().st_size != size:
            raise CheckpointError(f"{label}: size {part.stat().st_size} bytes, expected {size}",
                                  "run the command again")
        for algorithm, expected in (("sha256", sha256), ("md5", md5)):
            if expected:
                check_digest(part, algorithm, expected, label)
    except CheckpointError:
        part.unlink(missing_ok=True)  # never resume from corrupt data
        raise
    os.replace(part, dest)
    for algorithm, expected in (("sha256", sha256), ("md5", md5)):
        if expected:
            record_verified(dest, algorithm, expected)
    return dest


# --- archives -----------------------------------------------------------------------------------

def safe_extract_tar(archive: Path, into: Path, top: str) -> Path:
    """Extract `archive` (whose entries all live under `top/`) to `into/top`, refusing anything
    that could escape: absolute paths, `..`, links, devices. Extracts to a temporary folder
    first, so a failure leaves no half-extracted `top`."""
    final = into / top
    tmp = into / f".{top}.extracting"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        with tarfile.open(archive, "r:*") as tar:
            members = tar.getmembers()
            for member in members:
                parts = Path(member.name).parts
                if (member.name.startswith(("/", "\\")) or ".." in parts or not parts or parts[0] != top
                        or not (member.isfile() or member.isdir())):
                    raise CheckpointError(f"{archive.name}: unsafe or unexpected entry {member.name!r}",
                                          "delete the archive and download it again")
            tar.extractall(tmp, members=members, filter="data")
    except (tarfile.TarError, EOFError, OSError) as err:
        shutil.rmtree(tmp, ignore_errors=True)
        raise CheckpointError(f"{archive.name}: cannot extract ({err})", "delete it and download again") from None
    except CheckpointError:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(final, ignore_errors=True)
    os.replace(tmp / top, final)
    shutil.rmtree(tmp, ignore_errors=True)
    return final
