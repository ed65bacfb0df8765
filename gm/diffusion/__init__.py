"""Diffusion core: schedules, denoiser scalings, the denoiser, guiders, samplers, training loss.

Mirrors sgm `modules/diffusionmodules/` (discretizer, denoiser*, guiders, sampling*, loss*,
sigma_sampling). Pure functions and frozen dataclasses; samplers only see `denoise(x, sigma)`.
"""

from gm.diffusion.denoiser import Cond, Denoiser, call_unet, make_denoiser, unet_network
from gm.diffusion.guiders import GUIDERS, guided
from gm.diffusion.samplers import A1111_SAMPLER_NAMES, SAMPLERS, a1111_name, make_noise_fn, sample
from gm.diffusion.scalings import SCALINGS, scaling_by_name
from gm.diffusion.schedulers import SCHEDULERS, ModelSigmas, model_sigmas, scheduler_sigmas
from gm.diffusion.schedules import (
    DISCRETIZATIONS,
    ddpm_sigma_table,
    edm_sigmas,
    img2img_sigmas,
    legacy_ddpm_sigmas,
    turbo_sigmas,
    txt2noisy_sigmas,
)
from gm.diffusion.training import LOSS_WEIGHTINGS, SIGMA_SAMPLERS, diffusion_loss

__all__ = [
    "A1111_SAMPLER_NAMES",
    "ModelSigmas",
    "SCHEDULERS",
    "a1111_name",
    "model_sigmas",
    "scheduler_sigmas",
    "Cond",
    "DISCRETIZATIONS",
    "Denoiser",
    "GUIDERS",
    "LOSS_WEIGHTINGS",
    "SAMPLERS",
    "SCALINGS",
    "SIGMA_SAMPLERS",
    "call_unet",
    "ddpm_sigma_table",
    "diffusion_loss",
    "edm_sigmas",
    "guided",
    "img2img_sigmas",
    "legacy_ddpm_sigmas",
    "make_denoiser",
    "make_noise_fn",
    "sample",
    "scaling_by_name",
    "turbo_sigmas",
    "txt2noisy_sigmas",
    "unet_network",
]
