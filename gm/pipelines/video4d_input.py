"""Input video of `gm video4d`: reading and object-centred preprocessing (reference
`scripts/demo/sv4d_helpers.py` read_video / preprocess_video).

Differences from the reference, on purpose: the preprocessed frames are
used directly (no lossy mp4 round trip), and rows/columns are kept apart, so non-square inputs
work. Short inputs are an error, or with `pad` are ping-pong padded (frames, then reversed).
"""

from __future__ import annotations

import glob
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gm.errors import InputError
from gm.io.media import iter_video, open_image
from gm.pipelines.objects import Segmenter, composite_white, rembg_segment

FRAME_SUFFIXES = (".jpg", ".jpeg", ".png")
VIDEO_SUFFIXES = (".gif", ".mp4", ".mov", ".webm", ".mkv", ".avi")


def _frame_files(source: str) -> list[Path]:
    path = Path(source).expanduser()
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in FRAME_SUFFIXES)
        if not files:
            raise InputError(f"{path}: no frames ({', '.join(FRAME_SUFFIXES)}) in this folder")
        return files
    files = sorted(Path(p) for p in glob.glob(str(path)) if Path(p).suffix.lower() in FRAME_SUFFIXES)
    if not files:
        raise InputError(f"{source}: the pattern matches no .jpg/.jpeg/.png frames", "quote the pattern: 'frames/*.png'")
    return files


def read_frames(source: str, frames: int, pad: bool = False) -> list[Image.Image]:
    """The first `frames` frames of a gif/mp4, a folder of images or a glob pattern."""
    path = Path(source).expanduser()
    if any(ch in source for ch in "*?[") and not path.exists():
        images = [open_image(p) for p in _frame_files(source)[:frames]]
    elif path.is_dir():
        images = [open_image(p) for p in _frame_files(source)[:frames]]
    elif not path.is_file():
        raise InputError(f"{source}: no such file or folder", "give a .gif/.mp4, a folder of frames or a quoted pattern")
    elif path.suffix.lower() in VIDEO_SUFFIXES:
        images = []
        for frame in iter_video(path):
            images.append(frame)
            if len(images) == frames:
                break
    else:
        raise InputError(f"{path}: not a video ({path.suffix or 'no suffix'})",
                         "give a .gif/.mp4, a folder of .png/.jpg frames or a quoted pattern")
    if not images:
        raise InputError(f"{source}: no frames")
    if len(images) < frames:
        if not pad:
            raise InputError(f"{source}: {len(images)} frames, the model needs {frames}",
                             "pass --pad to ping-pong pad it, or a longer video")
        cycle = images + images[::-1]
        images = [cycle[i % len(cycle)] for i in range(frames)]
    return images


def _mask(arr: np.ndarray, has_alpha: bool) -> np.ndarray:
    """Object pixels: alpha > 0 (RGBA frames) or not near-white (channel mean <= 250)."""
    return arr[..., 3] > 0 if has_alpha else arr[..., :3].mean(axis=-1) <= 250


def preprocess(images: list[Image.Image], size: int, frame_ratio: float, remove_bg: bool = False,
               segment: Segmenter | None = None) -> list[Image.Image]:
    """Centre the object of every frame on one square crop (union bounding box over the frames),
    shrink it to `frame_ratio` of the frame, resize to size x size and composite on white."""
    if remove_bg:  # at full size: unlike SV3D's path, the reference's 768 thumbnail is commented out here
        seg = segment or rembg_segment
        images = [im if im.mode == "RGBA" else seg(im.convert("RGBA")) for im in images]
    arrays = [np.asarray(im.convert("RGBA")) for im in images]  # (H, W, 4)
    heights = {a.shape[:2] for a in arrays}
    if len(heights) != 1:
        raise InputError("the input frames have different sizes", "resize them to one size first")
    h, w = arrays[0].shape[:2]
    union = np.zeros((h, w), dtype=bool)
    for im, arr in zip(images, arrays):
        union |= _mask(arr, im.mode in ("RGBA", "LA", "PA"))
    rows, cols = np.flatnonzero(union.any(axis=1)), np.flatnonzero(union.any(axis=0))
    y0, y1, x0, x1 = (rows[0], rows[-1] + 1, cols[0], cols[-1] + 1) if rows.size else (0, h, 0, w)
    cy, cx = h / 2, w / 2  # the object is assumed centred in the image
    half = int(np.ceil(max(cy - y0, y1 - cy, cx - x0, x1 - cx)))
    side = int(2 * half / frame_ratio)
    out = []
    for arr in arrays:
        canvas = np.zeros((side, side, 4), dtype=np.uint8)  # transparent
        top, left = int(round(cy)) - half, int(round(cx)) - half  # crop square in image coordinates
        sy0, sx0 = max(top, 0), max(left, 0)
        sy1, sx1 = min(top + 2 * half, h), min(left + 2 * half, w)
        off = (side - 2 * half) // 2
        canvas[off + sy0 - top:off + sy1 - top, off + sx0 - left:off + sx1 - left] = arr[sy0:sy1, sx0:sx1]
        out.append(composite_white(Image.fromarray(canvas, "RGBA").resize((size, size), Image.LANCZOS)))
    return out


def to_tensor(images: list[Image.Image]) -> torch.Tensor:
    """RGB images -> (N, 3, H, W) float32 in [-1, 1]."""
    arr = np.stack([np.asarray(im.convert("RGB"), dtype=np.float32) / 255.0 for im in images])  # (N, H, W, 3)
    return torch.from_numpy(arr).permute(0, 3, 1, 2) * 2.0 - 1.0
