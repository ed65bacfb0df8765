"""Readers for the standard dataset files: MNIST IDX, CIFAR-10 python batches, image folders.

Replaces the reference's torchvision/sdata loaders (`sgm/data/mnist.py`, `cifar10.py`), which
download on first use; here `gm download mnist|cifar10` fetches the files and these functions only
read them. All return uint8 image arrays (N, C, H, W) and int64 labels.

CIFAR-10's official files are Python pickles. They are read with a restricted Unpickler that
resolves only the numpy names an ndarray needs (no other global can be constructed), so a
tampered batch file cannot run code.
"""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
from pathlib import Path

import numpy as np

from gm.errors import InputError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")


def data_root(root: str, name: str) -> Path:
    """`root` if given, else $GM_DATA/<name>, else ./.data/<name> (where `gm download` saves)."""
    if root:
        return Path(root).expanduser()
    base = os.environ.get("GM_DATA", "")
    return (Path(base).expanduser() if base else Path(".data")) / name


def _open_maybe_gz(path: Path) -> bytes:
    try:
        raw = path.read_bytes()
    except OSError as err:
        raise InputError(f"{path}: cannot read: {err.strerror}") from None
    if raw[:2] == b"\x1f\x8b":
        try:
            return gzip.decompress(raw)
        except (OSError, EOFError) as err:
            raise InputError(f"{path}: corrupt gzip data ({err})", "run gm download mnist again") from None
    return raw


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (magic 0x0000 | type 0x08 = ubyte | ndim, then ndim big-endian int32 sizes)."""
    raw = _open_maybe_gz(path)
    if len(raw) < 4 or raw[0:2] != b"\x00\x00" or raw[2] != 0x08 or not 1 <= raw[3] <= 4:
        raise InputError(f"{path}: not an IDX ubyte file (bad header {raw[:4].hex()})",
                         "run gm download mnist again")
    ndim = raw[3]
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise InputError(f"{path}: truncated IDX header", "run gm download mnist again")
    dims = struct.unpack(f">{ndim}I", raw[4:header])
    count = int(np.prod(dims))
    if len(raw) - header != count:
        raise InputError(f"{path}: IDX header says {dims} ({count} bytes) but the file holds {len(raw) - header}",
                         "run gm download mnist again")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(dims)


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def load_mnist(root: str, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    """MNIST from IDX files: images (N, 1, 28, 28) uint8, labels (N,) int64."""
    folder = data_root(root, "mnist")
    split = "train" if train else "t10k"
    images_path = _find(folder, f"{split}-images-idx3-ubyte")
    labels_path = _find(folder, f"{split}-labels-idx1-ubyte")
    if images_path is None or labels_path is None:
        raise InputError(f"MNIST not found in {folder} (need {split}-images-idx3-ubyte[.gz])",
                         "run: gm download mnist")
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise InputError(f"{folder}: MNIST images {images.shape} and labels {labels.shape} do not match")
    return images[:, None].copy(), labels.astype(np.int64)


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Resolves only what a pickled ndarray needs; anything else is refused."""

    ALLOWED = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
        ("numpy.core.multiarray", "scalar"),
        ("numpy._core.multiarray", "scalar"),
        ("_codecs", "encode"),
    }

    def find_class(self, module: str, name: str):  # noqa: ANN201 - pickle API
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def read_cifar_batch(path: Path) -> tuple[np.ndarray, np.ndarray]:
    """One `data_batch_N` / `test_batch` file: images (N, 3, 32, 32) uint8, labels (N,) int64."""
    try:
        with path.open("rb") as f:
            batch = _NumpyOnlyUnpickler(io.BufferedReader(f), encoding="bytes").load()
    except (pickle.UnpicklingError, EOFError, ValueError, TypeError) as err:
        raise InputError(f"{path}: not a CIFAR-10 batch ({err})", "run gm download cifar10 again") from None
    if not isinstance(batch, dict):
        raise InputError(f"{path}: not a CIFAR-10 batch (no dict)", "run gm download cifar10 again")
    batch = {(k.decode() if isinstance(k, bytes) else k): v for k, v in batch.items()}
    data, labels = batch.get("data"), batch.get("labels")
    if not isinstance(data, np.ndarray) or labels is None or data.ndim != 2 or data.shape[1] != 3072:
        raise InputError(f"{path}: not a CIFAR-10 batch (expected data (N, 3072) and labels)")
    return data.reshape(-1, 3, 32, 32).astype(np.uint8), np.asarray(labels, dtype=np.int64)


def load_cifar10(root: str, train: bool = True) -> tuple[np.ndarray, np.ndarray]:
    folder = data_root(root, "cifar10") / "cifar-10-batches-py"
    names = [f"data_batch_{i}" for i in range(1, 6)] if train else ["test_batch"]
    missing = [n for n in names if not (folder / n).is_file()]
    if missing:
        raise InputError(f"CIFAR-10 not found in {folder} (missing {missing[0]})", "run: gm download cifar10")
    parts = [read_cifar_batch(folder / n) for n in names]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def scan_folder(root: str) -> tuple[list[Path], np.ndarray, list[str]]:
    """Images under `root/<class>/...` (sorted); class ids in sorted folder order. Loose images in
    `root` itself (no subfolders) form a single class 0."""
    folder = Path(root).expanduser()
    if not folder.is_dir():
        raise InputError(f"image folder not found: {folder}", "set --set data.root=PATH")
    classes = sorted(p.name for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))
    paths: list[Path] = []
    labels: list[int] = []
    groups = [(i, folder / c) for i, c in enumerate(classes)] or [(0, folder)]
    for label, sub in groups:
        found = sorted(p for p in sub.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
        paths += found
        labels += [label] * len(found)
    if not paths:
        raise InputError(f"{folder}: no images ({', '.join(IMAGE_SUFFIXES)}) found")
    return paths, np.asarray(labels, dtype=np.int64), classes or [folder.name]
