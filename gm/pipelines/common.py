"""What every sampling pipeline shares: runtime choices, loading, the sampler loop, VAE decode.

The image, video and 4D pipelines differ in how they build conditioning and what they write;
the rest (device/dtype, strict loading with progress, preset -> sigmas/guider/denoiser, the
sampler with a progress bar and CPU-seeded noise, chunked decoding, moving stages on and off
the GPU in --low-vram mode) lives here once.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gm import device as dev
from gm.console import console
from gm.diffusion import guiders, samplers, schedules
from gm.diffusion.denoiser import Cond, Denoiser, make_denoiser, unet_network
from gm.errors import UsageError
from gm.models.build import Engine, load_engine
from gm.presets import GuiderSpec, Preset, SamplerSpec


@dataclass(frozen=True)
class Runtime:
    """Where and in which precision a pipeline runs (decided once, from CLI + preset)."""

    device: torch.device
    dtype: torch.dtype  # UNet and text/image encoders
    vae_dtype: torch.dtype
    low_vram: bool = False
    compile: bool = False

    @property
    def home(self) -> torch.device:
        """Where idle stages wait: the CPU in low-VRAM mode, else the compute device."""
        return torch.device("cpu") if self.low_vram else self.device


def runtime_for(preset: Preset, device: str = "auto", dtype: str | None = None,
                low_vram: bool | None = None, compile: bool | None = None) -> Runtime:
    target = dev.pick_device(device)
    dev.apply_speed_settings(target)
    vae = preset.perf.vae_dtype
    return Runtime(
        device=target,
        dtype=dev.pick_dtype(dtype or preset.perf.dtype, target),
        vae_dtype=dev.pick_dtype(vae, target, gpu_default="fp32") if vae != "auto" else torch.float32,
        low_vram=preset.perf.low_vram if low_vram is None else low_vram,
        compile=preset.perf.compile if compile is None else compile,
    )


# Engines kept loaded across commands run in one process (None: off, the CLI's case). The pipeline
# benchmark turns it on, so that its repeated runs time sampling with the weights resident (and
# compiled), as a long-lived process would.
_kept: dict[tuple[Any, ...], Engine] | None = None


def keep_loaded(on: bool) -> None:
    global _kept
    _kept = {} if on else None


def load(preset: Preset, runtime: Runtime, checkpoint: str | Path | None = None,
         unsafe_pickle: bool = False) -> Engine:
    """Build on meta and strictly load the preset's checkpoint onto the runtime's home device."""
    if _kept is None:
        return _load(preset, runtime, checkpoint, unsafe_pickle)
    key = (json.dumps(preset.to_dict(), sort_keys=True, default=str), runtime, str(checkpoint), unsafe_pickle)
    if key not in _kept:
        _kept[key] = _load(preset, runtime, checkpoint, unsafe_pickle)
    return _kept[key]


def _load(preset: Preset, runtime: Runtime, checkpoint: str | Path | None, unsafe_pickle: bool) -> Engine:
    with console.task(f"load {preset.name}", total=1):
        engine = load_engine(preset, checkpoint, device=runtime.home, dtype=runtime.dtype,
                             vae_dtype=runtime.vae_dtype, unsafe_pickle=unsafe_pickle)
    if preset.perf.channels_last:  # NHWC convolutions: faster with cuDNN in fp16/bf16
        engine.to(memory_format=torch.channels_last)
    if runtime.compile:
        _compile(engine, runtime)
    return engine


def _compile(engine: Engine, runtime: Runtime) -> None:
    """--compile: the network's forward and the VAE decode (methods, not modules, so that .to() and
    state_dict() keep working). On the CPU the frozen weights are a second, packed copy (one per
    compiled shape), so it is skipped with a warning when RAM cannot hold them."""
    network = engine.model.diffusion_model
    if runtime.device.type == "cpu":
        weights = weight_bytes(network)
        available = dev.available_ram()
        if available is not None and available < 1.25 * weights:
            console.warn(f"--compile skipped: on the CPU it keeps a second, packed copy of the "
                         f"{weights / 2**30:.1f} GiB of denoiser weights and only {available / 2**30:.1f} GiB of "
                         "RAM is available (running uncompiled)")
            return
        console.warn_once(f"--compile on the CPU: the first step compiles for minutes (cached on disk for later "
                          f"runs), later steps run about 1.7x faster, and RAM holds a second, packed copy of the "
                          f"{weights / 2**30:.1f} GiB of denoiser weights")
    network.forward = dev.compiled(network.forward, runtime.device)
    if engine.vae is not None:
        engine.vae.decode = dev.compiled(engine.vae.decode, runtime.device)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters (what moving it or copying its weights costs)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())


@contextmanager
def on_device(module: nn.Module | None, runtime: Runtime) -> Iterator[None]:
    """Run a stage on the compute device; in low-VRAM mode move it back afterwards."""
    if module is None or not runtime.low_vram:
        yield
        return
    module.to(runtime.device)
    try:
        yield
    finally:
        module.to("cpu")
        dev.empty_cache(runtime.device)


def sigmas_for(spec: SamplerSpec, steps: int | None = None) -> torch.Tensor:
    """The descending schedule (trailing 0) of a sampler table."""
    n = spec.steps if steps is None else steps
    if n < 1:
        raise UsageError(f"steps must be at least 1, got {n}", "e.g. --steps 30")
    if spec.discretization == "edm":
        return schedules.edm_sigmas(n, spec.sigma_min, spec.sigma_max, spec.rho)
    if n > 1000:
        raise UsageError(f"the DDPM schedule has 1000 steps at most, got {n}", "use --steps 1000 or fewer")
    return schedules.legacy_ddpm_sigmas(n)


def guider_for(spec: GuiderSpec, frames: int = 1, scale: float | None = None):
    """A guider object from the preset table (`scale` overrides the maximum, e.g. --cfg)."""
    top = spec.scale if scale is None else scale
    keys = tuple(spec.additional_keys)
    if spec.kind == "identity":
        return guiders.IdentityGuider()
    if spec.kind == "vanilla":
        return guiders.VanillaCFG(scale=top, additional_cond_keys=keys)
    if spec.kind == "spatiotemporal":
        return guiders.SpatiotemporalPredictionGuider(max_scale=top, num_frames=frames, num_views=spec.num_views,
                                                      min_scale=spec.min_scale, additional_cond_keys=keys)
    cls = guiders.GUIDERS[spec.kind]
    return cls(max_scale=top, num_frames=frames, min_scale=spec.min_scale, additional_cond_keys=keys)


def denoiser_for(engine: Engine, preset: Preset, runtime: Runtime) -> Denoiser:
    spec = preset.denoiser
    return make_denoiser(unet_network(engine.network), spec.scaling, spec.kind == "discrete",
                         sigma_data=spec.sigma_data, device=runtime.device, dtype=runtime.dtype)


def sampler_options(spec: SamplerSpec) -> dict[str, float]:
    """The preset's settings that the chosen sampler takes (s_churn for euler, eta for euler_a...)."""
    values = {"s_churn": spec.s_churn, "s_tmin": spec.s_tmin, "s_tmax": spec.s_tmax,
              "s_noise": spec.s_noise, "eta": spec.eta, "order": spec.order}
    return {k: v for k, v in values.items() if k in samplers.sampler_options(spec.name)}


def run_sampler(
    spec: SamplerSpec,
    denoise: samplers.Denoise,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    generator: torch.Generator,
    label: str = "sample",
    name: str | None = None,
    noise_fn: samplers.NoiseFn | None = None,
) -> torch.Tensor:
    """Sample from unit `noise` along `sigmas` with a progress bar; ancestral/churn noise from
    the CPU `generator` (so a seed gives the same result on every device), or from `noise_fn`."""
    steps = len(sigmas) - 1
    if steps == 0:  # nothing to run, but the start is still at sigma_0 (e.g. a hand-off at sigma_max)
        return noise.float() * schedules.start_scale(sigmas)
    if noise_fn is None:
        noise_fn = samplers.make_noise_fn(generator, tuple(noise.shape), noise.device, torch.float32)
    with console.task(label, total=steps, unit="step") as bar:
        return samplers.sample(name or spec.name, denoise, noise, sigmas, noise_fn=noise_fn,
                               callback=lambda i, x, d: bar.advance(), **sampler_options(spec))


def guided_denoise(denoiser: Denoiser, guider, cond: Cond, uc: Cond | None) -> samplers.Denoise:
    """`denoise(x, sigma)` for the samplers; CFG with scale 1 skips the uncond pass."""
    if isinstance(guider, guiders.VanillaCFG) and guider.scale == 1.0:
        guider, uc = guiders.IdentityGuider(), None
    return guiders.guided(denoiser, guider, cond, uc)


def noise_like(shape: tuple[int, ...], generator: torch.Generator, runtime: Runtime) -> torch.Tensor:
    return dev.randn(shape, generator, runtime.device)


def decode(engine: Engine, z: torch.Tensor, runtime: Runtime, chunk: int = 0, label: str = "decode",
           **decode_args: int) -> torch.Tensor:
    """Latents (N, 4, h, w) -> images in [0, 1] (N, 3, H, W) float32, `chunk` frames per VAE call
    (0 = all at once). Extra `decode_args` go to the autoencoder (e.g. num_frames for video)."""
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
            images = vae.decode(part, **args).float()
            out.append(((images + 1.0) / 2.0).clamp(0, 1).cpu())
            bar.advance(part.shape[0])
    return torch.cat(out)


def posterior(engine: Engine, images: torch.Tensor, runtime: Runtime,
              chunk: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Images in [-1, 1] (N, 3, H, W) -> the VAE posterior (mean, logvar), float32 on the compute
    device and not yet scaled; `chunk` images per VAE call (0 = all at once)."""
    vae = engine.vae
    assert vae is not None, "this preset has no autoencoder"
    n = images.shape[0]
    size = n if chunk <= 0 else chunk
    means, logvars = [], []
    with on_device(vae, runtime), torch.inference_mode():
        for start in range(0, n, size):
            mean, logvar = vae.encode(images[start:start + size].to(runtime.device, runtime.vae_dtype))
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
