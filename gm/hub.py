"""`gm download` engine: what can be fetched, where it goes, fetching it, verifying it.

Mirrors the reference's download sources (REFERENCE.md §7.2 checkpoint repositories, §7.1
published hashes, §7.3 the datasets and the rembg model it fetches at first use). Checkpoints
come through huggingface_hub (`hf_hub_download`: HF_ENDPOINT, HF_TOKEN, hf_xet when installed)
into a hidden staging folder next to the destination, are checked against the preset's sha256
(or, when none is published, the Hub's own LFS sha256 ETag), and only then renamed into place.
Datasets and auxiliary models are plain HTTP downloads (gm.fetch), `GM_DATA_MIRROR` replacing
their base URL.
"""

from __future__ import annotations

import os
import re
import shutil
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gm import fetch
from gm.errors import CheckpointError, GmError, PresetError, UsageError

STAGING = ".gm-download"  # hf_hub_download's local_dir, inside the destination folder
HUB_PAGE = "https://huggingface.co"
_SHA256 = re.compile(r"^[0-9a-f]{64}$")


@dataclass(frozen=True)
class RemoteFile:
    name: str  # file name in the item's folder
    repo: str = ""  # Hugging Face repository (checkpoints)
    path: str = ""  # the file's path in `repo` when it differs from `name`
    url: str = ""  # plain URL (datasets, auxiliary models)
    sha256: str = ""
    md5: str = ""
    size: int = 0  # bytes, 0 = unknown


@dataclass(frozen=True)
class Item:
    name: str  # what the user types after `gm download`
    kind: str  # "checkpoint" | "dataset" | "aux"
    files: tuple[RemoteFile, ...]
    size_gb: float = 0.0
    license: str = ""
    gated: bool = False
    extract: str = ""  # tar archives are unpacked to this folder (cifar10)
    note: str = ""


MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"  # torchvision's mirror of LeCun's files
CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
REMBG_URL = "https://github.com/danielgatis/rembg/releases/download/v0.0.0/"
# md5 values as torchvision lists them (the files' original publishers give none).
DATASETS = (
    Item("mnist", "dataset", (
        RemoteFile("train-images-idx3-ubyte.gz", url=MNIST_URL, md5="f68b3c2dcbeaaa9fbdd348bbdeb94873", size=9912422),
        RemoteFile("train-labels-idx1-ubyte.gz", url=MNIST_URL, md5="d53e105ee54ea40749a09fcbcd1e9432", size=28881),
        RemoteFile("t10k-images-idx3-ubyte.gz", url=MNIST_URL, md5="9fb629c4189551a2d022fa330f9573f3", size=1648877),
        RemoteFile("t10k-labels-idx1-ubyte.gz", url=MNIST_URL, md5="ec29112dd5afa0611ce80d1b7f02629c", size=4542),
    ), 0.012, "CC BY-SA 3.0 (Y. LeCun, C. Cortes)"),
    Item("cifar10", "dataset", (
        RemoteFile("cifar-10-python.tar.gz", url=CIFAR_URL, md5="c58f30108f718f92721af3b95e74349a", size=170498071),
    ), 0.17, "free for research (A. Krizhevsky)", extract="cifar-10-batches-py"),
)
# Pretrained parts of the latent training presets that their checkpoints do not hold (REFERENCE
# §7.2 sdxl-vae, §7.3 CLIP-L), saved under the names [train].vae_checkpoint / clip_checkpoint use.
FROZEN = (
    Item("sdxl-vae", "checkpoint", (RemoteFile("sdxl_vae.safetensors", repo="stabilityai/sdxl-vae"),),
         0.33, "MIT", note="frozen first stage of imagenet-f8-cond and txt2img-clipl"),
    Item("clip-vit-large-patch14", "checkpoint", (RemoteFile(
        "clip-vit-large-patch14.safetensors", repo="openai/clip-vit-large-patch14", path="model.safetensors"),),
        1.71, "OpenAI CLIP model card", note="frozen text encoder of txt2img-clipl"),
)
# rembg's models, with the checksums its own session classes check (rembg/sessions/*.py).
AUX = (
    Item("rembg-u2net", "aux", (RemoteFile("u2net.onnx", url=REMBG_URL, md5="60024c5c889badc19c04ad937298a77b"),),
         0.18, "Apache-2.0", note="background removal (u2net, the reference's rembg default)"),
    Item("rembg-bria", "aux", (RemoteFile(
        "bria-rmbg.onnx", url=REMBG_URL + "bria-rmbg-2.0.onnx",
        sha256="5b486f08200f513f460da46dd701db5fbb47d79b4be4b708a19444bcd4e79958"),),
        0.0, "CC BY-NC 4.0 (BRIA RMBG-2.0)", note="background removal (rembg >= 2.0.70 default)"),
)


def checkpoint_items() -> list[Item]:
    """One item per preset that names a checkpoint (presets that fail to parse are skipped)."""
    from gm import presets

    items = []
    for name in presets.available():
        try:
            preset = presets.load(name)
        except PresetError:
            continue
        spec = preset.checkpoint
        if spec is None or not spec.repo:
            continue
        licence = spec.license or f"see {HUB_PAGE}/{spec.repo}"  # no name recorded: the model card rules
        items.append(Item(name, "checkpoint", (RemoteFile(spec.file, repo=spec.repo, sha256=spec.sha256),),
                          spec.size_gb, licence, spec.gated, note=preset.description))
    return items


def catalogue() -> list[Item]:
    return [*checkpoint_items(), *FROZEN, *DATASETS, *AUX]


def find_item(name: str) -> Item:
    items = {item.name: item for item in catalogue()}
    if name in items:
        return items[name]
    known = ", ".join(sorted(items))
    raise UsageError(f"unknown download '{name}'", f"known: {known} (see gm download --list)")


def rembg_home() -> Path:
    """rembg's data folder, as rembg.sessions.base.BaseSession.rembg_home computes it."""
    if os.environ.get("U2NET_HOME"):
        return Path(os.environ["U2NET_HOME"]).expanduser()
    xdg = os.environ.get("XDG_DATA_HOME")
    default = os.path.join(xdg, "rembg") if xdg else os.path.join("~", ".rembg")
    return Path(os.environ.get("REMBG_HOME", default)).expanduser()


def destination(item: Item, base: str | Path | None = None) -> Path:
    """The folder an item's files go to (`base` is --dir)."""
    if item.kind == "checkpoint":
        if base:
            return Path(base).expanduser()
        env = os.environ.get("GM_CHECKPOINTS")
        return Path(env).expanduser() if env else Path.cwd() / "checkpoints"
    if item.kind == "dataset":
        root = base or os.environ.get("GM_DATA") or Path.cwd() / ".data"
        return Path(root).expanduser() / item.name
    model = Path(item.files[0].name).stem  # rembg looks in <home>/models/<session name>/
    return (Path(base).expanduser() if base else rembg_home()) / "models" / model


def url_of(file: RemoteFile) -> str:
    """The file's URL; GM_DATA_MIRROR replaces the base of every non-Hub download."""
    mirror = os.environ.get("GM_DATA_MIRROR", "").rstrip("/")
    if mirror:
        return f"{mirror}/{file.name}"
    return file.url + file.name if file.url.endswith("/") else file.url


@dataclass(frozen=True)
class Status:
    item: Item
    folder: Path
    present: bool
    verified: bool | None  # None: no hash known, or not checked since the file last changed


def expected_hash(file: RemoteFile, path: Path) -> tuple[str, str]:
    """(algorithm, digest) to check `path` against: the published one, else one the Hub gave."""
    if file.sha256:
        return "sha256", file.sha256
    if file.md5:
        return "md5", file.md5
    known = fetch.cache_entry(path)
    return ("sha256", str(known["expected"])) if known.get("expected") else ("", "")


def status(item: Item, base: str | Path | None = None) -> Status:
    folder = destination(item, base)
    paths = [folder / f.name for f in item.files]
    present = all(p.is_file() for p in paths)
    if item.extract:
        present = present or (folder / item.extract).is_dir()
    verified: bool | None = None
    if present and all(p.is_file() for p in paths):
        checks = []
        for file, path in zip(item.files, paths):
            algorithm, digest = expected_hash(file, path)
            cached = fetch.cached_digest(path, algorithm) if algorithm else None
            checks.append(None if cached is None else cached == digest.lower())
        verified = None if None in checks else all(checks)
    return Status(item, folder, present, verified)


def verify(item: Item, base: str | Path | None, progress: Callable[[int], None] | None = None) -> list[str]:
    """Re-hash every present file of `item`; returns the names checked. Mismatch: CheckpointError."""
    folder = destination(item, base)
    checked = []
    for file in item.files:
        path = folder / file.name
        if not path.is_file():
            continue
        algorithm, digest = expected_hash(file, path)
        if not algorithm:
            continue
        fetch.check_digest(path, algorithm, digest, str(path), progress)
        fetch.record_verified(path, algorithm, digest)
        checked.append(file.name)
    return checked


def download_file(item: Item, file: RemoteFile, folder: Path,
                  progress: Callable[[int, int | None], None] | None = None) -> Path:
    if item.kind == "checkpoint":
        return hub_download(item, file, folder)
    return fetch.http_download(url_of(file), folder / file.name, md5=file.md5, sha256=file.sha256,
                               size=file.size, progress=progress)


def hub_download(item: Item, file: RemoteFile, folder: Path) -> Path:
    """hf_hub_download into `folder/.gm-download/`, verify the sha256, rename to `folder/NAME`."""
    from huggingface_hub import get_hf_file_metadata, hf_hub_download, hf_hub_url

    endpoint = os.environ.get("HF_ENDPOINT") or None  # read now: huggingface_hub reads it at import
    staging = folder / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    remote = file.path or file.name
    try:
        meta = get_hf_file_metadata(hf_hub_url(file.repo, remote, endpoint=endpoint))
        staged = Path(hf_hub_download(file.repo, remote, local_dir=staging, endpoint=endpoint))
    except Exception as err:  # huggingface_hub's errors -> one clear line
        raise hub_error(item, file, err) from None
    etag = (meta.etag or "").lower()
    algorithm, digest = ("sha256", file.sha256) if file.sha256 else ("sha256", etag) if _SHA256.match(etag) else ("", "")
    final = folder / file.name
    if algorithm:
        try:
            fetch.check_digest(staged, algorithm, digest, f"{file.repo}/{remote}")
        except CheckpointError:
            staged.unlink(missing_ok=True)
            shutil.rmtree(staging / ".cache", ignore_errors=True)  # forget the bad file's metadata
            raise
    os.replace(staged, final)
    (staging / ".cache" / "huggingface" / "download" / f"{remote}.metadata").unlink(missing_ok=True)
    if algorithm:  # keep the Hub's sha256 too, so that --verify can check the file offline later
        fetch.record_verified(final, algorithm, digest, expected="" if file.sha256 else digest)
    return final


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
    """Fetch every file of `item` that is missing (all of them with `force`); returns the paths."""
    from huggingface_hub.utils import disable_progress_bars, enable_progress_bars

    from gm.console import console

    (enable_progress_bars if console.live else disable_progress_bars)()
    folder = destination(item, base)
    extracted = folder / item.extract if item.extract else None
    paths = []
    for file in item.files:
        final = folder / file.name
        if not force and (final.is_file() or (extracted is not None and extracted.is_dir())):
            console.log(f"{item.name}: {file.name} already present in {folder}")
        else:
            total = file.size / 1e6 if file.size else None
            with console.task(f"download {file.name}", total=total, unit="MB") as bar:
                def advance(done: int, size: int | None, bar: object = bar) -> None:
                    bar.update(completed=done / 1e6, total=(size / 1e6) if size else None)  # type: ignore[attr-defined]

                download_file(item, file, folder, advance)
        paths.append(final)
    if extracted is not None and (force or not extracted.is_dir()):
        console.log(f"{item.name}: extracting {item.files[0].name}")
        fetch.safe_extract_tar(folder / item.files[0].name, folder, item.extract)
    return [extracted] if extracted is not None else paths
