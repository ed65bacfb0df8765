"""Camera values and window layout of SV4D / SV4D 2.0 (reference `simple_video_sample_4d.py`,
`simple_video_sample_4d2.py`).

SV4D: SV3D makes a 21-view orbit of frame 0 (last view = the input, azimuths relative to it);
the orbit is rolled by +1 so the input comes first, and 8 views are kept (rolled indices
2, 5, 7, 9, 12, 14, 16, 19). SV4D's camera values are the UN-rolled arrays at those indices with
the azimuth made relative to un-rolled index 0, which compensates the roll (34.29, 85.71, 120, ...
degrees); the polar angle is not compensated, as in the reference.
SV4D 2.0: V + 1 cameras (index 0 = the input view), both angles relative to the input view.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from gm.errors import UsageError
from gm.pipelines.orbit import camera as orbit_camera
from gm.pipelines.orbit import check_angles, per_view

SV3D_FRAMES = 21
SV4D_SUBSET = (0, 2, 5, 7, 9, 12, 14, 16, 19)  # rolled orbit indices: the input + 8 novel views
SV4D2_AZIMUTHS = {
    4: (0.0, 60.0, 120.0, 180.0, 240.0),
    8: (0.0, 30.0, 75.0, 120.0, 165.0, 210.0, 255.0, 300.0, 330.0),
}


def sv4d_camera(elevations_deg: float | Sequence[float],
                azimuths_deg: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(polar_rad, azimuth_rad) of SV4D's 8 novel views from the 21 SV3D orbit cameras."""
    polars, azimuths = orbit_camera(SV3D_FRAMES, elevations_deg, azimuths_deg)  # (21,), relative to the last
    novel = list(SV4D_SUBSET[1:])
    return polars[novel], (azimuths[novel] - azimuths[0]) % (2 * np.pi)


def roll_orbit(frames: np.ndarray) -> np.ndarray:
    """torch.roll(frames, 1, 0): the input view (last) becomes index 0."""
    return np.roll(frames, 1, axis=0)


def sv4d2_camera(views: int, elevations_deg: float | Sequence[float] = 0.0,
                 azimuths_deg: Sequence[float] | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(polar_rad, azimuth_rad) of SV4D 2.0's `views` novel views; inputs have views + 1 values
    (index 0 = the input view). polar = (p_i - p_0 + pi/2) mod 2pi; azimuths are made relative to
    the last entry, then to entry 0."""
    n = views + 1
    elevations = per_view(elevations_deg, n, "(input view first)", "or give one --elevation for every view")
    if azimuths_deg is None:
        if views not in SV4D2_AZIMUTHS:
            raise UsageError(f"no default azimuths for {views} views", f"give --azimuths with {n} values")
        azimuths = np.asarray(SV4D2_AZIMUTHS[views], dtype=np.float64)
    else:
        azimuths = np.asarray(list(azimuths_deg), dtype=np.float64)
    if azimuths.shape != (n,):
        raise UsageError(f"--azimuths needs {n} values (input view first), got {azimuths.size}")
    check_angles(elevations, azimuths)
    polars = np.deg2rad(90.0 - elevations)
    polars = (polars - polars[0] + np.pi / 2) % (2 * np.pi)
    relative = np.deg2rad((azimuths - azimuths[-1]) % 360)
    relative = (relative - relative[0]) % (2 * np.pi)
    return polars[1:], relative[1:]


def sv4d_anchor_frames(frames: int, window: int) -> list[int]:
    """np.arange(T - 1, frames, T - 1): 4, 8, 12, 16, 20 for 21 frames and T = 5."""
    return list(range(window - 1, frames, window - 1))


def sv4d_dense_starts(frames: int, window: int) -> list[int]:
    """np.arange(0, frames - 1, T - 1): 0, 4, 8, 12, 16 (windows share their boundary frames)."""
    return list(range(0, frames - 1, window - 1))


def sv4d2_window_starts(frames: int, window: int, views: int) -> list[int]:
    """The 4-view script steps by T (range(0, 21, 12) -> 0, 12 shifted to 9); the 8-view script by
    T - 1 (range(0, 17, 4) -> 0, 4, 8, 12, 16). A start that would overflow is shifted back.

    With other frame counts the 8-view script's range can stop short of the end (22 frames: the
    last window is 16-20) and the reference drops the unsampled frames from its videos; here one
    more window, shifted back to end on the last frame, samples them."""
    step = window - 1 if views == 8 else window
    stop = frames if views != 8 else frames - window + 1
    starts = [min(s, frames - window) for s in range(0, max(stop, 1), step)]
    if starts[-1] + window < frames:
        starts.append(frames - window)
    return list(dict.fromkeys(starts))


def diagonal_views(frames: int, views: int) -> list[int]:
    """The `_diag` video's view per frame: (t // (frames // views)) % views (0,0,1,1,...,8,8,0,0,1)."""
    return [(t // (frames // views)) % views for t in range(frames)]
