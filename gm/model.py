"""A loaded preset — its modules, runtime, latent geometry and sampling recipe — and the pieces of
it the pipelines share (geometry, the sampler run with progress and finite check).

`ModelBase` is what the pipelines see; `gm.api.Model` adds the family methods (txt2img, refine, turbo,
img2vid, orbit, video4d) on top of the pipelines, so this module never imports them:

    import gm
    m = gm.load("sdxl-base-1.0")                           # a gm.api.Model
    images = m.txt2img("a red fox in the snow", steps=30)   # PIL images, nothing written
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from gm import device as dev
from gm import presets
from gm.addons import Addons, addons_from, check_tiling
from gm.console import console
from gm.device import Runtime, on_device
from gm.diffusion import guiders, recipe, samplers
from gm.diffusion.denoiser import Cond, Denoiser, make_denoiser, unet_network
from gm.loader import load
from gm.models.build import Engine, network_config, vae_config
from gm.outputs import check_finite
from gm.presets import Preset


@dataclass(frozen=True)
class Geometry:
    """Latent layout of a preset, worked out in this one place: latent channels, the VAE's
    downsampling factor, and the pixel grid sizes must fall on (factor x the UNet's downsampling:
    SDXL base 32, SD 2.1 / the refiner / SVD 64), else the skip connections do not line up."""

    channels: int
    factor: int
    grid: int

    def shape(self, height: int, width: int, frames: int = 1) -> tuple[int, int, int, int]:
        return frames, self.channels, height // self.factor, width // self.factor


def geometry(preset: Preset) -> Geometry:
    """From the validated [network] and [vae] configs (their real defaults, not guesses)."""
    network, _ = network_config(preset)
    vae = vae_config(preset)
    factor = 2 ** (len(vae[0].ch_mult) - 1) if vae is not None else 1
    return Geometry(network.out_channels, factor, factor * 2 ** (len(network.channel_mult) - 1))


@dataclass
class ModelBase:
    """A loaded preset. `preset` is the loaded one; a job may change its sampling tables, never its
    architecture."""

    preset: Preset
    engine: Engine
    runtime: Runtime
    checkpoint: str | Path | None = None
    unsafe_pickle: bool = False
    addons: Addons = Addons()  # LoRAs merged and the VAE loaded at load time
    vae_tiling: str = "auto"  # image decode / encode in tiles: auto, on or off (may be changed between calls)

    @classmethod
    def load(cls, preset: str | Preset, *, checkpoint: str | Path | None = None, device: str = "auto",
             dtype: str | None = None, low_vram: bool | None = None, compile: bool | None = None,
             unsafe_pickle: bool = False, overrides: tuple[str, ...] = (), loras: Any = (),
             vae: str | Path | None = None, vae_tiling: str = "auto") -> ModelBase:
        """Read the preset (a name, a .toml path or a Preset), check and load its checkpoint, merge
        `loras` (("file or name", scale) pairs or "FILE:SCALE" strings) and load `vae` over its VAE."""
        check_tiling(vae_tiling)
        p = preset if isinstance(preset, Preset) else presets.load(preset, list(overrides))
        runtime = dev.runtime_for(p.perf, device, dtype, low_vram, compile)
        extra = addons_from(loras, vae)
        return cls(p, load(p, runtime, checkpoint, unsafe_pickle, extra), runtime, checkpoint, unsafe_pickle,
                   extra, vae_tiling)

    @property
    def geometry(self) -> Geometry:
        return geometry(self.preset)

    def denoiser(self, preset: Preset | None = None) -> Denoiser:
        spec = (preset or self.preset).denoiser
        return make_denoiser(unet_network(self.engine.network), spec.scaling, spec.kind == "discrete",
                             sigma_data=spec.sigma_data, device=self.runtime.device, dtype=self.runtime.dtype)

    def guided(self, cond: Cond, uc: Cond | None, preset: Preset | None = None, frames: int = 1,
               extra_keys: tuple[str, ...] = ()) -> samplers.Denoise:
        """`denoise(x, sigma)` with the preset's guider (CFG at scale 1 skips the uncond pass)."""
        p = preset or self.preset
        guider = guiders.from_spec(p.guider, frames, extra_keys=extra_keys)
        if not guiders.uses_uncond(guider):
            guider, uc = guiders.IdentityGuider(), None
        return guiders.guided(self.denoiser(p), guider, cond, uc)

    def sample(self, denoise: samplers.Denoise, noise: torch.Tensor, sigmas: torch.Tensor,
               generator: torch.Generator, *, preset: Preset | None = None, label: str = "sample",
               noise_fn: samplers.NoiseFn | None = None) -> torch.Tensor:
        """One sampler run (the preset's [sampler] table) with a progress bar; finite or a GmError."""
        with on_device(self.engine.network, self.runtime), torch.inference_mode():
            return run_sampler((preset or self.preset).sampler, denoise, noise, sigmas, generator, label,
                               noise_fn=noise_fn)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.preset.name!r}, device={self.runtime.device}, dtype={self.runtime.dtype})"


def run_sampler(spec: Any, denoise: samplers.Denoise, noise: torch.Tensor, sigmas: torch.Tensor,
                generator: torch.Generator, label: str = "sample", name: str | None = None,
                noise_fn: samplers.NoiseFn | None = None, on_step: Any = None) -> torch.Tensor:
    """gm.diffusion.recipe.run with a progress bar (`name` overrides the table's sampler; `on_step(i)`
    runs after step i); the result is finite or a GmError naming the phase."""
    if name is not None:
        spec = dataclasses.replace(spec, name=name)
    if len(sigmas) == 1:
        return recipe.run(spec, denoise, noise, sigmas, generator, noise_fn)
    with console.task(label, total=len(sigmas) - 1, unit="step") as bar:
        def callback(i: int, x: torch.Tensor, denoised: torch.Tensor) -> None:
            bar.advance()
            if on_step is not None:
                on_step(i)

        x = recipe.run(spec, denoise, noise, sigmas, generator, noise_fn, callback=callback)
    return check_finite(x, f"sampling ({label})")
