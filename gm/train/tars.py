"""Webdataset tar shards without the webdataset package (the reference's sdata pipeline).

A shard is a plain tar whose members share a key per sample: `000123.jpg`, `000123.json`,
`000123.txt`, `000123.cls` (key = the path up to the first dot of the file name). Per epoch the
shard order and a `shuffle_buffer`-deep sample shuffle are drawn from (seed, epoch), so the
stream is reproducible; resuming at batch b skips b global batches of raw bytes without decoding
them. Images are resized (short side, bicubic) and centre-cropped like sgm's postprocessors and
yield `original_size_as_tuple` and `crop_coords_top_left`.
"""

from __future__ import annotations

import glob
import io
import json
import tarfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

from gm.errors import InputError
from gm.train.data import Batch, prepare_image, to_unit_range

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")


def expand_urls(urls: tuple[str, ...]) -> list[Path]:
    paths: list[Path] = []
    for url in urls:
        found = sorted(glob.glob(str(Path(url).expanduser()))) if any(c in url for c in "*?[") else [url]
        paths += [Path(p) for p in found]
    missing = [p for p in paths if not p.is_file()]
    if missing or not paths:
        name = missing[0] if missing else ", ".join(urls)
        raise InputError(f"webdataset shard not found: {name}", "check [data].urls")
    return paths


def read_shard(path: Path) -> Iterator[dict[str, bytes]]:
    """Samples of one tar in file order: {extension: bytes} plus "__key__"."""
    current: dict[str, bytes] = {}
    key = None
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                name = member.name.rsplit("/", 1)[-1]
                prefix = member.name[: len(member.name) - len(name)]
                stem, dot, ext = name.partition(".")
                if not dot:
                    continue
                sample_key = prefix + stem
                if sample_key != key and current:
                    yield current
                    current = {}
                key = sample_key
                current["__key__"] = sample_key.encode()
                f = tar.extractfile(member)
                current[ext.lower()] = f.read() if f is not None else b""
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise InputError(f"{path}: not a readable tar shard ({err or type(err).__name__})",
                         "rebuild or remove the shard") from None
    if current:
        yield current


def count_samples(path: Path) -> int:
    """Samples in one shard, reading only the member headers (a truncated or corrupt tar fails)."""
    keys = 0
    last = None
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if not member.isfile() or "." not in name:
                    continue
                key = member.name[: len(member.name) - len(name)] + name.partition(".")[0]
                keys, last = keys + (key != last), key
    except (tarfile.TarError, EOFError, OSError, zlib.error) as err:
        raise InputError(f"{path}: not a readable tar shard ({err or type(err).__name__})",
                         "rebuild or remove the shard") from None
    return keys


def decode(sample: dict[str, bytes], size: int, channels: int, caption_key: str) -> Batch:
    ext = next((e for e in IMAGE_EXTS if e in sample), None)
    key = sample["__key__"].decode()
    if ext is None:
        raise InputError(f"webdataset sample {key}: no image ({', '.join(IMAGE_EXTS)})")
    try:
        with Image.open(io.BytesIO(sample[ext])) as img:
            arr, original, crop = prepare_image(img, size, channels)
    except (UnidentifiedImageError, OSError, Image.DecompressionBombError) as err:
        raise InputError(f"webdataset sample {key}: cannot decode its {ext} ({err})") from None
    meta = json.loads(sample["json"]) if "json" in sample else {}
    item: Batch = {
        "jpg": to_unit_range(torch.from_numpy(arr.copy())),
        "original_size_as_tuple": torch.tensor(original, dtype=torch.float32),
        "crop_coords_top_left": torch.tensor(crop, dtype=torch.float32),
    }
    if "cls" in sample:
        item["cls"] = int(sample["cls"].decode().strip())
    elif isinstance(meta, dict) and "cls" in meta:
        item["cls"] = int(meta["cls"])
    if caption_key in sample:
        item["txt"] = sample[caption_key].decode("utf-8", "replace").strip()
    elif isinstance(meta, dict) and "caption" in meta:
        item["txt"] = str(meta["caption"])
    return item


def collate(items: list[Batch]) -> Batch:
    out: Batch = {}
    for key in items[0]:
        values = [it[key] for it in items]
        if isinstance(values[0], torch.Tensor):
            out[key] = torch.stack(values)
        elif isinstance(values[0], int):
            out[key] = torch.tensor(values, dtype=torch.int64)
        else:
            out[key] = values
    return out


@dataclass
class TarBatches:
    """Global batches streamed from tar shards, sliced per rank."""

    shards: list[Path]
    batch_size: int
    seed: int
    size: int
    channels: int
    caption_key: str = "txt"
    shuffle_buffer: int = 1000
    rank: int = 0
    world: int = 1

    batches_per_epoch: int | None = None  # known after check()

    def check(self) -> None:
        """Before training starts: every shard readable and non-empty, at least one global batch in
        all of them, and the first sample decodable. Sets batches_per_epoch."""
        counts = [count_samples(p) for p in self.shards]
        empty = [p for p, n in zip(self.shards, counts) if n == 0]
        if empty:
            raise InputError(f"{empty[0]}: empty tar shard (no samples)", "rebuild or remove the shard")
        total = sum(counts)
        if total < self.batch_size:
            raise InputError(f"data: {total} samples in {len(self.shards)} shard(s) are fewer than one batch "
                             f"of {self.batch_size}", "add shards or lower --batch-size")
        self.batches_per_epoch = total // self.batch_size
        decode(next(read_shard(self.shards[0])), self.size, self.channels, self.caption_key)

    def samples(self, epoch: int) -> Iterator[dict[str, bytes]]:
        rng = np.random.default_rng((self.seed, epoch))
        buffer: list[dict[str, bytes]] = []
        for i in rng.permutation(len(self.shards)):
            for sample in read_shard(self.shards[i]):
                if len(buffer) < self.shuffle_buffer:
                    buffer.append(sample)
                    continue
                j = int(rng.integers(len(buffer)))
                buffer[j], sample = sample, buffer[j]
                yield sample
        rng.shuffle(buffer)
        yield from buffer

    def iterate(self, epoch: int, start: int) -> Iterator[Batch]:
        per_rank = self.batch_size // self.world
        pending: list[dict[str, bytes]] = []
        b = 0
        for sample in self.samples(epoch):
            pending.append(sample)
            if len(pending) < self.batch_size:
                continue
            if b >= start:
                mine = pending[self.rank * per_rank:(self.rank + 1) * per_rank]
                yield collate([decode(s, self.size, self.channels, self.caption_key) for s in mine])
            pending = []
            b += 1
