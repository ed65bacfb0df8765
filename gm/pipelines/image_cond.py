"""Image sizes and text/size conditioning for SDXL, SD 2.x and Turbo.

Mirrors what `sgm/inference/helpers.py` (`get_batch`, `get_unconditional_conditioning`) and the
streamlit demo feed the `GeneralConditioner`: the prompt under `txt`, SDXL's micro-conditioning
`original_size_as_tuple` = `target_size_as_tuple` = (height, width) with `crop_coords_top_left`
= (0, 0), and the refiner's `aesthetic_score` (6.0 for c, 2.5 for uc). The unconditional branch
encodes the negative prompt, except where the preset zeroes the text embeddings (SDXL base and
Turbo, `defaults.zero_uc_text`): there uc's text outputs are zeros and the negative is unused.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from gm.console import console
from gm.diffusion.denoiser import Cond
from gm.errors import GmError, UsageError
from gm.models.build import Engine
from gm.pipelines.common import Runtime, on_device
from gm.preset_numbers import MAX_SIDE
from gm.presets import Preset

# The SDXL demo's resolution table (W, H) at 1024^2 pixels (scripts/demo/streamlit_helpers.py).
SDXL_SIZES: tuple[tuple[int, int], ...] = (
    (704, 1408), (704, 1344), (768, 1344), (768, 1280), (832, 1216), (832, 1152), (896, 1152),
    (896, 1088), (960, 1088), (960, 1024), (1024, 1024), (1024, 960), (1088, 960), (1088, 896),
    (1152, 896), (1152, 832), (1216, 832), (1280, 768), (1344, 768), (1344, 704), (1408, 704),
    (1472, 704), (1536, 640), (1600, 640), (1664, 576), (1728, 576),
)
# Conditioning inputs this pipeline knows how to fill.
IMAGE_INPUTS = ("txt", "original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple", "aesthetic_score")


def parse_aspect(text: str) -> float:
    """`16:9`, `16/9` or `1.78` -> width / height."""
    for sep in (":", "/"):
        if sep in text:
            w, _, h = text.partition(sep)
            break
    else:
        w, h = text, "1"
    try:
        ratio = float(w) / float(h)
    except (ValueError, ZeroDivisionError):
        raise UsageError(f"--aspect {text!r} is not a ratio", "e.g. --aspect 16:9 or --aspect 0.75") from None
    if not math.isfinite(ratio) or ratio <= 0:
        raise UsageError(f"--aspect {text!r} is not a positive ratio", "e.g. --aspect 16:9")
    return ratio


def aspect_size(text: str, default_width: int, default_height: int) -> tuple[int, int]:
    """(width, height) of the SDXL table entry closest to the ratio `text`, rescaled to the preset's
    pixel count (1024^2 presets get the table itself; 512^2 presets half of each side, on a 64 grid)."""
    ratio = parse_aspect(text)
    w, h = min(SDXL_SIZES, key=lambda s: abs(math.log(s[0] / s[1]) - math.log(ratio)))
    scale = math.sqrt(default_width * default_height) / 1024.0
    if scale == 1.0:
        return w, h
    return max(64, round(w * scale / 64) * 64), max(64, round(h * scale / 64) * 64)


def size_grid(preset: Preset) -> int:
    """Pixels must be multiples of this (gm.model.Geometry.grid)."""
    from gm.model import geometry

    return geometry(preset).grid


def check_size(width: int, height: int, grid: int = 8) -> None:
    """Sizes are positive multiples of `grid` (see size_grid); off the 64 grid only draws a warning."""
    for name, value in (("width", width), ("height", height)):
        if value < 8 or value % 8:
            raise UsageError(f"--{name} {value} is not a positive multiple of 8", f"e.g. --{name} {max(64, value // 64 * 64)}")
        if value > MAX_SIDE:  # a typo (-W 100000) would ask for terabytes before failing
            raise UsageError(f"--{name} {value} is above the {MAX_SIDE} px limit",
                             f"e.g. --{name} 1024; upscale the result separately for larger images")
        if value % grid:
            raise UsageError(f"--{name} {value} is not a multiple of {grid}, which this model's UNet needs",
                             f"e.g. --{name} {max(grid, value // grid * grid)}")
    if width % 64 or height % 64:
        console.warn(f"{width}x{height} is not a multiple of 64; the models were trained on a 64-pixel grid")


@dataclass(frozen=True)
class TextCondition:
    """What one conditioning pass needs besides the engine."""

    prompt: str
    negative: str
    height: int
    width: int
    aesthetic_score: float = 6.0
    negative_aesthetic_score: float = 2.5


def zeroes_uc_text(engine: Engine, preset: Preset) -> bool:
    """True when uc replaces the text embeddings by zeros (the negative prompt is unused)."""
    conditioner = engine.embedders
    marked = conditioner is not None and "txt" in conditioner.uc_zero_inputs
    return marked or preset.defaults.zero_uc_text


def _batch(keys: tuple[str, ...], prompt: str, spec: TextCondition, aesthetic: float,
           device: torch.device) -> dict[str, object]:
    """The conditioner's inputs for one image (batch size 1)."""
    size = torch.tensor([[spec.height, spec.width]], dtype=torch.float32, device=device)  # (1, 2) (h, w)
    values: dict[str, object] = {
        "txt": [prompt],
        "original_size_as_tuple": size,
        "target_size_as_tuple": size,
        "crop_coords_top_left": torch.zeros((1, 2), dtype=torch.float32, device=device),  # (top, left)
        "aesthetic_score": torch.tensor([[aesthetic]], dtype=torch.float32, device=device),  # (1, 1)
    }
    return {k: values[k] for k in keys}


def conditioning(engine: Engine, preset: Preset, runtime: Runtime, spec: TextCondition,
                 need_uc: bool) -> tuple[Cond, Cond | None]:
    """(c, uc) for one image; uc is None when the guider does not use it (Turbo, CFG 1)."""
    conditioner = engine.embedders
    if conditioner is None:
        raise GmError(f"preset '{preset.name}' has no conditioner; image commands need a text-conditioned model")
    keys = conditioner.input_keys
    unknown = [k for k in keys if k not in IMAGE_INPUTS]
    if unknown:
        raise GmError(f"preset '{preset.name}' needs conditioning input '{unknown[0]}', which image commands do not "
                      f"provide (they fill {', '.join(IMAGE_INPUTS)})", "use gm img2vid / orbit / video4d for it")
    conditioner.prompt_chunks([spec.prompt, spec.negative])  # checks the syntax (a <lora:...> tag) first
    force_zero = set(conditioner.uc_zero_inputs) | ({"txt"} if preset.defaults.zero_uc_text else set())
    # The inputs in which the uc batch differs from c's; when uc zeroes all of them (SDXL base: the
    # text), uc is c with those outputs zeroed, so the text encoders need not run on the negative.
    differs = {"txt"} | ({"aesthetic_score"} if spec.aesthetic_score != spec.negative_aesthetic_score else set())
    with console.task("encode", total=1), on_device(conditioner, runtime), torch.inference_mode():
        batch = _batch(keys, spec.prompt, spec, spec.aesthetic_score, runtime.device)
        uc = None
        if need_uc and differs & set(keys) <= force_zero:
            cond, uc = conditioner.with_uncond(batch, uc_zero=force_zero)
        else:
            cond = conditioner.get_conditioning(batch)
            if need_uc:
                batch_uc = _batch(keys, spec.negative, spec, spec.negative_aesthetic_score, runtime.device)
                uc = conditioner.get_conditioning(batch_uc, force_zero=force_zero)
    return _to_device(cond, runtime), (_to_device(uc, runtime) if uc is not None else None)


def _to_device(cond: dict[str, torch.Tensor], runtime: Runtime) -> dict[str, torch.Tensor]:
    # Float32 on the compute device; the denoiser casts to the network's dtype per call.
    return {k: v.to(runtime.device, torch.float32) for k, v in cond.items()}
