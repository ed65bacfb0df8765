"""A command's Job as the memory planner sees it: sizes, frames, steps, CFG and dtypes -> Workload.

`gm <command> --plan` and `--max-vram` build the Job exactly as a run would, then ask these
functions what the planner should run on the meta device. Nothing here loads a checkpoint or opens
more of an input than its header (img2img plans at the input's size). The dtypes are resolved
without touching the device: a CPU-only machine plans `--device cuda --dtype fp16`.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gm.device import DTYPES, pick_device
from gm.errors import InputError, UsageError
from gm.plan import Settings, Workload, workload_for
from gm.presets import Preset

GRID = 64  # img2img inputs are processed at their size floored to this (gm.pipelines.image_input)


@dataclass(frozen=True)
class PlanTarget:
    """One model of a run: the preset its engine is built from, the sizes, the run's own settings."""

    preset: Preset
    work: Workload
    base: Settings


def plan_device(device: str) -> str:
    """The device kind planned for (cuda, mps or cpu); `auto` is what a run would pick here."""
    kind = pick_device("auto").type if device == "auto" else device.split(":")[0]
    if kind not in ("cuda", "mps", "cpu"):
        raise UsageError(f"--device {device!r} is not a device", "use auto, cuda, cuda:N, mps or cpu")
    return kind


def plan_dtypes(preset: Preset, kind: str, dtype: str) -> tuple[torch.dtype, torch.dtype]:
    """(network dtype, VAE dtype) a run on `kind` would use (gm.device.runtime_for's rules)."""
    name = preset.perf.dtype if dtype == "auto" else dtype
    if name == "auto":
        name = "fp16" if kind in ("cuda", "mps") else "fp32"
    vae = preset.perf.vae_dtype
    try:
        return DTYPES[name], (torch.float32 if vae == "auto" else DTYPES[vae])
    except KeyError:
        raise UsageError(f"unknown dtype {name!r}", "use auto, fp16, bf16 or fp32") from None


def _input_size(path: Path) -> tuple[int, int]:
    """(width, height) an img2img input is processed at, from its header alone."""
    from PIL import Image, UnidentifiedImageError

    if not path.is_file():
        raise InputError(f"{path}: no such file", "give an existing .png/.jpg image")
    try:
        with Image.open(path) as img:
            w, h = img.size
    except (UnidentifiedImageError, OSError) as err:
        raise InputError(f"{path}: not a readable image ({err})") from None
    if w < GRID or h < GRID:
        raise InputError(f"{path}: {w}x{h} is too small (needs at least 64x64 pixels)")
    return w // GRID * GRID, h // GRID * GRID


def _image_size(preset: Preset, job: Any) -> tuple[int, int]:
    """(width, height) of the run, as gm.pipelines.image resolves it (refine: the largest input)."""
    from gm.pipelines.image_cond import aspect_size, check_size, size_grid

    d = preset.defaults
    if job.command == "refine":
        sizes = [_input_size(Path(p)) for p in job.init_images]
        return max(sizes, key=lambda s: s[0] * s[1])
    if job.aspect is not None:
        width, height = aspect_size(job.aspect, d.width, d.height)
    elif job.width is not None or job.height is not None or not job.init_images:
        width, height = job.width or d.width, job.height or d.height
    else:
        width, height = _input_size(Path(job.init_images[0]))
    check_size(width, height, size_grid(preset))
    return width, height


def image_targets(preset: Preset, job: Any, staging: bool) -> list[PlanTarget]:
    """txt2img / refine / turbo: one image per network and VAE call (the pipeline samples and decodes
    the -n images one at a time), the refiner as a second target at the same size."""
    from gm import presets

    if job.command == "turbo":
        preset = presets.replace(preset, "guider", kind="identity")
    width, height = _image_size(preset, job)
    img2img = bool(job.init_images)
    base = Settings(decode_chunk=1, staging=staging)
    out = [PlanTarget(preset, dataclasses.replace(workload_for(preset, height, width), init_image=img2img), base)]
    if job.refiner is not None:
        out.append(PlanTarget(job.refiner.preset, workload_for(job.refiner.preset, height, width), base))
    return out


def auto_decode_chunk(frames: int, height: int, width: int) -> int:
    """`--decoding-t 0` without a memory limit: gm.pipelines.video's rule (the same on every device)."""
    from gm.pipelines.video import DECODE_BUDGET, DECODE_BYTES_PER_PIXEL

    return max(1, min(frames, DECODE_BUDGET // (DECODE_BYTES_PER_PIXEL * height * width)))


def video_target(preset: Preset, request: Any, staging: bool) -> PlanTarget:
    """img2vid / orbit: T frames per network call at the preset size; decode --decoding-t frames."""
    d = preset.defaults
    work = workload_for(preset, frames=request.frames, steps=request.steps)
    chunk = request.decoding_t or auto_decode_chunk(request.frames, d.height, d.width)
    return PlanTarget(preset, work, Settings(decode_chunk=chunk, staging=staging))


def video4d_target(preset: Preset, request: Any, staging: bool) -> PlanTarget:
    """video4d: windows of frames x views per network call at --img-size, --encoding-t/--decoding-t.
    (SV4D 1.0's SV3D reference views run first, with their own, smaller model.)"""
    from gm.pipelines.video4d import with_encoding_chunk
    from gm.pipelines.video4d_job import check_request

    check_request(preset, request)
    work = workload_for(preset, height=request.size, width=request.size, frames=request.frames, steps=request.steps)
    return PlanTarget(with_encoding_chunk(preset, request.encoding_t), work,
                      Settings(decode_chunk=request.decoding_t, staging=staging))
