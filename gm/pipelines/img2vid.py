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
from pathlib import Path

from gm.console import console
from gm.models.build import Engine
from gm.outputs import OutputSpec, run_record
from gm.pipelines.common import Runtime, load
from gm.pipelines.video import (
    ClipResult,
    VideoRequest,
    animate,
    check_size,
    finish_clip,
    fit_image,
    open_input,
)
from gm.presets import Preset
from gm.provenance import engine_record


def warn_unusual(request: VideoRequest) -> None:
    """The reference script's warnings: SVD was trained on fps_id 5..30 and motion_bucket_id <= 255."""
    if not 5 <= request.fps_id <= 30:
        console.warn(f"fps-id {request.fps_id} is outside the trained range 5..30; results may be poor")
    if request.motion_bucket_id > 255:
        console.warn(f"motion-bucket-id {request.motion_bucket_id} is above the trained range 0..255")


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
        record = run_record("img2vid", preset, req.seed, checkpoint=engine_record(engine), input=str(path),
                            steps=req.steps, frames=req.frames,
                            fps_id=req.fps_id, motion_bucket_id=req.motion_bucket_id, cond_aug=req.cond_aug,
                            decoding_t=req.decoding_t, fps=output.fps, size=[height, width])
        yield finish_clip(frames, fitted, output, record)
