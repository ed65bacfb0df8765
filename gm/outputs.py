"""Everything gm writes: numbered files claimed atomically (never overwritten, never half-written),
the invisible watermark, and how each result was made.

Images are PNGs with an AUTOMATIC1111-style `parameters` chunk (read by A1111, Forge, ComfyUI and
civitai) and a `gm` JSON chunk with the full effective preset; clips are mp4 (H.264 yuv420p), gif or
a folder of PNG frames with the same JSON in the container's `comment` tag, and the conditioning
image beside them. The reference watermarks what its demos save (dwtDct, 48-bit 0xB3EC907BB19E,
float input, uint8 by truncation); gm marks every image and frame it writes. Before anything is
written, results are checked to be finite (`check_finite`): a NaN image is an error, not a file.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from PIL import Image

from gm.console import console
from gm.diffusion.samplers import a1111_name
from gm.errors import GmError, InputError
from gm.io import watermark
from gm.io.files import ensure_dir, next_number, write_atomic, write_atomic_dir, write_numbered
from gm.io.media import png_info, to_uint8, write_gif, write_mp4, write_png
from gm.presets import Preset


def json_safe(value: Any) -> Any:
    """inf/nan as strings, so a record is strict JSON (s_tmax is inf in the video presets)."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return str(value)
    return value


def run_record(command: str, preset: Preset, seed: int, **fields: Any) -> dict[str, Any]:
    """The one metadata schema of every file gm writes (PNG `gm` chunk, mp4/gif comment): the command,
    its seed, gm's version, the whole effective preset, then the command's own fields."""
    return {"command": command, "seed": seed, "gm_version": gm_version(), "preset": json_safe(preset.to_dict()),
            **json_safe(fields)}


def check_finite(values: torch.Tensor, phase: str) -> torch.Tensor:
    """`values` unchanged, or a GmError naming the phase when any is NaN or infinite (nothing written)."""
    if not bool(torch.isfinite(values).all()):
        raise GmError(f"the {phase} produced NaN or infinite values, so nothing was written",
                      "the checkpoint may be damaged (try `gm download --verify`), or a setting is extreme "
                      "(e.g. guider.scale, --cfg, the dtype: try --dtype fp32)")
    return values


def finish_pixels(images: torch.Tensor, what: str = "images") -> tuple[np.ndarray, bool]:
    """(N, 3, H, W) in [0, 1] -> (watermarked uint8 (N, H, W, 3) truncated like the reference,
    whether the mark fitted)."""
    check_finite(images, "decode")
    marked, embedded = watermark.embed(images.float().clamp(0, 1))
    if not embedded:
        h, w = images.shape[-2:]
        console.warn_once(f"{what} of {w}x{h} are too small for the invisible watermark (needs 256x256 pixels); "
                          "written without it")
    return to_uint8(marked), embedded

@dataclass(frozen=True)
class ImageResult:
    """One finished image: its watermarked pixels (H, W, 3) uint8, seed, prompt, how it was made,
    and where it was written (None when not written: the Python API without save)."""

    path: Path | None
    seed: int
    prompt: str
    pixels: np.ndarray | None = None
    record: dict[str, Any] | None = None

    def image(self) -> Image.Image:
        assert self.pixels is not None
        return Image.fromarray(self.pixels)


def model_hash(preset: Preset) -> str:
    """A1111's "Model hash": the first 10 hex digits of the file's sha256 ("" when unpublished)."""
    return preset.checkpoint.sha256[:10] if preset.checkpoint is not None else ""


def parameters_text(prompt: str, negative: str, fields: dict[str, Any]) -> str:
    """`prompt\\nNegative prompt: ...\\nSteps: 30, Sampler: ..., ...` (negative line only if set)."""
    lines = [prompt]
    if negative:
        lines.append(f"Negative prompt: {negative}")
    lines.append(", ".join(f"{k}: {v}" for k, v in fields.items() if v not in (None, "")))
    return "\n".join(lines)


def a1111_fields(preset: Preset, seed: int, width: int, height: int, steps: int,
                 cfg: float | None, source: dict[str, str] | None = None) -> dict[str, Any]:
    """The common infotext fields, in A1111's order; callers append img2img/refiner fields.
    `source` (gm.provenance.file_record of the file loaded) names the model by that file's stem and
    hash, as A1111 does; without it, the preset's name and published hash."""
    return {
        "Steps": steps,
        "Sampler": a1111_name(preset.sampler.name, preset.sampler.scheduler),
        "CFG scale": cfg,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model": Path(source["name"]).stem if source else preset.name,
        "Model hash": source["sha256_10"] if source else model_hash(preset),
    }


def gm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gm")
    except PackageNotFoundError:  # running from a source tree without install
        return "unknown"


def image_results(images: torch.Tensor, out_dir: Path | None, prompt: str, fields: dict[str, Any],
                  record: dict[str, Any], first_seed: int) -> Iterator[ImageResult]:
    """Watermark decoded (N, 3, H, W) [0, 1] images, and (with `out_dir`) write each as the next
    numbered PNG with its metadata; image k has seed first_seed + k."""
    check_finite(images, "decode")  # every image, before the first file is written
    for k in range(images.shape[0]):
        (image,), marked = finish_pixels(images[k:k + 1])
        seed = first_seed + k
        text = parameters_text(prompt, str(record.get("negative_prompt", "")), {**fields, "Seed": seed})
        meta = {**record, "seed": seed, "watermark": marked, "parameters": text}
        path = None
        if out_dir is not None:
            info = png_info(text, meta)
            path = write_numbered(out_dir, ".png", lambda tmp, px=image, info=info: write_png(tmp, px, info))
        yield ImageResult(path, seed, prompt, image, meta)

VideoFormat = Literal["mp4", "gif", "frames"]
FORMATS: tuple[str, ...] = ("mp4", "gif", "frames")


@dataclass(frozen=True)
class OutputSpec:
    out_dir: Path | None  # None: nothing is written (the Python API without save)
    format: VideoFormat = "mp4"
    fps: float = 10.0
    input_suffix: str = ".jpg"  # the conditioning image saved beside the clip, as the reference


def finish_frames(frames: torch.Tensor) -> np.ndarray:
    """(T, 3, H, W) in [0, 1] -> watermarked uint8 (T, H, W, 3)."""
    return finish_pixels(frames, "frames")[0]


def _comment(record: dict[str, Any]) -> str:
    return json.dumps(record, sort_keys=True, default=str, separators=(",", ":"))


def _write_frames_dir(final: Path, frames: np.ndarray, record: dict[str, Any]) -> Path:
    """A folder of 000.png ... built under a temporary name, then renamed (never over a name)."""
    digits = max(3, len(str(len(frames) - 1)))

    def fill(tmp: Path) -> None:
        for i, frame in enumerate(frames):
            write_png(tmp / f"{i:0{digits}d}.png", frame, png_info(_comment(record), {**record, "frame": i}))

    return write_atomic_dir(final, fill)


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
