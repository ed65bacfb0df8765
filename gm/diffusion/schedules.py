"""Noise schedules (discretizations): descending sigma lists ending in 0.

Mirrors sgm `modules/diffusionmodules/discretizer.py` (LegacyDDPM, EDM) plus the schedule
wrappers of the demos: `Img2ImgDiscretizationWrapper`, `Txt2NoisyDiscretizationWrapper`
(`scripts/demo/discretization.py`) and the turbo sub-schedule (`scripts/demo/turbo.py`).
The user-selectable schedulers (karras, exponential, sgm_uniform, ...) are in
gm.diffusion.schedulers, over a model's sigma range.

Every function returns a float32 CPU tensor in descending order; with `append_zero` (the default)
a trailing 0 is added, so N steps give N+1 values, like k-diffusion's `get_sigmas_*`.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import torch

from gm.errors import UsageError

# SD/SDXL "scaled linear" beta schedule: betas = linspace(sqrt(b0), sqrt(b1), 1000)**2.
DDPM_LINEAR_START = 0.00085
DDPM_LINEAR_END = 0.012
DDPM_NUM_TIMESTEPS = 1000


def _alphas_cumprod(linear_start: float, linear_end: float, num_timesteps: int) -> np.ndarray:
    # The reference builds the betas with torch.linspace in float64, then cumprods in numpy.
    betas = torch.linspace(linear_start**0.5, linear_end**0.5, num_timesteps, dtype=torch.float64) ** 2
    return np.cumprod(1.0 - betas.numpy(), axis=0)


def _append_zero(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def ddpm_timesteps(n: int, num_timesteps: int = DDPM_NUM_TIMESTEPS) -> np.ndarray:
    """The ascending integer timesteps LegacyDDPM uses for `n` steps (n=50 -> 19, 39, ..., 999)."""
    if n < 1 or n > num_timesteps:
        raise UsageError(
            f"LegacyDDPM schedule needs 1..{num_timesteps} steps, got {n}",
            hint=f"use at most {num_timesteps} steps",
        )
    if n == num_timesteps:
        return np.arange(num_timesteps)
    # Truncation (not rounding) of a linspace that never reaches 0: t=0 is not used for n < 1000.
    return np.linspace(num_timesteps - 1, 0, n, endpoint=False).astype(int)[::-1]


def legacy_ddpm_sigmas(
    n: int,
    append_zero: bool = True,
    linear_start: float = DDPM_LINEAR_START,
    linear_end: float = DDPM_LINEAR_END,
    num_timesteps: int = DDPM_NUM_TIMESTEPS,
) -> torch.Tensor:
    """LegacyDDPM sigmas for `n` steps, descending; sigma_t = sqrt((1 - abar_t) / abar_t).

    The ratio is taken in float64, cast to float32, and the square root is taken in float32,
    exactly as the reference does (it matters in the last bits of the 1000-entry table).
    """
    alphas_cumprod = _alphas_cumprod(linear_start, linear_end, num_timesteps)[ddpm_timesteps(n, num_timesteps)]
    ratio = torch.tensor((1.0 - alphas_cumprod) / alphas_cumprod, dtype=torch.float32)
    sigmas = torch.flip(ratio**0.5, (0,))
    return _append_zero(sigmas) if append_zero else sigmas


def ddpm_sigma_table(
    linear_start: float = DDPM_LINEAR_START,
    linear_end: float = DDPM_LINEAR_END,
    num_timesteps: int = DDPM_NUM_TIMESTEPS,
) -> torch.Tensor:
    """The ascending per-timestep sigma table (index = timestep) of the discrete denoiser."""
    descending = legacy_ddpm_sigmas(num_timesteps, False, linear_start, linear_end, num_timesteps)
    return torch.flip(descending, (0,))  # (num_timesteps,) ascending


def edm_sigmas(
    n: int,
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
    append_zero: bool = True,
) -> torch.Tensor:
    """Karras et al. (2022) eq. 5: interpolate sigma^(1/rho) linearly from sigma_max to sigma_min."""
    if n < 1:
        raise UsageError(f"EDM schedule needs at least 1 step, got {n}", hint="use steps >= 1")
    ramp = torch.linspace(0, 1, n)  # float32, like the reference
    min_inv_rho = sigma_min ** (1 / rho)
    max_inv_rho = sigma_max ** (1 / rho)
    sigmas = (max_inv_rho + ramp * (min_inv_rho - max_inv_rho)) ** rho
    return _append_zero(sigmas) if append_zero else sigmas


def img2img_sigmas(sigmas: torch.Tensor, strength: float) -> torch.Tensor:
    """Keep the lowest max(floor(strength * len), 1) sigmas (the trailing 0 included).

    N=50, strength 0.75 keeps 38 values: 37 steps starting at sigma 3.9126. A strength below
    1/(N+1) keeps only the 0, i.e. no step at all.
    """
    if not 0.0 <= strength <= 1.0:
        raise UsageError(f"img2img strength must be in [0, 1], got {strength}", hint="e.g. --strength 0.75")
    ascending = torch.flip(sigmas, (0,))
    kept = ascending[: max(int(strength * len(ascending)), 1)]
    return torch.flip(kept, (0,))


def txt2noisy_sigmas(sigmas: torch.Tensor, strength: float, original_steps: int | None = None) -> torch.Tensor:
    """The base model's schedule in the refiner hand-off: stop early at a non-zero sigma.

    With S = original_steps + 1 (default len(sigmas)), p = max(min(floor(strength*S) - 1, S - 1), 0)
    and the kept schedule is sigma_asc[p:] (descending), ending at sigma_asc[p] instead of 0.
    N=50, strength 0.15: 44 steps ending at 0.3866, where the refiner's img2img(0.15) starts.
    """
    if not 0.0 <= strength <= 1.0:
        raise UsageError(f"refiner strength must be in [0, 1], got {strength}", hint="e.g. 0.15")
    ascending = torch.flip(sigmas, (0,))
    steps = len(ascending) if original_steps is None else original_steps + 1
    prune = max(min(int(strength * steps) - 1, steps - 1), 0)
    return torch.flip(ascending[prune:], (0,))


TURBO_INDICES = (0, 100, 200, 300)


def turbo_sigmas(n: int) -> torch.Tensor:
    """SDXL-/SD-Turbo sub-schedule: LegacyDDPM(1000) at indices [0, 100, 200, 300][:n] + [1000].

    1 step is 14.6146 -> 0; 4 steps are 14.6146, 8.3028, 5.0878, 3.3211, 0.
    """
    if not 1 <= n <= len(TURBO_INDICES):
        raise UsageError(f"turbo runs 1 to {len(TURBO_INDICES)} steps, got {n}", hint="use --steps 1")
    full = legacy_ddpm_sigmas(DDPM_NUM_TIMESTEPS)  # (1001,) descending, index 1000 is the 0
    return full[list(TURBO_INDICES[:n]) + [DDPM_NUM_TIMESTEPS]]


def start_scale(sigmas: torch.Tensor) -> torch.Tensor:
    """The factor the start noise is multiplied by: sqrt(1 + sigma_0^2), not sigma_0 (float32, 0-dim)."""
    return torch.sqrt(1.0 + sigmas[0].float() ** 2.0)


# Discretization kinds a preset may name (`discretization = "edm"`).
DISCRETIZATIONS: dict[str, Callable[..., torch.Tensor]] = {
    "legacy_ddpm": legacy_ddpm_sigmas,
    "edm": edm_sigmas,
}
