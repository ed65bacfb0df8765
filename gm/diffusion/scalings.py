"""Denoiser preconditioning (c_skip, c_out, c_in, c_noise) for each parameterisation.

Mirrors sgm `modules/diffusionmodules/denoiser_scaling.py`; the table is Karras et al. (2022),
Table 1. D(x, sigma) = F(x * c_in, c_noise) * c_out + x * c_skip. Always computed in float32,
whatever precision the network runs in (as NVlabs/edm does).
"""

from __future__ import annotations

import functools
from collections.abc import Callable

import torch

from gm.errors import PresetError

Scaling = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # c_skip, c_out, c_in, c_noise
ScalingFn = Callable[[torch.Tensor], Scaling]


def eps_scaling(sigma: torch.Tensor) -> Scaling:
    """The network predicts the added noise (SD 2.1-base, SDXL): D = x - sigma * eps."""
    sigma = sigma.float()
    c_skip = torch.ones_like(sigma)
    c_out = -sigma
    c_in = 1 / (sigma**2 + 1.0) ** 0.5
    c_noise = sigma.clone()
    return c_skip, c_out, c_in, c_noise


def v_scaling(sigma: torch.Tensor) -> Scaling:
    """The network predicts v (SD 2.1-768): c_noise is sigma (the discrete denoiser indexes it)."""
    sigma = sigma.float()
    c_skip = 1.0 / (sigma**2 + 1.0)
    c_out = -sigma / (sigma**2 + 1.0) ** 0.5
    c_in = 1.0 / (sigma**2 + 1.0) ** 0.5
    c_noise = sigma.clone()
    return c_skip, c_out, c_in, c_noise


def v_edm_scaling(sigma: torch.Tensor) -> Scaling:
    """v-prediction with EDM's continuous c_noise = ln(sigma) / 4 (SVD, SV3D, SV4D)."""
    c_skip, c_out, c_in, _ = v_scaling(sigma)
    c_noise = 0.25 * sigma.float().log()
    return c_skip, c_out, c_in, c_noise


def edm_scaling(sigma: torch.Tensor, sigma_data: float = 0.5) -> Scaling:
    """EDM preconditioning with data std `sigma_data` (the toy training configs)."""
    sigma = sigma.float()
    c_skip = sigma_data**2 / (sigma**2 + sigma_data**2)
    c_out = sigma * sigma_data / (sigma**2 + sigma_data**2) ** 0.5
    c_in = 1 / (sigma**2 + sigma_data**2) ** 0.5
    c_noise = 0.25 * sigma.log()
    return c_skip, c_out, c_in, c_noise


# Scaling kinds a preset may name (`scaling = "v_edm"`); "edm" uses sigma_data 0.5.
SCALINGS: dict[str, ScalingFn] = {
    "eps": eps_scaling,
    "v": v_scaling,
    "v_edm": v_edm_scaling,
    "edm": edm_scaling,
}


def scaling_by_name(name: str, sigma_data: float = 0.5) -> ScalingFn:
    """The scaling function for `name`; `sigma_data` only applies to "edm"."""
    if name not in SCALINGS:
        raise PresetError(f"unknown scaling {name!r}", hint=f"use one of {', '.join(SCALINGS)}")
    if name == "edm":
        return functools.partial(edm_scaling, sigma_data=sigma_data)
    return SCALINGS[name]
