"""Saving generated images: invisible watermark, A1111 `parameters` text, `gm` JSON record, numbered PNG.

The reference watermarks what its demos save (REFERENCE §5.1: dwtDct, 48-bit 0xB3EC907BB19E, float
input, uint8 by truncation) and records nothing. gm watermarks every PNG it writes and records how
it was made twice: an AUTOMATIC1111-style `parameters` chunk (read by A1111, Forge, ComfyUI and
civitai) and a `gm` JSON chunk with the full effective preset, so a result can be reproduced.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gm.console import console
from gm.io import watermark
from gm.io.files import write_numbered
from gm.io.media import png_info, to_uint8, write_png
from gm.models.build import Engine
from gm.pipelines.common import Runtime, decode
from gm.presets import Preset

# gm sampler names -> the labels A1111 writes in its infotext.
A1111_SAMPLERS = {
    "euler": "Euler",
    "euler_a": "Euler a",
    "heun": "Heun",
    "dpmpp_2s_a": "DPM++ 2S a",
    "dpmpp_2m": "DPM++ 2M",
    "lms": "LMS",
}


@dataclass(frozen=True)
class ImageResult:
    """One written image: where, with which seed and prompt (what the command prints)."""

    path: Path
    seed: int
    prompt: str


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
                 cfg: float | None) -> dict[str, Any]:
    """The common infotext fields, in A1111's order; callers append img2img/refiner fields."""
    return {
        "Steps": steps,
        "Sampler": A1111_SAMPLERS.get(preset.sampler.name, preset.sampler.name),
        "CFG scale": cfg,
        "Seed": seed,
        "Size": f"{width}x{height}",
        "Model": preset.name,
        "Model hash": model_hash(preset),
    }


def gm_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("gm")
    except PackageNotFoundError:  # running from a source tree without install
        return "unknown"


def watermark_images(images: torch.Tensor) -> tuple[torch.Tensor, bool]:
    """Embed the invisible watermark into (N, 3, H, W) images in [0, 1]; warn when too small."""
    marked, embedded = watermark.embed(images)
    if not embedded:
        h, w = images.shape[-2:]
        console.warn_once(f"{w}x{h} images are too small for the invisible watermark (needs 256*256 pixels); "
                     "saved without it")
    return marked, embedded


def save_png(out_dir: Path, image: torch.Tensor, parameters: str, record: dict[str, Any]) -> Path:
    """Write one (3, H, W) [0, 1] image as the next numbered PNG in `out_dir` (atomic, never overwrites)."""
    pixels = to_uint8(image[None])[0]  # (H, W, 3) uint8, truncated like the reference
    info = png_info(parameters, record)
    return write_numbered(out_dir, ".png", lambda tmp: write_png(tmp, pixels, info))


def write_images(engine: Engine, runtime: Runtime, out_dir: Path, prompt: str, latents: list[torch.Tensor],
                 fields: dict[str, Any], record: dict[str, Any], first_seed: int) -> Iterator[ImageResult]:
    """Decode, watermark, write numbered PNGs with metadata; image k has seed first_seed + k."""
    # One image per VAE call: a batched convolution may round differently, and image k must come
    # out bit-identical when re-made alone from its recorded seed (it also bounds fp32 VAE memory).
    for k, latent in enumerate(latents):
        (image,), marked = watermark_images(decode(engine, latent, runtime, chunk=1))
        seed = first_seed + k
        text = parameters_text(prompt, str(record.get("negative_prompt", "")), {**fields, "Seed": seed})
        meta = {**record, "seed": seed, "watermark": marked, "gm_version": gm_version(), "parameters": text}
        yield ImageResult(save_png(out_dir, image, text, meta), seed, prompt)
