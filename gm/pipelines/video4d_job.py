"""The Job of `gm video4d`: one request built from the preset's defaults and the user's options
(command line or Python) and checked before anything loads."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from gm.errors import UsageError
from gm.pipelines.video4d_camera import sv4d2_camera, sv4d_camera
from gm.preset_numbers import MAX_SIDE
from gm.presets import Preset


@dataclass(frozen=True)
class Video4DRequest:
    """Everything `gm video4d` decides before loading a model."""

    source: str
    frames: int
    steps: int
    seed: int
    size: int
    frame_ratio: float
    elevations: float | tuple[float, ...]
    azimuths: tuple[float, ...] | None
    encoding_t: int
    decoding_t: int
    remove_bg: bool = False
    pad: bool = False
    sv3d_preset: str = "sv3d-u"


def is_sv4d(preset: Preset) -> bool:
    """SV4D (v1) conditions on SV3D reference views; SV4D 2.0 runs autoregressive windows (the
    preset states which: `[defaults] mode`)."""
    return preset.defaults.mode == "sv4d"


def check_request(preset: Preset, request: Video4DRequest) -> tuple[np.ndarray, np.ndarray]:
    """Validate before any loading; returns the novel views' (polar_rad, azimuth_rad)."""
    if request.size <= 0 or request.size % 64:
        raise UsageError(f"--img-size must be a positive multiple of 64, got {request.size}", "e.g. 576 or 512")
    if request.size > MAX_SIDE:
        raise UsageError(f"--img-size {request.size} is above the {MAX_SIDE} px limit", "e.g. 576 or 512")
    if request.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {request.steps}")
    for option, value in (("--encoding-t", request.encoding_t), ("--decoding-t", request.decoding_t)):
        if value < 0:
            raise UsageError(f"{option} must be 0 (all frames at once) or more, got {value}", f"e.g. {option} 4")
    if not 0.0 < request.frame_ratio <= 1.0:
        raise UsageError(f"--image-frame-ratio must be in (0, 1], got {request.frame_ratio}")
    window = preset.defaults.window_frames
    if is_sv4d(preset):
        if request.frames != 21:
            raise UsageError(f"{preset.name} makes 21 frames (its windows are fixed), got --frames {request.frames}")
        return sv4d_camera(request.elevations, request.azimuths)
    if request.frames < window:
        raise UsageError(f"--frames must be at least {window} for {preset.name}, got {request.frames}")
    return sv4d2_camera(preset.defaults.views, request.elevations, request.azimuths)


def sv3d_preset(name: str) -> Preset:
    """SV4D's reference-view model (--sv3d-preset): an orbit preset, or a UsageError."""
    from gm import presets

    sv3d = presets.load(name)
    if sv3d.family != "orbit":
        raise UsageError(f"--sv3d-preset {name} is a {sv3d.family} model, not an SV3D one", "use sv3d-u or sv3d-p")
    return sv3d


def video4d_request(preset: Preset, source: str, *, frames: int | None = None, steps: int | None = None,
                    seed: int | None = None, size: int | None = None, frame_ratio: float | None = None,
                    elevations: float | list[float] | tuple[float, ...] | None = None,
                    azimuths: list[float] | tuple[float, ...] | None = None, encoding_t: int | None = None,
                    decoding_t: int | None = None, remove_bg: bool = False, pad: bool = False,
                    sv3d: str = "sv3d-u") -> Video4DRequest:
    """The request with every unset option taken from the preset (None = its default)."""
    d = preset.defaults
    return Video4DRequest(
        source=source,
        frames=d.frames if frames is None else frames,
        steps=preset.sampler.steps if steps is None else steps,
        seed=d.seed if seed is None else seed,
        size=d.height if size is None else size,
        frame_ratio=d.image_frame_ratio if frame_ratio is None else frame_ratio,
        elevations=d.elevation_deg if elevations is None else
        (elevations if isinstance(elevations, (int, float)) else tuple(elevations)),
        azimuths=None if azimuths is None else tuple(azimuths),
        encoding_t=preset.perf.encoding_t if encoding_t is None else encoding_t,
        decoding_t=preset.perf.decoding_t if decoding_t is None else decoding_t,
        remove_bg=remove_bg,
        pad=pad,
        sv3d_preset=sv3d if is_sv4d(preset) else "",
    )
