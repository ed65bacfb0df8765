"""Training-side diffusion math: sigma sampling, loss weighting and the denoising loss.

Mirrors sgm `modules/diffusionmodules/sigma_sampling.py` (EDMSampling, DiscreteSampling),
`loss_weighting.py` (EDM, V, Eps, Unit) and `loss.py` (StandardDiffusionLoss, types l2 and l1):

    z_noisy = z + eps * sigma,   loss_i = mean over non-batch dims of w(sigma_i) * (D(z_noisy) - z)^2

Random draws take an optional CPU `torch.Generator` so that a run resumes exactly.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Literal

import torch

from gm.diffusion.denoiser import append_dims
from gm.diffusion.schedules import DDPM_NUM_TIMESTEPS, ddpm_sigma_table
from gm.errors import PresetError

LossType = Literal["l2", "l1"]


def sample_sigmas_edm(
    n: int, p_mean: float = -1.2, p_std: float = 1.2, generator: torch.Generator | None = None
) -> torch.Tensor:
    """EDM's log-normal training noise levels: ln(sigma) ~ N(p_mean, p_std^2). (n,) float32 on CPU."""
    return (p_mean + p_std * torch.randn((n,), generator=generator)).exp()


def sample_sigmas_discrete(
    n: int, num_idx: int = DDPM_NUM_TIMESTEPS, generator: torch.Generator | None = None
) -> torch.Tensor:
    """A uniform DDPM timestep 0..num_idx-1 per sample, returned as its LegacyDDPM sigma. (n,)"""
    idx = torch.randint(0, num_idx, (n,), generator=generator)
    return ddpm_sigma_table(num_timesteps=num_idx)[idx]


SIGMA_SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {
    "edm": sample_sigmas_edm,
    "discrete": sample_sigmas_discrete,
}


def edm_weighting(sigma: torch.Tensor, sigma_data: float = 0.5) -> torch.Tensor:
    """lambda(sigma) = (sigma^2 + sigma_data^2) / (sigma * sigma_data)^2: unit loss at every sigma for EDM."""
    return (sigma**2 + sigma_data**2) / (sigma * sigma_data) ** 2


def v_weighting(sigma: torch.Tensor) -> torch.Tensor:
    """EDM weighting with sigma_data = 1 (what v-prediction implies)."""
    return edm_weighting(sigma, sigma_data=1.0)


def eps_weighting(sigma: torch.Tensor) -> torch.Tensor:
    """sigma^-2: an x0-space loss weighted like the epsilon-prediction loss."""
    return sigma**-2.0


def unit_weighting(sigma: torch.Tensor) -> torch.Tensor:
    """Weight 1 everywhere."""
    return torch.ones_like(sigma)


LOSS_WEIGHTINGS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "edm": edm_weighting,
    "v": v_weighting,
    "eps": eps_weighting,
    "unit": unit_weighting,
}


def weighting_by_name(name: str, sigma_data: float = 0.5) -> Callable[[torch.Tensor], torch.Tensor]:
    """The loss weighting for `name`; `sigma_data` only applies to "edm"."""
    if name not in LOSS_WEIGHTINGS:
        raise PresetError(f"unknown loss weighting {name!r}", hint=f"use one of {', '.join(LOSS_WEIGHTINGS)}")
    if name == "edm":
        return functools.partial(edm_weighting, sigma_data=sigma_data)
    return LOSS_WEIGHTINGS[name]


def diffusion_loss(
    denoise: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    z: torch.Tensor,
    sigma: torch.Tensor,
    noise: torch.Tensor,
    weighting: Callable[[torch.Tensor], torch.Tensor],
    loss_type: LossType = "l2",
) -> torch.Tensor:
    """Per-sample denoising loss (B,); take `.mean()` for the batch loss.

    denoise: (z_noisy, sigma (B,)) -> D, e.g. a Denoiser with the conditioning bound.
    z: clean latents (B, ...); sigma: (B,) from a sigma sampler; noise: standard normal like z.
    """
    sigma = sigma.to(z.device, torch.float32)
    z_noisy = z + noise * append_dims(sigma, z.ndim)
    denoised = denoise(z_noisy, sigma)
    w = append_dims(weighting(sigma), z.ndim)
    if loss_type == "l2":
        err = w * (denoised - z) ** 2
    elif loss_type == "l1":
        err = w * (denoised - z).abs()
    else:
        raise PresetError(f"unknown loss type {loss_type!r}", hint="use l2 or l1")
    return err.reshape(z.shape[0], -1).mean(1)  # (B,)
