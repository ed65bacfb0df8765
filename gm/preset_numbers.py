"""The numbers of a preset's typed tables: finite, and inside the range a field obviously has.

gm.presets.parse runs `check_numbers` on every preset it reads, so a bad value in a file names the
file's key and one given with `--set` names `--set table.key` (gm.presets.load rewrites it), both
before anything loads.
"""

from __future__ import annotations

import dataclasses
import math
from typing import TYPE_CHECKING

from gm.errors import PresetError

if TYPE_CHECKING:
    from gm.presets import Preset

# The largest image or video side gm accepts (pixels): far above any released model's size, low
# enough that a typo (-W 100000) is refused before it asks for terabytes of memory.
MAX_SIDE = 8192

# Ranges of the typed table fields that have an obvious one: (low, high), either None for open,
# both inclusive; `POSITIVE` fields must be > 0. Every other float field only has to be finite.
RANGES: dict[tuple[str, str], tuple[float | None, float | None]] = {
    ("denoiser", "num_idx"): (1, None), ("sampler", "steps"): (1, None), ("sampler", "s_churn"): (0, None),
    ("sampler", "s_tmin"): (0, None), ("sampler", "s_noise"): (0, None), ("sampler", "eta"): (0, None),
    ("sampler", "order"): (1, None), ("guider", "num_views"): (0, None), ("defaults", "height"): (1, MAX_SIDE),
    ("defaults", "width"): (1, MAX_SIDE),
    ("defaults", "frames"): (1, None), ("defaults", "fps_id"): (0, 239), ("defaults", "motion_bucket_id"): (0, 255),
    ("defaults", "cond_aug"): (0, None), ("defaults", "elevation_deg"): (-90, 90),
    ("defaults", "image_frame_ratio"): (0, 1), ("defaults", "views"): (1, None),
    ("defaults", "window_frames"): (1, None), ("perf", "encoding_t"): (0, None), ("perf", "decoding_t"): (0, None),
    ("checkpoint", "size_gb"): (0, None),
}
POSITIVE = {("denoiser", "sigma_data"), ("sampler", "sigma_min"), ("sampler", "sigma_max"), ("sampler", "rho")}
MAY_BE_INFINITE = {("sampler", "s_tmax")}  # inf = "churn at every sigma" (SV3D's presets)


def check_numbers(preset: Preset) -> None:
    """Every number of the typed tables is finite (NaN never is) and inside its field's range, so a
    bad `--set` or preset value fails here, before anything loads (load() names `--set` for it)."""
    for table in ("checkpoint", "denoiser", "sampler", "guider", "defaults", "perf"):
        section = getattr(preset, table)
        if section is None:
            continue
        for f in dataclasses.fields(section):
            value = getattr(section, f.name)
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                continue
            key = (table, f.name)
            where = f"{preset.source}.{table}.{f.name}"
            example = f"e.g. {f.default}" if isinstance(f.default, (int, float)) else "give a number"
            if isinstance(value, float) and not math.isfinite(value) and not (key in MAY_BE_INFINITE
                                                                             and not math.isnan(value)):
                raise PresetError(f"{where}: {value} is not a finite number", example)
            low, high = RANGES.get(key, (None, None))
            if key in POSITIVE and not value > 0:
                raise PresetError(f"{where}: must be > 0, got {value}", example)
            if (low is not None and value < low) or (high is not None and value > high):
                span = f"in [{low}, {high}]" if high is not None else f"at least {low}"
                hint = f"sizes above {MAX_SIDE} px are refused; {example}" if high == MAX_SIDE else example
                raise PresetError(f"{where}: must be {span}, got {value}", hint)
