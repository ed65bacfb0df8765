"""`gm download` catalogue: what can be fetched, where it is (or goes), whether it checks out.

Checkpoints are Hugging Face Hub files: they go to the Hugging Face cache (HF_HOME /
HF_HUB_CACHE, shared with diffusers and every other Hub tool) unless --dir names a folder, and
they count as present wherever gm.locate finds them (GM_CHECKPOINTS folders, ./checkpoints, the
cache), so `--list`, loading and `gm download` agree and nothing is fetched twice. Each file is
checked against the preset's published sha256 (or, when none is published, the Hub's own LFS
sha256) before it is used. Datasets and rembg's models are plain HTTP downloads (gm.fetch),
`GM_DATA_MIRROR` replacing their base URL; the sources are listed in docs/reference.md.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from gm import fetch, locate, provenance
from gm.errors import GmError, PresetError, UsageError

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

    @property
    def remote(self) -> str:
        return self.path or self.name


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
# Pretrained parts of the latent training presets that their checkpoints do not hold (the SDXL VAE
# and OpenAI's CLIP ViT-L/14 text tower, docs/reference.md "Downloads"); `name` is the file name
# [train].vae_checkpoint / clip_checkpoint use, `path` the file in the Hub repository.
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
    for item in (*FROZEN, *DATASETS, *AUX):  # without parsing every preset (which imports torch: seconds)
        if item.name == name:
            return item
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


def rembg_model_dir(item_name: str = "rembg-u2net") -> Path:
    """The folder holding rembg's model, verified, as `gm download rembg-u2net` put it; sets
    U2NET_HOME so that rembg loads it from there and never starts a download of its own (which
    waits on the network for a minute when offline). Without the file: GmError at once."""
    item = find_item(item_name)
    folder = destination(item)
    file = item.files[0]
    path = folder / file.name
    if not path.is_file():
        raise GmError(f"background removal needs rembg's {Path(file.name).stem} model ({path} is missing)",
                      f"run `gm download {item.name}` once, or pass an RGBA image with --no-remove-bg")
    algorithm, digest = expected_hash(file, path)
    if fetch.cached_digest(path, algorithm) != digest:  # not verified since it last changed: check now
        fetch.check_digest(path, algorithm, digest, str(path))
        fetch.record_verified(path, algorithm, digest)
    os.environ["U2NET_HOME"] = str(rembg_home())  # rembg reads it per session: <home>/models/<name>
    return folder


def destination(item: Item, base: str | Path | None = None) -> Path:
    """The folder an item's files go to (`base` is --dir); for checkpoints without --dir, the
    item's folder in the Hugging Face cache."""
    if item.kind == "checkpoint":
        if base:
            return Path(base).expanduser().absolute()
        return locate.hf_cache_dir() / ("models--" + item.files[0].repo.replace("/", "--"))
    if item.kind == "dataset":
        root = base or os.environ.get("GM_DATA") or Path.cwd() / ".data"
        return Path(root).expanduser() / item.name
    model = Path(item.files[0].name).stem  # rembg looks in <home>/models/<session name>/
    return (Path(base).expanduser() if base else rembg_home()) / "models" / model


def find_file(item: Item, file: RemoteFile, base: str | Path | None = None) -> Path | None:
    """Where a file of `item` is now: --dir, else (checkpoints) wherever gm.locate looks."""
    if item.kind != "checkpoint":
        path = destination(item, base) / file.name
        return path if path.is_file() else None
    if base and (destination(item, base) / file.name).is_file():
        return destination(item, base) / file.name
    return locate.find_model_file(file.name, file.repo, file.remote)


def installed_path(name: str) -> Path | None:
    """The file of a one-file download (a preset's checkpoint, sdxl-vae, clip-vit-large-patch14)
    wherever gm finds it, or None; what code that needs those weights should ask."""
    item = find_item(name)
    return find_file(item, item.files[0])


def url_of(file: RemoteFile) -> str:
    """The file's URL; GM_DATA_MIRROR replaces the base of every non-Hub download."""
    mirror = os.environ.get("GM_DATA_MIRROR", "").rstrip("/")
    if mirror:
        return f"{mirror}/{file.name}"
    return file.url + file.name if file.url.endswith("/") else file.url


@dataclass(frozen=True)
class Status:
    item: Item
    folder: Path  # where the files are (or would go)
    present: bool
    verified: bool | None  # None: no hash known, or not checked since the file last changed
    paths: tuple[Path, ...] = ()  # the files found (empty when not present)


def expected_hash(file: RemoteFile, path: Path) -> tuple[str, str]:
    """(algorithm, digest) to check `path` against: the published one, else one the Hub gave
    (a Hugging Face cache blob is named by its sha256; a --dir download remembers it)."""
    if file.sha256:
        return "sha256", file.sha256
    if file.md5:
        return "md5", file.md5
    blob = Path(os.path.realpath(path)).name
    if file.repo and _SHA256.match(blob):
        return "sha256", blob
    known = fetch.cache_entry(path)
    return ("sha256", str(known["expected"])) if known.get("expected") else ("", "")


def known_digest(path: Path, algorithm: str) -> str | None:
    """A digest of `path` computed earlier and still valid (same size and mtime), or None."""
    if algorithm == "sha256" and (digest := provenance.cached_sha256(path)):
        return digest
    return fetch.cached_digest(path, algorithm)


def status(item: Item, base: str | Path | None = None) -> Status:
    found = [find_file(item, f, base) for f in item.files]
    folder = found[0].parent if found[0] is not None else destination(item, base)
    present = all(p is not None for p in found)
    if item.extract:
        present = present or (folder / item.extract).is_dir()
    verified: bool | None = None
    paths = tuple(p for p in found if p is not None)
    if paths and len(paths) == len(found):
        checks = []
        for file, path in zip(item.files, paths):
            algorithm, digest = expected_hash(file, path)
            cached = known_digest(path, algorithm) if algorithm else None
            checks.append(None if cached is None else cached == digest.lower())
        verified = None if None in checks else all(checks)
    return Status(item, folder, present, verified, paths)


def verify(item: Item, base: str | Path | None, progress: Callable[[int], None] | None = None) -> list[str]:
    """Re-hash every present file of `item`; returns the names checked. Mismatch: CheckpointError."""
    checked = []
    for file in item.files:
        path = find_file(item, file, base)
        if path is None:
            continue
        algorithm, digest = expected_hash(file, path)
        if not algorithm:
            continue
        fetch.check_digest(path, algorithm, digest, str(path), progress)
        record(path, algorithm, digest)
        checked.append(file.name)
    return checked


def record(path: Path, algorithm: str, digest: str, expected: str = "") -> None:
    """Remember a verified digest: in gm's hash cache (sha256, shared with the Model hash) and,
    outside the Hugging Face cache, in the folder's own .gm-verified.json."""
    if algorithm == "sha256":
        provenance.record_sha256(path, digest)
    if not Path(path).resolve().is_relative_to(locate.hf_cache_dir().resolve()):
        fetch.record_verified(path, algorithm, digest, expected)
