"""Sample grids during and after training (sgm `main.ImageLogger` + `DiffusionEngine.log_images`).

Uses the preset's sampler and guider. Class-conditional presets get one row per class
(`samples_per_class` columns); text presets one row per prompt; unconditional ones a square
grid of `num_samples`. uc = every conditioner output zeroed, as the reference's log_images.
Noise comes from a CPU generator with a fixed seed, so grids at different steps are comparable.
Pixels: [-1, 1] -> [0, 1] -> x255, truncated to uint8 (the reference's conversion).
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gm.console import console
from gm.device import cpu_generator
from gm.diffusion import guided, guiders, recipe
from gm.io.files import write_atomic
from gm.models.build import Engine
from gm.presets import Preset
from gm.train.config import TrainConfig
from gm.train.model import DiffusionObjective, condition


def grid_inputs(engine: Engine, cfg: TrainConfig, num_classes: int) -> tuple[dict, int, int]:
    """(batch of conditioning inputs, rows, columns) for the grid."""
    if engine.embedders is None:
        n = cfg.num_samples
        cols = math.ceil(math.sqrt(n))
        return {}, math.ceil(n / cols), cols
    inputs = {e.config.input for e in engine.embedders.embedders}
    if "cls" in inputs:
        cols = cfg.samples_per_class
        labels = torch.arange(num_classes).repeat_interleave(cols)
        return {"cls": labels}, num_classes, cols
    prompts = list(cfg.sample_prompts) or ["a photograph"]
    cols = 4
    batch: dict = {"txt": [p for p in prompts for _ in range(cols)]}
    return batch, len(prompts), cols


@torch.no_grad()
def generate(objective: DiffusionObjective, preset: Preset, batch: dict, n: int, shape: tuple[int, ...],
             image_size: int, device: torch.device, seed: int = 0, max_batch: int = 256) -> torch.Tensor:
    """n samples in [-1, 1] (n, C, H, W) on the CPU, decoded through the VAE when there is one."""
    engine = objective.engine
    gen = cpu_generator(seed)
    sigmas = recipe.sigmas_for(preset.sampler)
    guider = guiders.from_spec(preset.guider)
    full = {**batch}
    inputs = {e.config.input for e in engine.embedders.embedders} if engine.embedders is not None else set()
    if "original_size_as_tuple" in inputs:
        full["original_size_as_tuple"] = torch.tensor([[image_size, image_size]] * n, dtype=torch.float32)
        full["crop_coords_top_left"] = torch.zeros((n, 2))
    out = []
    for start in range(0, n, max_batch):
        part = {k: v[start:start + max_batch] for k, v in full.items()}
        m = min(max_batch, n - start)
        cond = condition(engine, part, None) if part else {}
        uc = condition(engine, part, None, zero=True) if part else {}
        noise = torch.randn((m, *shape), generator=gen).to(device)
        denoise = guided(objective.denoiser, guider, cond, uc)
        with console.task("sample grid", total=len(sigmas) - 1, unit="step") as bar:
            x = recipe.run(preset.sampler, denoise, noise, sigmas, gen, callback=lambda i, x, d: bar.advance())
        if engine.vae is not None:
            x = engine.vae.decode(x / objective.scale_factor)
        out.append(x.float().cpu())
    return torch.cat(out).clamp(-1, 1)


def to_grid(images: torch.Tensor, rows: int, cols: int) -> np.ndarray:
    """(rows*cols, C, H, W) in [-1, 1] -> (rows*H, cols*W, C) uint8 with 2-pixel gutters."""
    n, c, h, w = images.shape
    pixels = ((images + 1) / 2 * 255).clamp(0, 255).to(torch.uint8)  # truncation, as the reference
    pad = 2
    grid = torch.zeros((c, rows * (h + pad) + pad, cols * (w + pad) + pad), dtype=torch.uint8)
    for i in range(min(n, rows * cols)):
        r, col = divmod(i, cols)
        grid[:, pad + r * (h + pad):pad + r * (h + pad) + h, pad + col * (w + pad):pad + col * (w + pad) + w] = pixels[i]
    return grid.permute(1, 2, 0).numpy()  # (H, W, C)


def save_grid(grid: np.ndarray, path: Path, upscale: int = 1) -> Path:
    img = Image.fromarray(grid[..., 0] if grid.shape[-1] == 1 else grid)
    if upscale > 1:
        img = img.resize((img.width * upscale, img.height * upscale), Image.Resampling.NEAREST)
    path.parent.mkdir(parents=True, exist_ok=True)
    return write_atomic(path, lambda tmp: img.save(tmp, format="PNG"), replace=True)  # the old grid stays until then
