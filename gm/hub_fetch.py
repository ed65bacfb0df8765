"""`gm download`'s fetching: Hub files into the Hugging Face cache (or a --dir folder), plain
HTTP files through gm.fetch; every file verified before it is used.

Hub files go through huggingface_hub's `hf_hub_download` (HF_ENDPOINT, HF_TOKEN, HF_HOME /
HF_HUB_CACHE, hf_xet when installed). Into the cache, the file keeps the Hub's layout
(`models--ORG--NAME/blobs`, `snapshots/REV/FILE`), so diffusers and other Hub tools find it
and nothing is fetched twice; a file that fails its sha256 is removed from the cache again.
With --dir it is staged in `DIR/.gm-download/` and renamed to `DIR/NAME` only once verified.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from pathlib import Path

from gm import fetch, locate
from gm.errors import CheckpointError, GmError
from gm.hub import _SHA256, FROZEN, HUB_PAGE, Item, RemoteFile, find_file, record, url_of

STAGING = ".gm-download"  # hf_hub_download's local_dir, inside a --dir folder


def download_file(item: Item, file: RemoteFile, folder: Path | None,
                  progress: Callable[[int, int | None], None] | None = None) -> Path:
    """Fetch one file; `folder` None: a checkpoint into the Hugging Face cache."""
    if item.kind == "checkpoint":
        return hub_download(item, file, folder)
    assert folder is not None
    return fetch.http_download(url_of(file), folder / file.name, md5=file.md5, sha256=file.sha256,
                               size=file.size, progress=progress)


def hub_download(item: Item, file: RemoteFile, folder: Path | None = None) -> Path:
    """hf_hub_download into the Hugging Face cache (or staged into `folder`), check the sha256
    (published, else the Hub's LFS ETag), return the file's path."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it at import
    staging = folder / STAGING if folder is not None else None
    where = {"local_dir": staging} if staging is not None else {"cache_dir": locate.hf_cache_dir()}
    if staging is not None:
        staging.mkdir(parents=True, exist_ok=True)
    try:
        meta = get_hf_file_metadata(hf_hub_url(file.repo, file.remote, endpoint=endpoint))
        got = Path(hf_hub_download(file.repo, file.remote, endpoint=endpoint, **where))
    except Exception as err:  # huggingface_hub's errors -> one clear line
        raise hub_error(item, file, err) from None
    etag = (meta.etag or "").lower()
    digest = file.sha256 or (etag if _SHA256.match(etag) else "")
    if digest:
        try:
            fetch.check_digest(got, "sha256", digest, f"{file.repo}/{file.remote}")
        except CheckpointError:
            forget(got, staging)
            raise
    if staging is None:
        if digest:
            record(got, "sha256", digest)
        return got
    final = folder / file.name  # type: ignore[operator]
    os.replace(got, final)
    (staging / ".cache" / "huggingface" / "download" / f"{file.remote}.metadata").unlink(missing_ok=True)
    if digest:  # keep the Hub's sha256 too, so that --verify can check the file offline later
        record(final, "sha256", digest, expected="" if file.sha256 else digest)
    return final


def forget(got: Path, staging: Path | None) -> None:
    """Remove a file that failed its check, so that no later run uses or resumes it."""
    if staging is not None:
        got.unlink(missing_ok=True)
        shutil.rmtree(staging / ".cache", ignore_errors=True)  # the bad file's metadata
        return
    blob = Path(os.path.realpath(got))
    got.unlink(missing_ok=True)  # the snapshot's link, then the blob it pointed to
    blob.unlink(missing_ok=True)


def hub_error(item: Item, file: RemoteFile, err: Exception) -> GmError:
    from huggingface_hub.errors import (
        EntryNotFoundError,
        GatedRepoError,
        HfHubHTTPError,
        LocalEntryNotFoundError,
        OfflineModeIsEnabled,
        RepositoryNotFoundError,
        RevisionNotFoundError,
    )

    repo, name = file.repo, file.path or file.name
    status_code = getattr(getattr(err, "response", None), "status_code", None)
    gated_hint = f"accept the licence at {HUB_PAGE}/{repo} and set HF_TOKEN (a token with read access)"
    if isinstance(err, GatedRepoError) or status_code in (401, 403):
        what = "is gated" if item.gated or isinstance(err, GatedRepoError) else "needs authorisation"
        return CheckpointError(f"{repo} {what} (HTTP {status_code}): cannot download {name}", gated_hint)
    if isinstance(err, EntryNotFoundError):
        source = "the preset's checkpoint.file or checkpoint.repo" if item.name not in {i.name for i in FROZEN} \
            else f"gm's entry for {item.name}"
        return CheckpointError(f"{name} not found in {repo} (HTTP 404)",
                               f"{source} no longer matches the Hub, or HF_ENDPOINT points elsewhere")
    if isinstance(err, (RepositoryNotFoundError, RevisionNotFoundError)):
        return CheckpointError(f"repository {repo} not found (HTTP {status_code})",
                               "check the preset's checkpoint.repo, or HF_ENDPOINT")
    if isinstance(err, OfflineModeIsEnabled) or os.environ.get("HF_HUB_OFFLINE", "") in ("1", "true", "TRUE"):
        return CheckpointError(f"cannot download {name}: HF_HUB_OFFLINE is set", "unset HF_HUB_OFFLINE")
    if isinstance(err, LocalEntryNotFoundError):
        return CheckpointError(f"cannot reach the Hub for {repo}/{name} ({err.__cause__ or err})",
                               "check the network connection (or HF_ENDPOINT), then run the command again")
    if isinstance(err, HfHubHTTPError):
        return CheckpointError(f"{repo}/{name}: HTTP {status_code}: {str(err).splitlines()[0]}",
                               "try again later")
    return CheckpointError(f"{repo}/{name}: download failed: {type(err).__name__}: {err}",
                           "run the command again: completed files are kept")



def download_item(item: Item, base: str | Path | None = None, force: bool = False) -> list[Path]:
    """Fetch every file of `item` that gm cannot find yet (all of them with `force`); returns
    the paths. Checkpoints go to the Hugging Face cache unless `base` (--dir) is given."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    from gm.console import console
    from gm.hub import destination

    (enable_progress_bars if console.live else disable_progress_bars)()
    folder = None if item.kind == "checkpoint" and not base else destination(item, base)
    shown = folder if folder is not None else locate.hf_cache_dir()
    extracted = (folder or shown) / item.extract if item.extract else None
    paths = []
    for file in item.files:
        present = None if force else find_file(item, file, base)
        if present is not None or (extracted is not None and extracted.is_dir() and not force):
            console.log(f"{item.name}: {file.name} already present at {present or extracted}")
            paths.append(present or (shown / file.name))
            continue
        total = file.size / 1e6 if file.size else None
        with console.task(f"download {file.name}", total=total, unit="MB") as bar:
            def advance(done: int, size: int | None, bar: object = bar) -> None:
                bar.update(completed=done / 1e6, total=(size / 1e6) if size else None)  # type: ignore[attr-defined]

            paths.append(download_file(item, file, folder, advance))
    if extracted is not None and (force or not extracted.is_dir()):
        console.log(f"{item.name}: extracting {item.files[0].name}")
        fetch.safe_extract_tar(shown / item.files[0].name, shown, item.extract)
    return [extracted] if extracted is not None else paths
