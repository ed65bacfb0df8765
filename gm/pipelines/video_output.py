"""Writing generated clips: watermark every frame, then mp4 / gif / a folder of PNG frames, plus
the conditioning image beside it.

Mirrors the output step of `scripts/sampling/simple_video_sample.py` (REFERENCE §2.2 "Outputs",
§5.1, §6.4): frames in [0, 1] get the invisible watermark (dwtDct, 48 bits) and are truncated to
uint8; the clip is `NNNNNN.mp4` (H.264 yuv420p) with the input image as `NNNNNN.jpg`/`.png`.
Differences: the fps is a choice (the reference always writes 10 fps), the generation
parameters go into the file (mp4 `comment` tag, PNG text chunks), names are claimed atomically
and never overwritten, and the DeepFloyd safety filter is not applied (gm has no such model).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from gm.console import console
from gm.errors import InputError
from gm.io import watermark
from gm.io.files import ensure_dir, next_number, write_atomic
from gm.io.media import png_info, to_uint8, write_gif, write_mp4, write_png

VideoFormat = Literal["mp4", "gif", "frames"]
FORMATS: tuple[str, ...] = ("mp4", "gif", "frames")


@dataclass(frozen=True)
class OutputSpec:
    out_dir: Path
    format: VideoFormat = "mp4"
    fps: float = 10.0
    input_suffix: str = ".jpg"  # the conditioning image saved beside the clip, as the reference


def finish_frames(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [0, 1] -> watermarked uint8 (T, H, W, 3), truncated like the reference."""
    marked, embedded = watermark.embed(frames.float().clamp(0, 1))
    if not embedded:
        h, w = frames.shape[-2:]
        console.warn_once(f"frames of {w}x{h} are too small for the invisible watermark (needs 256x256 pixels); "
                     "written without it")
    return to_uint8(marked)


def _comment(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str, separators=(",", ":"))


def _write_frames_dir(final: Path, frames: np.ndarray, record: dict[str, Any]) -> Path:
    """A folder of 000.png ... built under a temporary name, then renamed (never over a name)."""
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.", suffix=".tmp", dir=final.parent))
    try:
        digits = max(3, len(str(len(frames) - 1)))
        for i, frame in enumerate(frames):
            write_png(tmp / f"{i:0{digits}d}.png", frame, png_info(_comment(record), {**record, "frame": i}))
        if final.exists():
            raise FileExistsError(final)
        os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def save_clip(frames: np.ndarray, input_image: Image.Image, spec: OutputSpec, record: dict[str, Any]) -> Path:
    """Write `NNNNNN.mp4|.gif|/` and `NNNNNN<input_suffix>` in spec.out_dir; returns the clip's path."""
    out = ensure_dir(spec.out_dir)
    if len(frames) == 0:
        raise InputError("no frames to write")
    comment = _comment(record)
    for _ in range(1000):
        stem = f"{next_number(out):06d}"
        tags = {"comment": comment, "title": f"gm {record.get('command', '')} {stem}".strip()}
        try:
            if spec.format == "frames":
                clip = _write_frames_dir(out / stem, frames, record)
            elif spec.format == "gif":
                clip = write_atomic(out / f"{stem}.gif", lambda p: write_gif(p, list(frames), spec.fps, comment))
            else:
                clip = write_atomic(out / f"{stem}.mp4", lambda p, t=tags: write_mp4(p, list(frames), spec.fps, t))
        except FileExistsError:
            continue  # another process took the number
        break
    else:
        raise InputError(f"could not find a free file name in {out}")
    still = np.asarray(input_image.convert("RGB"))
    if spec.input_suffix == ".png":
        write_atomic(out / f"{stem}.png", lambda p: write_png(p, still, png_info(_comment(record), record)))
    else:
        write_atomic(out / f"{stem}{spec.input_suffix}",
                     lambda p: Image.fromarray(still).save(p, format="JPEG", quality=95))
    return clip
