"""`gm img2vid`'s job: for each input image, fit it to the model size, animate it, write the clip.

The loop of `scripts/sampling/simple_video_sample.py` for the SVD versions,
with the reference's rough edges fixed: any input size works (resized to cover the model size and
centre-cropped, said on stderr, instead of the crashing floor-to-64 path), RGBA is
composited on white instead of losing its alpha, svd-xt-1.1 is accepted, and each
input gets its own seed (seed + index) recorded in the file, so any one clip can be re-made alone.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

from gm.console import console
from gm.errors import InputError
from gm.io.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, open_image
from gm.models.build import Engine
from gm.outputs import OutputSpec, finish_frames, run_record, save_clip
from gm.pipelines.common import Runtime, load
from gm.pipelines.video import VideoRequest, animate, check_size, fit_image
from gm.presets import Preset


@dataclass(frozen=True)
class ClipResult:
    """One finished clip: where it was written (None: not written) and its watermarked frames."""

    path: Path | None
    record: dict[str, Any]
    pixels: Any = None  # (T, H, W, 3) uint8


def finish_clip(frames: Any, still: Image.Image, output: OutputSpec, record: dict[str, Any]) -> ClipResult:
    """Watermark the frames and, when the output has a folder, write the clip and its still."""
    pixels = finish_frames(frames)
    path = save_clip(pixels, still, output, record) if output.out_dir is not None else None
    return ClipResult(path, record, pixels)


def warn_unusual(request: VideoRequest) -> None:
    """The reference script's warnings: SVD was trained on fps_id 5..30 and motion_bucket_id <= 255."""
    if not 5 <= request.fps_id <= 30:
        console.warn(f"fps-id {request.fps_id} is outside the trained range 5..30; results may be poor")
    if request.motion_bucket_id > 255:
        console.warn(f"motion-bucket-id {request.motion_bucket_id} is above the trained range 0..255")


def open_input(path: Path) -> Any:
    """The image at `path`; videos (animated gifs included) and other files are one-line InputErrors."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES and suffix != ".gif":
        raise InputError(f"{path}: is a video, not an image", "pass a .png/.jpg image; gm video4d takes videos")
    if suffix not in IMAGE_SUFFIXES and suffix != ".gif":
        raise InputError(f"{path}: not an image file ({suffix or 'no suffix'})",
                         f"pass one of {', '.join(IMAGE_SUFFIXES)}")
    image = open_image(path)
    if suffix == ".gif":
        with Image.open(path) as gif:
            frames = getattr(gif, "n_frames", 1)
        if frames > 1:
            raise InputError(f"{path}: is an animated gif ({frames} frames), not an image",
                             "pass one frame as a .png/.jpg image; gm video4d takes videos")
    return image


def run_img2vid(
    inputs: Sequence[Path],
    preset: Preset,
    runtime: Runtime,
    request: VideoRequest,
    output: OutputSpec,
    checkpoint: str | None = None,
    unsafe_pickle: bool = False,
    engine: Engine | None = None,
) -> Iterator[ClipResult]:
    """Animate every input (checked before the model loads); yields one result per written clip."""
    height, width = preset.defaults.height, preset.defaults.width
    check_size(preset, height, width)
    warn_unusual(request)
    images = [(path, open_input(path)) for path in inputs]
    engine = engine if engine is not None else load(preset, runtime, checkpoint, unsafe_pickle)
    for index, (path, image) in enumerate(images):
        fitted, changed = fit_image(image, height, width)
        if changed:
            console.log(f"{path}: {image.width}x{image.height} resized to cover {width}x{height} and centre-cropped")
        req = dataclasses.replace(request, seed=request.seed + index)
        frames = animate(engine, preset, runtime, fitted, req)
        record = run_record("img2vid", preset, req.seed, input=str(path), steps=req.steps, frames=req.frames,
                            fps_id=req.fps_id, motion_bucket_id=req.motion_bucket_id, cond_aug=req.cond_aug,
                            decoding_t=req.decoding_t, fps=output.fps, size=[height, width])
        yield finish_clip(frames, fitted, output, record)
