"""What every sampling pipeline shares: runtime choices, loading, the sampler loop, VAE decode.

The image, video and 4D pipelines differ in how they build conditioning and what they write;
the rest (device/dtype, strict loading with progress, preset -> sigmas/guider/denoiser, the
sampler with a progress bar and CPU-seeded noise, chunked decoding, moving stages on and off
the GPU in --low-vram mode) lives here once.
"""

from __future__ import annotations

import torch

from gm import device as dev
from gm.console import console
from gm.device import Runtime, on_device, runtime_for
from gm.diffusion import guiders, recipe, samplers, tiling
from gm.diffusion.denoiser import Cond, Denoiser, make_denoiser, unet_network
from gm.loader import keep_loaded, load, weight_bytes
from gm.model import run_sampler
from gm.models.build import Engine
from gm.presets import GuiderSpec, Preset, SamplerSpec

__all__ = ["Runtime", "keep_loaded", "load", "on_device", "run_sampler", "runtime_for", "weight_bytes"]


def sigmas_for(spec: SamplerSpec, steps: int | None = None) -> torch.Tensor:
    """The descending schedule (trailing 0) of a sampler table (gm.diffusion.recipe)."""
    return recipe.sigmas_for(spec, steps)


def guider_for(spec: GuiderSpec, frames: int = 1, scale: float | None = None):
    """A guider object from the preset table (`scale` overrides the maximum, e.g. --cfg)."""
    return guiders.from_spec(spec, frames, scale)


def denoiser_for(engine: Engine, preset: Preset, runtime: Runtime) -> Denoiser:
    spec = preset.denoiser
    return make_denoiser(unet_network(engine.network), spec.scaling, spec.kind == "discrete",
                         sigma_data=spec.sigma_data, device=runtime.device, dtype=runtime.dtype)


def guided_denoise(denoiser: Denoiser, guider, cond: Cond, uc: Cond | None) -> samplers.Denoise:
    """`denoise(x, sigma)` for the samplers; CFG with scale 1 skips the uncond pass."""
    if not guiders.uses_uncond(guider):
        guider, uc = guiders.IdentityGuider(), None
    return guiders.guided(denoiser, guider, cond, uc)


def noise_like(shape: tuple[int, ...], generator: torch.Generator, runtime: Runtime) -> torch.Tensor:
    return dev.randn(shape, generator, runtime.device)


def use_tiles(mode: str, runtime: Runtime, height: int, width: int, encode: bool = False) -> bool:
    """--vae-tiling: on / off, or auto: tile when the estimated VAE activations of a height x width
    image exceed the compute device's free memory (unknown on the CPU: no tiling)."""
    if mode == "off":
        return False
    estimate = tiling.encode_bytes if encode else tiling.decode_bytes
    free = dev.free_memory(runtime.device) if mode == "auto" else None
    return tiling.should_tile(mode, height, width, runtime.vae_dtype, free, estimate)


def decode(engine: Engine, z: torch.Tensor, runtime: Runtime, chunk: int = 0, label: str = "decode",
           tiles: str = "off", **decode_args: int) -> torch.Tensor:
    """Latents (N, 4, h, w) -> images in [0, 1] (N, 3, H, W) float32, `chunk` frames per VAE call
    (0 = all at once). Extra `decode_args` go to the autoencoder (e.g. num_frames for video).
    `tiles` (images only): the --vae-tiling mode (gm.diffusion.tiling's tile and overlap)."""
    vae = engine.vae
    assert vae is not None, "this preset has no autoencoder"
    z = z / engine.scale_factor
    n = z.shape[0]
    size = n if chunk <= 0 else chunk
    out = []
    with on_device(vae, runtime), console.task(label, total=n, unit="frame") as bar, torch.inference_mode():
        for start in range(0, n, size):
            part = z[start:start + size].to(runtime.device, runtime.vae_dtype)
            args = {k: (min(v, part.shape[0]) if k == "num_frames" else v) for k, v in decode_args.items()}
            f = 2 ** (len(vae.cfg.ch_mult) - 1) if tiles != "off" else 1
            if not decode_args and use_tiles(tiles, runtime, part.shape[-2] * f, part.shape[-1] * f):
                images = tiling.decode_tiled(vae, part, tiling.DEFAULT_TILE, tiling.DEFAULT_OVERLAP).float()
            else:
                images = vae.decode(part, **args).float()
            out.append(((images + 1.0) / 2.0).clamp(0, 1).cpu())
            bar.advance(part.shape[0])
    return torch.cat(out)


def posterior(engine: Engine, images: torch.Tensor, runtime: Runtime,
              chunk: int = 0, tiles: str = "off") -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] (N, 3, H, W) -> the VAE posterior (mean, logvar), float32 on the compute
    device and not yet scaled; `chunk` images per VAE call (0 = all at once); `tiles`: --vae-tiling."""
    vae = engine.vae
    assert vae is not None, "this preset has no autoencoder"
    n = images.shape[0]
    size = n if chunk <= 0 else chunk
    means, logvars = [], []
    with on_device(vae, runtime), torch.inference_mode():
        for start in range(0, n, size):
            part = images[start:start + size].to(runtime.device, runtime.vae_dtype)
            if use_tiles(tiles, runtime, part.shape[-2], part.shape[-1], encode=True):
                mean, logvar = tiling.encode_tiled(vae, part, tiling.DEFAULT_TILE, tiling.DEFAULT_OVERLAP)
            else:
                mean, logvar = vae.encode(part)
            means.append(mean.float())
            logvars.append(logvar.float())
    return torch.cat(means), torch.cat(logvars)


def posterior_latent(engine: Engine, moments: tuple[torch.Tensor, torch.Tensor], runtime: Runtime,
                     generator: torch.Generator | None) -> torch.Tensor:
    """Scaled latents from `posterior` moments: a sample like the reference's AutoencoderKL (noise
    from `generator`), or the mode when `generator` is None. One encode serves many samples."""
    mean, logvar = moments
    if generator is None:
        return mean * engine.scale_factor
    eps = dev.randn(tuple(mean.shape), generator, runtime.device)
    return (mean + torch.exp(0.5 * logvar.clamp(-30.0, 20.0)) * eps) * engine.scale_factor


def encode(engine: Engine, images: torch.Tensor, runtime: Runtime, generator: torch.Generator | None,
           chunk: int = 0) -> torch.Tensor:
    """Images in [-1, 1] (N, 3, H, W) -> scaled latents; samples the posterior like the reference's
    AutoencoderKL (with noise from `generator`), or takes its mode when `generator` is None."""
    return posterior_latent(engine, posterior(engine, images, runtime, chunk), runtime, generator)
