"""SV3D_u / SV3D_p: a 21-view orbit around the object in one image.

Mirrors the SV3D branches of `scripts/sampling/simple_video_sample.py`:
the object view is prepared by gm.pipelines.objects (background removal, centring, white,
576x576 LANCZOS), cond_aug is 1e-5, the guider is the triangle ramp, and after decoding the
LAST frame is replaced by the input view itself (the last orbit position is the input's azimuth).

Camera (SV3D_p): polars = deg2rad(90 - elevation) per frame; azimuths default to
linspace(0, 360, 22)[1:] mod 360 (17.14, 34.29, ..., 342.86, 0) and are fed relative to the last
entry: deg2rad((a_i - a_last) mod 360). The reference's "sort" of that list is a no-op and is not
reproduced.

`run_orbit` is the engine function (also used by the 4D pipeline for its reference views): it
returns frames as a tensor; `orbit_files` is the command's loop that writes them.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gm.console import console
from gm.errors import UsageError
from gm.models.build import Engine
from gm.outputs import OutputSpec, run_record
from gm.pipelines.common import Runtime, load
from gm.pipelines.objects import Segmenter, check_segmenter, prepare_object
from gm.pipelines.video import ClipResult, VideoRequest, finish_clip, image_tensor, open_input, sample_clip
from gm.presets import Preset
from gm.provenance import engine_record


def default_azimuths(frames: int) -> np.ndarray:
    """linspace(0, 360, frames + 1)[1:] mod 360: evenly spaced, the last one (0) is the input view."""
    return np.linspace(0, 360, frames + 1)[1:] % 360


def per_view(elevations_deg: float | Sequence[float], n: int, what: str, hint: str) -> np.ndarray:
    """One elevation for every view (a scalar is repeated), as float64; a wrong count is a UsageError."""
    if isinstance(elevations_deg, (int, float)):
        return np.full(n, float(elevations_deg))
    elevations = np.asarray(list(elevations_deg), dtype=np.float64)
    if elevations.shape != (n,):
        raise UsageError(f"--elevations needs {n} values {what}, got {elevations.size}", hint)
    return elevations


def check_angles(elevations: np.ndarray, azimuths: np.ndarray) -> None:
    """UsageError naming the first elevation outside [-90, 90] or azimuth outside [0, 360) (NaN too)."""
    bad_elevations = elevations[~((elevations >= -90) & (elevations <= 90))]
    if bad_elevations.size:
        raise UsageError(f"elevation {bad_elevations[0]:g} is outside [-90, 90] degrees")
    bad_azimuths = azimuths[~((azimuths >= 0) & (azimuths < 360))]
    if bad_azimuths.size:
        raise UsageError(f"azimuth {bad_azimuths[0]:g} is outside [0, 360) degrees")


def camera(frames: int, elevations_deg: float | Sequence[float],
           azimuths_deg: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(polars_rad, azimuths_rad), float64, one per frame, exactly as the reference computes them.

    Raises UsageError (exit 2) on a wrong count or a value out of range: elevations in [-90, 90],
    azimuths in [0, 360).
    """
    elevations = per_view(elevations_deg, frames, "(one per frame)", "or give one --elevation for the whole orbit")
    azimuths = default_azimuths(frames) if azimuths_deg is None else np.asarray(list(azimuths_deg), dtype=np.float64)
    if azimuths.shape != (frames,):
        raise UsageError(f"--azimuths needs {frames} values (one per frame), got {azimuths.size}",
                         "the last value is the input view's azimuth")
    check_angles(elevations, azimuths)
    polars = np.deg2rad(90.0 - elevations)
    relative = np.deg2rad((azimuths - azimuths[-1]) % 360)
    return polars, relative


def uses_camera(preset: Preset) -> bool:
    """SV3D_p conditions on the camera; SV3D_u does not."""
    return any(t.get("input") in ("polars_rad", "azimuths_rad") for t in preset.conditioner)


def run_orbit(engine: Engine, preset: Preset, runtime: Runtime, view: Image.Image | torch.Tensor, request: VideoRequest,
              elevations_deg: float | Sequence[float] | None = None,
              azimuths_deg: Sequence[float] | None = None) -> torch.Tensor:
    """A prepared RGB view (model size, object on white; PIL, or a (1, 3, H, W) tensor in [-1, 1]) ->
    orbit frames (T, 3, H, W) in [0, 1], the last one being the view itself. The camera is used only
    by SV3D_p presets."""
    t = request.frames
    image = view if isinstance(view, torch.Tensor) else image_tensor(view)
    scalars: dict[str, torch.Tensor] = {"cond_aug": torch.tensor(request.cond_aug)}
    if uses_camera(preset):
        elevation = preset.defaults.elevation_deg if elevations_deg is None else elevations_deg
        polars, azimuths = camera(t, elevation, azimuths_deg)
        scalars["polars_rad"] = torch.from_numpy(polars)
        scalars["azimuths_rad"] = torch.from_numpy(azimuths)
    frames = sample_clip(engine, preset, runtime, image, scalars, request)
    frames[-1] = ((image[0] + 1.0) / 2.0).clamp(0, 1)  # the reference puts the input view back
    return frames


def orbit_files(
    inputs: Sequence[Path],
    preset: Preset,
    runtime: Runtime,
    request: VideoRequest,
    output: OutputSpec,
    elevations_deg: float | Sequence[float] | None = None,
    azimuths_deg: Sequence[float] | None = None,
    frame_ratio: float | None = None,
    remove_bg: bool | None = None,
    segment: Segmenter | None = None,
    checkpoint: str | None = None,
    unsafe_pickle: bool = False,
    engine: Engine | None = None,
) -> Iterator[ClipResult]:
    """`gm orbit`'s loop: validate everything, load once, then per input prepare, orbit, write."""
    size = preset.defaults.height
    if preset.defaults.width != size:
        raise UsageError(f"{preset.name}: orbit presets are square, got {size}x{preset.defaults.width}")
    camera_on = uses_camera(preset)
    if camera_on:
        elevation = preset.defaults.elevation_deg if elevations_deg is None else elevations_deg
        polars, azimuths = camera(request.frames, elevation, azimuths_deg)  # fail before loading
    elif elevations_deg is not None or azimuths_deg is not None:
        console.warn(f"{preset.name} has no camera input: --elevation(s)/--azimuths are ignored (use sv3d-p)")
    if frame_ratio is not None and not 0.0 < frame_ratio <= 1.0:
        raise UsageError(f"--image-frame-ratio must be in (0, 1], got {frame_ratio}")
    images = [(path, open_input(path)) for path in inputs]
    check_segmenter([image for _, image in images], remove_bg, segment)  # rembg's model, before the load
    engine = engine if engine is not None else load(preset, runtime, checkpoint, unsafe_pickle)
    for index, (path, image) in enumerate(images):
        view = prepare_object(image, size, frame_ratio, remove_bg, segment)
        req = dataclasses.replace(request, seed=request.seed + index)
        frames = run_orbit(engine, preset, runtime, view, req, elevations_deg, azimuths_deg)
        record = run_record("orbit", preset, req.seed, checkpoint=engine_record(engine), input=str(path),
                            steps=req.steps, frames=req.frames,
                            cond_aug=req.cond_aug, decoding_t=req.decoding_t, fps=output.fps,
                            image_frame_ratio=frame_ratio)
        if camera_on:
            record["elevations_deg"] = [round(90.0 - float(np.rad2deg(p)), 6) for p in polars]
            record["azimuths_deg"] = [float(a) for a in (default_azimuths(req.frames) if azimuths_deg is None
                                                         else azimuths_deg)]
        yield finish_clip(frames, view, output, record)
