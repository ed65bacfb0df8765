"""User-selectable schedulers: `SCHEDULERS[name](n, model) -> sigmas` (descending, n + 1 values,
the last 0), spanning the model's own sigma range (`ModelSigmas`).

For a discrete (DDPM-trained) model the range and the per-timestep table are the 1000-entry
LegacyDDPM table: sigma_min = table[0] (0.0292), sigma_max = table[999] (14.6146). A continuous
model (SVD/SV3D/SV4D) has the preset's sigma_min/sigma_max and, for the table-based schedulers,
1000 log-spaced levels between them (as ComfyUI models continuous EDM sampling).

Formulas (i = 0..n-1, ramp r_i = i / (n - 1), T = len(table)):
* normal: the preset's own discretization (LegacyDDPM or EDM), today's schedule.
* karras (Karras et al. 2022, eq. 5): (smax^(1/rho) + r_i (smin^(1/rho) - smax^(1/rho)))^rho, rho 7.
* exponential: exp(ln smax + r_i (ln smin - ln smax)), evenly spaced in log sigma.
* sgm_uniform: timesteps linspace(T - 1, 0, n + 1) without the last, sigma(t) by linear
  interpolation of ln sigma in the table (ComfyUI's and A1111's "SGM Uniform"; close to, not
  equal to, diffusers' "trailing" spacing 999 - i * 1000 / n).
* simple: table[T - 1 - floor(i T / n)], every (T/n)-th level from the top (ComfyUI's simple).
* ddim_uniform: timesteps i * (T // n) + 1 from the top down (DDIM with SD's steps_offset 1,
  diffusers' "leading" spacing).
* beta (Lee et al. 2024, "Beta sampling is all you need"): timesteps round(F^-1(1 - i/n) * (T - 1))
  with F the Beta(0.6, 0.6) CDF, repeated timesteps dropped (so a few steps may merge, as ComfyUI).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from gm.diffusion.schedules import ddpm_sigma_table, edm_sigmas, legacy_ddpm_sigmas
from gm.errors import UsageError


@dataclass(frozen=True)
class ModelSigmas:
    """What a scheduler needs to know about a model's noise levels (build with `model_sigmas`)."""

    sigma_min: float
    sigma_max: float
    table: torch.Tensor  # (T,) ascending float32 sigmas, one per timestep
    normal: Callable[[int], torch.Tensor]  # the preset's discretization: n -> n + 1 sigmas


def model_sigmas(
    discrete: bool,
    discretization: str = "legacy_ddpm",
    sigma_min: float = 0.002,
    sigma_max: float = 80.0,
    rho: float = 7.0,
) -> ModelSigmas:
    """A model's range: the DDPM table when `discrete`, else [sigma_min, sigma_max] (the preset's).

    `discretization` ("legacy_ddpm" | "edm", with sigma_min/sigma_max/rho) is what `normal` runs."""
    if discretization == "edm":
        def normal(n: int) -> torch.Tensor:
            return edm_sigmas(n, sigma_min, sigma_max, rho)
    elif discretization == "legacy_ddpm":
        normal = legacy_ddpm_sigmas
    else:
        raise UsageError(f"unknown discretization {discretization!r}", hint="use legacy_ddpm or edm")
    if discrete:
        table = ddpm_sigma_table()
        return ModelSigmas(float(table[0]), float(table[-1]), table, normal)
    table = torch.linspace(math.log(sigma_min), math.log(sigma_max), 1000, dtype=torch.float64).exp().float()
    return ModelSigmas(sigma_min, sigma_max, table, normal)


def _finish(sigmas: torch.Tensor | list[float]) -> torch.Tensor:
    sigmas = torch.as_tensor(sigmas, dtype=torch.float32)
    return torch.cat([sigmas, sigmas.new_zeros(1)])


def karras_sigmas(n: int, model: ModelSigmas, rho: float = 7.0) -> torch.Tensor:
    """Karras et al. (2022) eq. 5 over the model's range, rho 7 (as A1111, ComfyUI, k-diffusion)."""
    return edm_sigmas(n, model.sigma_min, model.sigma_max, rho)


def exponential_sigmas(n: int, model: ModelSigmas) -> torch.Tensor:
    """Evenly spaced in ln sigma from sigma_max down to sigma_min."""
    return _finish(torch.linspace(math.log(model.sigma_max), math.log(model.sigma_min), n).exp())


def _sigma_at(model: ModelSigmas, t: torch.Tensor) -> torch.Tensor:
    """sigma at fractional timesteps t: linear interpolation of ln sigma between table entries."""
    log_table = model.table.double().log()
    low = t.floor().long().clamp(0, len(log_table) - 1)
    high = t.ceil().long().clamp(0, len(log_table) - 1)
    w = t - low.double()
    return ((1 - w) * log_table[low] + w * log_table[high]).exp().float()


def sgm_uniform_sigmas(n: int, model: ModelSigmas) -> torch.Tensor:
    """Timesteps evenly spaced from the top, n + 1 points with the last (t_min) dropped."""
    top = len(model.table) - 1
    t = torch.linspace(top, 0, n + 1, dtype=torch.float64)[:-1]
    return _finish(_sigma_at(model, t))


def simple_sigmas(n: int, model: ModelSigmas) -> torch.Tensor:
    """Every (T/n)-th table entry from the top."""
    size = len(model.table)
    step = size / n
    return _finish(model.table[[size - 1 - int(i * step) for i in range(n)]])


def ddim_uniform_sigmas(n: int, model: ModelSigmas) -> torch.Tensor:
    """Timesteps i * (T // n) + 1 (clipped to the table), highest first."""
    size = len(model.table)
    stride = max(size // n, 1)
    ts = [min(i * stride + 1, size - 1) for i in range(n)]
    return _finish(model.table[ts[::-1]])


def _beta_cdf_inverse(p: np.ndarray, a: float, b: float) -> np.ndarray:
    """Beta(a, b) quantiles for a, b < 1 without scipy: the CDF integrated on x = sin^2(theta)
    (where the density 2 sin^(2a-1) cos^(2b-1) is bounded), inverted by interpolation."""
    theta = np.linspace(0.0, np.pi / 2, 200_001)
    dens = 2 * np.sin(theta) ** (2 * a - 1) * np.cos(theta) ** (2 * b - 1)
    cdf = np.concatenate([[0.0], np.cumsum((dens[1:] + dens[:-1]) / 2 * np.diff(theta))])
    return np.interp(p, cdf / cdf[-1], np.sin(theta) ** 2)


def beta_sigmas(n: int, model: ModelSigmas, alpha: float = 0.6, beta: float = 0.6) -> torch.Tensor:
    """Beta(0.6, 0.6)-distributed timesteps: dense at both ends of the range (see module docstring)."""
    top = len(model.table) - 1
    ts = np.rint(_beta_cdf_inverse(1 - np.linspace(0, 1, n, endpoint=False), alpha, beta) * top).astype(int)
    kept = [int(t) for k, t in enumerate(ts) if k == 0 or t != ts[k - 1]]
    return _finish(model.table[kept])


def normal_sigmas(n: int, model: ModelSigmas) -> torch.Tensor:
    """The preset's own discretization (bit-identical to the schedule used without --scheduler)."""
    return model.normal(n)


SCHEDULERS: dict[str, Callable[[int, ModelSigmas], torch.Tensor]] = {
    "normal": normal_sigmas,
    "karras": karras_sigmas,
    "exponential": exponential_sigmas,
    "sgm_uniform": sgm_uniform_sigmas,
    "simple": simple_sigmas,
    "ddim_uniform": ddim_uniform_sigmas,
    "beta": beta_sigmas,
}

# A1111's "Schedule type" labels (appended to the sampler name, e.g. "DPM++ 2M Karras").
A1111_SCHEDULE_NAMES: dict[str, str] = {
    "normal": "",
    "karras": "Karras",
    "exponential": "Exponential",
    "sgm_uniform": "SGM Uniform",
    "simple": "Simple",
    "ddim_uniform": "DDIM",
    "beta": "Beta",
}


def scheduler_sigmas(name: str, n: int, model: ModelSigmas) -> torch.Tensor:
    """`SCHEDULERS[name](n, model)` with the user-facing checks (known name, 1 <= n <= table size)."""
    if name not in SCHEDULERS:
        raise UsageError(f"unknown scheduler {name!r}", hint=f"use one of {', '.join(SCHEDULERS)}")
    if n < 1:
        raise UsageError(f"steps must be at least 1, got {n}", hint="e.g. --steps 30")
    if n > len(model.table) and name in ("simple", "ddim_uniform", "beta", "sgm_uniform"):
        raise UsageError(f"the {name} schedule has {len(model.table)} steps at most, got {n}",
                         hint=f"use --steps {len(model.table)} or fewer")
    return SCHEDULERS[name](n, model)
