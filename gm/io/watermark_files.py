"""Watermark detection over files: images, gif/mp4 frames, folders and `-` (paths on stdin).

Mirrors `scripts/demo/detect.py` (docs/reference.md §5.2), which reads a list of image files and
prints a verdict per file, and extends it to videos (every frame, or K evenly spaced ones,
summarised by the median) and to folders. Nothing here prints: `gm detect-watermark` turns
the reports into lines.
"""

from __future__ import annotations

import statistics
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

import numpy as np

from gm.errors import InputError
from gm.io import watermark as wm

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")
VIDEO_SUFFIXES = (".mp4", ".gif", ".mov", ".webm", ".mkv")


@dataclass(frozen=True)
class Problem:
    """An input that could not be read, and why."""

    path: str
    reason: str


@dataclass(frozen=True)
class FileReport:
    """The result for one file. Videos: `detection` is the median frame's reading."""

    path: Path
    kind: str  # "image" | "video"
    bits: int | None  # matching bits (None: too small to carry the watermark)
    verdict: str  # a wm.VERDICT_TEXT key, or "too small"
    bits_reference: int | None = None  # images: the reference detector's own reading
    bits_float: int | None = None  # images: the embedder-domain reading
    frames: int = 0  # videos: frames checked
    min_bits: int | None = None  # videos
    median_bits: float | None = None  # videos
    size: tuple[int, int] = (0, 0)  # (width, height)

    def watermarked(self, min_bits: int) -> bool:
        return self.bits is not None and self.bits >= min_bits

    def text(self) -> str:
        """`very likely watermarked (47/48 bits)`, or the video summary, or the size problem."""
        width, height = self.size
        if self.bits is None:
            return f"too small for the watermark ({width}x{height}; it needs at least 256*256 pixels)"
        head = wm.VERDICT_TEXT[self.verdict]
        if self.kind == "image":
            return f"{head} ({self.bits}/{wm.NUM_BITS} bits)"
        return (f"{head} (median {self.median_bits:g}/{wm.NUM_BITS} bits, min {self.min_bits}, "
                f"{self.frames} frames)")

    def record(self, min_bits: int) -> dict[str, object]:
        out: dict[str, object] = {
            "type": self.kind, "verdict": self.verdict, "bits": self.bits, "of": wm.NUM_BITS,
            "watermarked": self.watermarked(min_bits), "width": self.size[0], "height": self.size[1],
        }
        if self.kind == "image":
            out.update(bits_reference=self.bits_reference, bits_float=self.bits_float)
        else:
            out.update(frames=self.frames, min_bits=self.min_bits, median_bits=self.median_bits)
        return out


def gather(items: list[str], recursive: bool, stdin: TextIO | None = None) -> tuple[list[Path], list[Problem]]:
    """Files, folders (their images and videos; all sub-folders with `recursive`) and `-`.

    Missing paths and folders with nothing to check come back as problems, not exceptions,
    so the other inputs are still checked.
    """
    paths: list[Path] = []
    problems: list[Problem] = []
    suffixes = IMAGE_SUFFIXES + VIDEO_SUFFIXES
    for item in items:
        if item == "-":
            lines = (stdin or sys.stdin).read().splitlines()
            sub_paths, sub_problems = gather([line.strip() for line in lines if line.strip()], recursive)
            paths += sub_paths
            problems += sub_problems
            continue
        path = Path(item).expanduser()
        if path.is_dir():
            walk = path.rglob("*") if recursive else path.iterdir()
            found = sorted(p for p in walk if p.is_file() and p.suffix.lower() in suffixes
                           and not p.name.startswith("."))
            if not found:
                hint = "" if recursive else " (use -r to look in sub-folders)"
                problems.append(Problem(str(path), f"no images or videos in this folder{hint}"))
            paths += found
        elif path.is_file():
            paths.append(path)
        elif path.exists():
            problems.append(Problem(str(path), "not a regular file"))
        else:
            problems.append(Problem(str(path), "no such file or folder"))
    return paths, problems


def sample_indices(total: int, count: int | None) -> list[int]:
    """`count` evenly spaced frame indices out of `total` (all of them when count is None)."""
    if count is None or count >= total:
        return list(range(total))
    return sorted({int(i) for i in np.linspace(0, total - 1, count).round()})


def _frame_count(path: Path) -> int:
    if path.suffix.lower() == ".gif":
        from PIL import Image

        with Image.open(path) as img:
            return int(getattr(img, "n_frames", 1))
    import imageio_ffmpeg

    return int(imageio_ffmpeg.count_frames_and_secs(str(path))[0])


def iter_frames(path: Path, count: int | None) -> Iterator[np.ndarray]:
    """(H, W, 3) uint8 RGB frames of a gif or video: all, or `count` evenly spaced."""
    from gm.io.media import iter_video

    wanted = None if count is None else set(sample_indices(_frame_count(path), count))
    for index, frame in enumerate(iter_video(path)):
        if wanted is None or index in wanted:
            yield wm.pil_to_rgb8(frame)


def check_image(path: Path) -> FileReport:
    from gm.io.media import open_image

    rgb = wm.pil_to_rgb8(open_image(path))
    height, width = rgb.shape[:2]
    if wm.too_small(height, width):
        return FileReport(path, "image", None, "too small", size=(width, height))
    found = wm.detect(rgb)
    return FileReport(path, "image", found.bits, found.verdict, found.bits_reference, found.bits_float,
                      size=(width, height))


def check_video(path: Path, count: int | None) -> FileReport:
    bits: list[int] = []
    size = (0, 0)
    for rgb in iter_frames(path, count):
        height, width = rgb.shape[:2]
        size = (width, height)
        if wm.too_small(height, width):
            return FileReport(path, "video", None, "too small", size=size)
        bits.append(wm.detect(rgb).bits)
    if not bits:
        raise InputError(f"{path}: no frames")
    median = float(statistics.median(bits))
    return FileReport(path, "video", int(median), wm.verdict(int(median)), frames=len(bits),
                      min_bits=min(bits), median_bits=median, size=size)


def check_file(path: Path, frames: int | None = None) -> FileReport | Problem:
    """Detect the watermark in one file; an unreadable file is a Problem with the reason."""
    from PIL import Image

    try:
        if path.suffix.lower() in VIDEO_SUFFIXES:
            return check_video(path, frames)
        return check_image(path)
    except InputError as err:
        reason = err.message.removeprefix(f"{path}: ")
        return Problem(str(path), reason)
    except Image.DecompressionBombError as err:  # the limit and how to raise it, as everywhere
        from gm.io.media import bomb_error

        bomb = bomb_error(err, path)
        return Problem(str(path), f"{bomb.message.removeprefix(f'{path}: ')} ({bomb.hint})")
    except (OSError, RuntimeError, ValueError) as err:
        return Problem(str(path), f"not readable ({type(err).__name__}: {err})")
