"""The denoiser D(x, sigma) around a network, and the adapter that calls a (video) UNet.

Mirrors sgm `modules/diffusionmodules/denoiser.py` (Denoiser, DiscreteDenoiser) and
`wrappers.py` (OpenAIWrapper). As in NVlabs/edm, the preconditioning is computed in float32 and
only the network runs in low precision:

    denoised = network(x * c_in, c_noise, cond) * c_out + x * c_skip

Discrete mode (SD 2.x, SDXL, Turbo): sigma is first snapped to the nearest entry of the 1000-entry
LegacyDDPM table, c_skip/c_out/c_in come from the snapped sigma, and c_noise is the integer index
(= the DDPM timestep). Continuous mode (SVD/SV3D/SV4D, EDM training): c_noise from the scaling.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
from torch import nn

from gm.diffusion.scalings import ScalingFn, scaling_by_name
from gm.diffusion.schedules import ddpm_sigma_table

# Conditioning: "crossattn" (B, L, D), "vector" (B, D), "concat" (B, C, H, W) and extra named
# model inputs (num_video_frames, image_only_indicator, cond_view, cond_motion, ...).
Cond = Mapping[str, torch.Tensor | int]
Network = Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]

# Keys with a fixed destination in the UNet call; everything else is passed by name.
ROUTED_KEYS = ("crossattn", "vector", "concat")


def append_dims(t: torch.Tensor, ndim: int) -> torch.Tensor:
    """(B,) -> (B, 1, ..., 1) with `ndim` dims in total, for broadcasting over a batch."""
    return t.reshape(t.shape + (1,) * (ndim - t.ndim))


def call_unet(unet: nn.Module, x: torch.Tensor, c_noise: torch.Tensor, cond: Cond) -> torch.Tensor:
    """Call `unet(x, timesteps, context=, y=, **named)` from a conditioning dict.

    "concat" is appended to x's channels, "crossattn" goes to `context`, "vector" to `y`; every
    other key is passed by its own name (no positional slots). Floating tensors are cast to x's
    dtype, which the Denoiser has already set to the network's.
    """
    named: dict[str, torch.Tensor | int] = {}
    for key, value in cond.items():
        if key in ROUTED_KEYS:
            continue
        named[key] = value.to(x.dtype) if isinstance(value, torch.Tensor) and value.is_floating_point() else value
    if "concat" in cond:
        concat = cond["concat"]
        assert isinstance(concat, torch.Tensor)
        x = torch.cat((x, concat.to(x.dtype)), dim=1)  # (B, C + C_concat, H, W)
    context = cond.get("crossattn")
    vector = cond.get("vector")
    return unet(
        x,
        c_noise,
        context=context.to(x.dtype) if isinstance(context, torch.Tensor) else None,
        y=vector.to(x.dtype) if isinstance(vector, torch.Tensor) else None,
        **named,
    )


def unet_network(unet: nn.Module) -> Network:
    """A `network(x, c_noise, cond)` callable for a sgm-style (video) UNet."""

    def network(x: torch.Tensor, c_noise: torch.Tensor, cond: Cond) -> torch.Tensor:
        return call_unet(unet, x, c_noise, cond)

    return network


@dataclass(frozen=True, eq=False)
class Denoiser:
    """D(x, sigma, cond) for one network. Build with `make_denoiser`.

    network: `network(x, c_noise, cond) -> out`, fed in `dtype`; its output is cast back to fp32.
    scaling: sigma -> (c_skip, c_out, c_in, c_noise), see gm.diffusion.scalings.
    sigma_table: ascending LegacyDDPM sigmas for discrete mode, or None for continuous.
    """

    network: Network
    scaling: ScalingFn
    sigma_table: torch.Tensor | None = None
    dtype: torch.dtype = torch.float32

    def quantize(self, sigma: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Nearest table entry: (snapped sigma, its int64 index). Discrete mode only."""
        assert self.sigma_table is not None
        table = self.sigma_table.to(sigma.device)
        idx = (sigma.float()[None] - table.reshape(-1, *([1] * sigma.ndim))).abs().argmin(dim=0)  # like sigma
        return table[idx], idx

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond) -> torch.Tensor:
        """x: (B, ...) float32, sigma: (B,) -> denoised (B, ...) float32."""
        x = x.float()
        if self.sigma_table is not None:
            sigma, c_noise_idx = self.quantize(sigma)
        c_skip, c_out, c_in, c_noise = (append_dims(c, x.ndim) for c in self.scaling(sigma.float()))
        c_noise = c_noise.reshape(sigma.shape)  # (B,)
        if self.sigma_table is not None:
            c_noise = c_noise_idx  # the integer timestep index of the snapped sigma
        out = self.network((x * c_in).to(self.dtype), c_noise, cond)
        return out.float() * c_out + x * c_skip


def make_denoiser(
    network: Network,
    scaling: str,
    discrete: bool,
    sigma_data: float = 0.5,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> Denoiser:
    """A Denoiser from preset vocabulary: scaling "eps"|"v"|"v_edm"|"edm", discrete (DDPM table) or not."""
    table = ddpm_sigma_table().to(device) if discrete else None
    return Denoiser(network=network, scaling=scaling_by_name(scaling, sigma_data), sigma_table=table, dtype=dtype)
