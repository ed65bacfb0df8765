"""The sampling recipe of a preset's tables: schedule, guider and sampler options in one place.

`gm.model.Model.sample` (every pipeline) and the trainer's sample grids both build their run from
here, so a preset's `[sampler]` / `[guider]` tables mean the same thing everywhere. The tables are
read duck-typed (any object with the fields of gm.presets.SamplerSpec / GuiderSpec), so this layer
knows nothing of preset files. Names are checked against the registries, never against lists.
"""

from __future__ import annotations

from typing import Any

import torch

from gm.diffusion import samplers, schedulers, schedules
from gm.errors import UsageError

# "normal" is the preset's own discretization; the others come from gm.diffusion.schedulers.SCHEDULERS,
# spanning the model's sigma range (the DDPM table for legacy_ddpm models, sigma_min..sigma_max for EDM).
NORMAL = "normal"


def scheduler_names() -> tuple[str, ...]:
    return tuple(schedulers.SCHEDULERS)


def check_names(sampler: str, scheduler: str = NORMAL, discretization: str | None = None) -> None:
    """UsageError naming the registry's choices for an unknown sampler / scheduler / discretization."""
    if sampler not in samplers.SAMPLERS:
        raise UsageError(f"unknown sampler {sampler!r}", f"use one of {', '.join(samplers.SAMPLERS)}")
    if scheduler not in scheduler_names():
        raise UsageError(f"unknown scheduler {scheduler!r}", f"use one of {', '.join(scheduler_names())}")
    if discretization is not None and discretization not in schedules.DISCRETIZATIONS:
        raise UsageError(f"unknown discretization {discretization!r}",
                         f"use one of {', '.join(schedules.DISCRETIZATIONS)}")


def sigmas_for(spec: Any, steps: int | None = None) -> torch.Tensor:
    """The descending schedule (trailing 0) of a sampler table, `steps` overriding its own; the
    table's `scheduler` picks the spacing ("normal": its discretization)."""
    n = spec.steps if steps is None else steps
    scheduler = getattr(spec, "scheduler", NORMAL)
    if n < 1:
        raise UsageError(f"steps must be at least 1, got {n}", "e.g. --steps 30")
    check_names(spec.name, scheduler, spec.discretization)
    if scheduler != NORMAL:
        model = schedulers.model_sigmas(spec.discretization == "legacy_ddpm", spec.discretization,
                                        spec.sigma_min, spec.sigma_max, spec.rho)
        return schedulers.scheduler_sigmas(scheduler, n, model)
    if spec.discretization == "edm":
        return schedules.edm_sigmas(n, spec.sigma_min, spec.sigma_max, spec.rho)
    if n > 1000:
        raise UsageError(f"the DDPM schedule has 1000 steps at most, got {n}", "use --steps 1000 or fewer")
    return schedules.legacy_ddpm_sigmas(n)


def sampler_options(spec: Any) -> dict[str, float]:
    """The table's settings that the chosen sampler takes (s_churn for euler, eta for euler_a...); an
    unset eta / order (None) leaves the sampler's own default (ddim: eta 0, uni_pc: order 3, lms: 4)."""
    values = {"s_churn": spec.s_churn, "s_tmin": spec.s_tmin, "s_tmax": spec.s_tmax,
              "s_noise": spec.s_noise, "eta": spec.eta, "order": spec.order}
    return {k: v for k, v in values.items() if k in samplers.sampler_options(spec.name) and v is not None}


def run(spec: Any, denoise: samplers.Denoise, noise: torch.Tensor, sigmas: torch.Tensor,
        generator: torch.Generator, noise_fn: samplers.NoiseFn | None = None,
        callback: samplers.Callback | None = None) -> torch.Tensor:
    """Sample from unit `noise` along `sigmas` with the table's sampler; churn/ancestral noise from the
    CPU `generator` (a seed gives the same result on every device), or from `noise_fn`."""
    if len(sigmas) == 1:  # nothing to run, but the start is still at sigma_0 (e.g. a hand-off at sigma_max)
        return noise.float() * schedules.start_scale(sigmas)
    if noise_fn is None:
        noise_fn = samplers.make_noise_fn(generator, tuple(noise.shape), noise.device, torch.float32)
    return samplers.sample(spec.name, denoise, noise, sigmas, noise_fn=noise_fn, callback=callback,
                           **sampler_options(spec))
