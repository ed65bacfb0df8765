"""Training data: the dataset of a preset's `[data]` table and a resumable batch stream.

Mirrors the reference's data modules (`sgm/data/mnist.py`, `cifar10.py`, `dataset.py`): items are
dicts with `jpg` (C, H, W) in [-1, 1] plus conditioning keys (`cls`, `txt`,
`original_size_as_tuple`, `crop_coords_top_left`).

Order is a pure function of (seed, epoch, batch index): epoch e uses the permutation drawn from
seed + e, and batch b of it is global examples [b*B, (b+1)*B). Each DDP rank takes its
contiguous slice of every global batch, so N ranks see exactly the batch one process would see,
and a resumed run continues from (epoch, batch) with no replay. In-memory sets (MNIST, CIFAR-10,
the synthetic digits) are indexed directly (faster than a DataLoader); image folders decode in
DataLoader workers; webdataset tars stream (see gm.train.tars).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

from gm.errors import InputError
from gm.io.media import bomb_error
from gm.train import formats
from gm.train.config import DataConfig
from gm.train.digits import make_digits

Batch = dict[str, Any]


def to_unit_range(images: torch.Tensor) -> torch.Tensor:
    """uint8 (B, C, H, W) -> float32 in [-1, 1] (the reference's Rescaler)."""
    return images.float().div_(127.5).sub_(1.0)


def prepare_image(img: Image.Image, size: int, channels: int) -> tuple[np.ndarray, tuple[int, int], tuple[int, int]]:
    """Resize the short side to `size` (bicubic) and centre-crop a square (sdata
    AddOriginalImageSizeAsTupleAndCropToSquare). Returns (C, H, W) uint8, original (h, w), crop (top, left)."""
    img = img.convert("L" if channels == 1 else "RGB")
    w, h = img.size
    original = (h, w)
    if size:
        s = size / min(w, h)
        nw, nh = max(size, round(w * s)), max(size, round(h * s))
        img = img.resize((nw, nh), Image.Resampling.BICUBIC)
        top, left = (nh - size) // 2, (nw - size) // 2
        img = img.crop((left, top, left + size, top + size))
    else:
        top = left = 0
    arr = np.asarray(img, dtype=np.uint8)
    arr = arr[None] if arr.ndim == 2 else arr.transpose(2, 0, 1)  # (C, H, W)
    return arr, original, (top, left)


@dataclass
class ArrayDataset:
    """Images held in memory as uint8 (N, C, H, W) with int64 labels."""

    images: torch.Tensor
    labels: torch.Tensor
    num_classes: int = 10

    def __len__(self) -> int:
        return len(self.images)

    def get(self, idx: torch.Tensor) -> Batch:
        return {"jpg": to_unit_range(self.images[idx]), "cls": self.labels[idx]}


@dataclass
class FolderDataset(torch.utils.data.Dataset):
    """Image files under class subfolders, decoded on demand (in DataLoader workers)."""

    paths: list
    labels: np.ndarray
    size: int
    channels: int
    classes: list = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.paths)

    def check(self) -> None:
        """Open every file's header (no decoding): a file that is not an image, unreadable or over
        the pixel limit is an InputError naming it before training starts."""
        for path in self.paths:
            try:
                with Image.open(path) as img:
                    img.size  # noqa: B018 - the header is parsed by open
            except Exception as err:  # noqa: BLE001 - any failure names the file
                raise InputError(unreadable(path, err), "remove or replace the file") from None

    def __getitem__(self, i: int) -> Batch:
        try:
            with Image.open(self.paths[i]) as img:
                arr, original, crop = prepare_image(img, self.size, self.channels)
        except Exception as err:  # noqa: BLE001 - in a worker: the main process raises it, named
            return {ERROR: unreadable(self.paths[i], err)}
        return {
            "jpg": to_unit_range(torch.from_numpy(arr.copy())),
            "cls": int(self.labels[i]),
            "original_size_as_tuple": torch.tensor(original, dtype=torch.float32),
            "crop_coords_top_left": torch.tensor(crop, dtype=torch.float32),
        }


ERROR = "__error__"


def unreadable(path: object, err: BaseException) -> str:
    """`<file>: unreadable image (<why>)`: one line, whatever Pillow said."""
    if isinstance(err, Image.DecompressionBombError):
        return bomb_error(err, path).message
    detail = str(err).splitlines()[0] if str(err) else type(err).__name__
    return f"{path}: unreadable image ({detail})"


def collate(items: list[Batch]) -> Batch:
    """default_collate, except that a batch with an unreadable item becomes {ERROR: message}
    (an exception raised in a DataLoader worker would arrive as a multi-line traceback)."""
    bad = next((item[ERROR] for item in items if ERROR in item), None)
    return {ERROR: bad} if bad is not None else torch.utils.data.default_collate(items)


def _array(images: np.ndarray, labels: np.ndarray, cfg: DataConfig) -> ArrayDataset:
    t = torch.from_numpy(np.ascontiguousarray(images))
    if cfg.image_size and cfg.image_size != t.shape[-1]:
        t = torch.nn.functional.interpolate(t.float(), size=cfg.image_size, mode="bilinear",
                                            antialias=True, align_corners=False).round().clamp(0, 255).to(torch.uint8)
    return ArrayDataset(t, torch.from_numpy(labels), int(labels.max()) + 1 if len(labels) else 0)


def open_dataset(cfg: DataConfig, seed: int) -> ArrayDataset | FolderDataset:
    """The map-style dataset of `cfg` (webdataset tars are streamed instead: gm.train.tars)."""
    if cfg.kind == "mnist":
        return _array(*formats.load_mnist(cfg.root), cfg)
    if cfg.kind == "cifar10":
        return _array(*formats.load_cifar10(cfg.root), cfg)
    if cfg.kind == "digits":
        images, labels = make_digits(cfg.num_examples, cfg.image_size or 28, seed)
        return ArrayDataset(torch.from_numpy(images), torch.from_numpy(labels), 10)
    if cfg.kind == "folder":
        paths, labels, classes = formats.scan_folder(cfg.root)
        return FolderDataset(paths, labels, cfg.image_size, cfg.channels or 3, classes)
    raise ValueError(f"open_dataset: {cfg.kind} is streamed, not map-style")


def epoch_order(n: int, seed: int, epoch: int) -> torch.Tensor:
    """The permutation of epoch `epoch` (a pure function, so resuming needs only the epoch)."""
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed * 1_000_003 + epoch))


@dataclass
class MapBatches:
    """Global batches of a map-style dataset, sliced per rank, from (epoch, batch index)."""

    dataset: ArrayDataset | FolderDataset
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1
    num_workers: int = 0
    pin_memory: bool = False

    @property
    def batches_per_epoch(self) -> int:
        return len(self.dataset) // self.batch_size

    def _local(self, order: torch.Tensor, b: int) -> torch.Tensor:
        per_rank = self.batch_size // self.world
        start = b * self.batch_size + self.rank * per_rank
        return order[start:start + per_rank]

    def iterate(self, epoch: int, start: int) -> Iterator[Batch]:
        """Batches start, start+1, ... of `epoch` (this rank's part of each)."""
        order = epoch_order(len(self.dataset), self.seed, epoch)
        if isinstance(self.dataset, ArrayDataset):
            for b in range(start, self.batches_per_epoch):
                yield self.dataset.get(self._local(order, b))
            return
        sampler = [self._local(order, b).tolist() for b in range(start, self.batches_per_epoch)]
        loader = torch.utils.data.DataLoader(
            self.dataset, batch_sampler=sampler, num_workers=self.num_workers,
            pin_memory=self.pin_memory, persistent_workers=False, collate_fn=collate,
        )
        for batch in loader:
            if ERROR in batch:
                raise InputError(batch[ERROR], "remove or replace the file, then --resume the run")
            yield batch
