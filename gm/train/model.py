"""The trainable diffusion model: engine (network + conditioner + frozen first stage) and its loss.

Mirrors sgm `DiffusionEngine.shared_step` + `StandardDiffusionLoss`: encode to latents (frozen VAE,
x scale_factor; pixel space when the preset has no `[vae]`), condition (with ucg dropout), draw
sigma and noise, and return the per-sample weighted l2/l1 loss of D(z + noise*sigma) against z.

Random draws that decide the loss (sigmas, noise, ucg masks, VAE posterior noise) are made for
the GLOBAL batch from one seeded CPU generator and sliced per DDP rank, so N ranks compute
exactly the terms one process would, and a resumed run replays them from the saved generator.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gm.checkpoint import load_into, read_header
from gm.diffusion.denoiser import Cond, append_dims, make_denoiser, unet_network
from gm.diffusion.training import diffusion_loss, sample_sigmas_discrete, sample_sigmas_edm, weighting_by_name
from gm.errors import CheckpointError, PresetError
from gm.models.build import Engine, build_engine, vae_config
from gm.models.clip_text import CLIPTextEmbedder
from gm.models.conditioner import CAT_DIMS
from gm.presets import Preset
from gm.train.config import TrainConfig


def _weights(preset: Preset, key: str, value: str, what: str, download: str) -> Path:
    """The file named by `[train].<key>` (pretrained weights the preset does not train from scratch)."""
    if not value:
        raise PresetError(f"{preset.source} [train].{key}: this preset needs the {what} weights",
                          f"--set train.{key}=checkpoints/<file> (gm download {download} fetches it)")
    path = Path(value).expanduser()
    if path.is_file():
        return path
    from gm.hub import installed_path

    found = installed_path(download)  # where `gm download` put it: the Hugging Face cache, GM_CHECKPOINTS
    if found is not None:
        return found
    raise CheckpointError(f"{what} checkpoint not found: {path} (nor in the Hugging Face cache or GM_CHECKPOINTS)",
                          f"run gm download {download}")


def build_train_engine(preset: Preset, cfg: TrainConfig) -> Engine:
    """The engine with random weights except the pretrained parts the reference loads too (the
    released VAE, CLIP-L's text tower); frozen parts (VAE, non-trainable embedders) need no grad."""
    engine = build_engine(preset)
    if engine.vae is not None:
        path = _weights(preset, "vae_checkpoint", cfg.vae_checkpoint, "VAE", "sdxl-vae")
        spec = vae_config(preset)
        assert spec is not None
        with torch.device("meta"):
            vae = spec[1](spec[0])
        load_into(vae, path, label="train VAE")
        engine.first_stage_model = vae
        engine.vae.requires_grad_(False).eval()
    if engine.embedders is not None:
        for emb in engine.embedders.embedders:
            if isinstance(emb, CLIPTextEmbedder):  # sgm: CLIPTextModel.from_pretrained(openai/clip-vit-large-patch14)
                path = _weights(preset, "clip_checkpoint", cfg.clip_checkpoint, "CLIP-L text encoder",
                                "clip-vit-large-patch14")
                other = [k for k in read_header(path) if not k.startswith("text_model.") or k.endswith("position_ids")]
                load_into(emb.transformer, path, optional=other, label="CLIP-L text encoder")
            if not emb.config.is_trainable:
                # sgm hands frozen encoders to the optimizer anyway (docs/reference.md §8.37); not here
                emb.requires_grad_(False).eval()
    return engine


@dataclass
class Draws:
    """The randomness of one global batch, already sliced to this rank."""

    sigma: torch.Tensor  # (b,)
    noise: torch.Tensor  # (b, C, h, w)
    keep: list[torch.Tensor | None]  # per embedder: (b,) 1 = keep, 0 = drop (ucg), or None
    posterior: torch.Tensor | None  # (b, C, h, w) VAE sampling noise


def draw(cfg: TrainConfig, engine: Engine, global_batch: int, shape: tuple[int, ...], rank: int, world: int,
         generator: torch.Generator, num_idx: int) -> Draws:
    """Draw sigma, noise and ucg masks for `global_batch` examples; keep this rank's slice."""
    b = global_batch // world
    part = slice(rank * b, (rank + 1) * b)
    if cfg.sigma_sampler == "edm":
        sigma = sample_sigmas_edm(global_batch, cfg.p_mean, cfg.p_std, generator=generator)
    else:
        sigma = sample_sigmas_discrete(global_batch, num_idx, generator=generator)
    noise = torch.randn((global_batch, *shape), generator=generator)
    keep: list[torch.Tensor | None] = []
    if engine.embedders is not None:
        for emb in engine.embedders.embedders:
            rate = emb.config.ucg_rate
            keep.append(torch.bernoulli(torch.full((global_batch,), 1.0 - rate), generator=generator)[part]
                        if rate > 0 else None)
    posterior = None
    if engine.vae is not None:
        posterior = torch.randn((global_batch, *shape), generator=generator)[part]
    return Draws(sigma[part], noise[part], keep, posterior)


def condition(engine: Engine, batch: dict[str, Any], keep: list[torch.Tensor | None] | None,
              zero: bool = False) -> dict[str, torch.Tensor]:
    """The conditioner's outputs per destination with ucg from the pre-drawn `keep` masks.

    Same rules as gm.models.conditioner (legacy_ucg_value replaces the raw input, otherwise each
    output is multiplied by the mask); `zero` gives the unconditional branch (all keys zeroed,
    as sgm's log_images does).
    """
    out: dict[str, torch.Tensor] = {}
    if engine.embedders is None:
        return out
    for i, emb in enumerate(engine.embedders.embedders):
        cfg = emb.config
        value = batch[cfg.input]
        mask = keep[i] if keep is not None else None
        if mask is not None and cfg.legacy_ucg_value is not None:
            value = [cfg.legacy_ucg_value if m == 0 else v for v, m in zip(value, mask.tolist())]
            mask = None
        with torch.set_grad_enabled(cfg.is_trainable and torch.is_grad_enabled()):
            tensors = emb(value)
        for dest, t in zip(emb.outputs(), tensors):
            if mask is not None:
                t = t * append_dims(mask.to(t.device, t.dtype), t.ndim)
            if zero:
                t = torch.zeros_like(t)
            out[dest] = t if dest not in out else torch.cat((out[dest], t), dim=CAT_DIMS[dest])
    return out


class DiffusionObjective(nn.Module):
    """forward(batch, draws) -> per-sample loss (B,). Wrap this in DDP: it owns every trainable weight."""

    def __init__(self, engine: Engine, preset: Preset, cfg: TrainConfig) -> None:
        super().__init__()
        self.engine = engine
        spec = preset.denoiser
        self.denoiser = make_denoiser(unet_network(engine.network), spec.scaling, spec.kind == "discrete",
                                      sigma_data=spec.sigma_data)
        self.weighting = weighting_by_name(cfg.weighting, cfg.weighting_sigma_data)
        self.loss_type = cfg.loss_type
        self.scale_factor = engine.scale_factor

    @torch.no_grad()
    def encode(self, images: torch.Tensor, posterior: torch.Tensor | None) -> torch.Tensor:
        """Pixels in [-1, 1] -> training targets (latents x scale_factor, or the pixels)."""
        if self.engine.vae is None:
            return images
        from gm.models.vae import sample_posterior

        mean, logvar = self.engine.vae.encode(images.to(self.engine.vae.dtype))
        z = sample_posterior(mean.float(), logvar.float(), posterior.to(mean.device))
        return z * self.scale_factor

    def forward(self, batch: dict[str, Any], draws: Draws) -> torch.Tensor:
        x = batch["jpg"]
        z = self.encode(x, draws.posterior)
        cond = condition(self.engine, batch, draws.keep)

        def denoise(z_noisy: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            return self.denoiser(z_noisy, sigma, cond)

        return diffusion_loss(denoise, z, draws.sigma.to(z.device), draws.noise.to(z.device),
                              self.weighting, self.loss_type)


def latent_shape(preset: Preset, engine: Engine, channels: int, size: int) -> tuple[int, int, int]:
    """(C, h, w) of the diffusion target for `size` x `size` images."""
    spec = vae_config(preset)
    if spec is None:
        return channels, size, size
    down = 2 ** (len(spec[0].ch_mult) - 1)
    return engine.network.cfg.in_channels, size // down, size // down


def denoise_fn(objective: DiffusionObjective) -> Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor]:
    return objective.denoiser
