"""Parameter-light conditioning embedders (sgm `modules/encoders/modules.py`):
`ConcatTimestepEmbedderND` (scalars), `ClassEmbedder` (training labels) and
`VideoPredictionEmbedderWithEncoder` (VAE-encoded conditioning frames of SVD / SV3D / SV4D).

Every embedder has a frozen config naming its `input` key and where each output goes, and a
module whose `forward(value, generator)` returns one tensor per entry of `outputs()`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from gm.errors import PresetError
from gm.models.vae import Autoencoder, VAEConfig
from gm.nn.embeddings import timestep_embedding


@dataclass(frozen=True, kw_only=True)
class ScalarConfig:
    """`[[conditioner]] kind = "scalar"`: sgm ConcatTimestepEmbedderND(outdim).

    Each column of a (B, d) input gets an `outdim`-wide cos-first sinusoid; the d embeddings are
    concatenated: (B, d * outdim). SDXL sizes are (height, width) pairs in pixels, outdim 256.
    """

    input: str
    outdim: int
    output: str = "vector"
    ucg_rate: float = 0.0
    legacy_ucg_value: str | float | None = None
    is_trainable: bool = False
    zero_in_uc: bool = False


class ScalarEmbedder(nn.Module):
    """No parameters: (B,) or (B, d) numbers -> (B, d * outdim) float32."""

    def __init__(self, config: ScalarConfig) -> None:
        super().__init__()
        self.config = config

    def outputs(self) -> tuple[str, ...]:
        return (self.config.output,)

    def forward(self, x: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """`generator` is unused (deterministic)."""
        x = torch.as_tensor(x)
        if x.ndim == 1:
            x = x[:, None]  # (B, 1)
        b, d = x.shape
        emb = timestep_embedding(x.reshape(b * d), self.config.outdim)  # (B*d, outdim)
        return [emb.reshape(b, d * self.config.outdim)]  # (B, d*outdim), column-major blocks


@dataclass(frozen=True, kw_only=True)
class ClassConfig:
    """`[[conditioner]] kind = "class"`: sgm ClassEmbedder (toy / imagenet training configs).

    With add_sequence_dim the (B, embed_dim) embedding becomes (B, 1, embed_dim): set
    output = "crossattn" for it.
    """

    input: str = "cls"
    embed_dim: int = 128
    n_classes: int = 10
    add_sequence_dim: bool = False
    output: str = "vector"
    ucg_rate: float = 0.0
    legacy_ucg_value: str | float | None = None
    is_trainable: bool = True
    zero_in_uc: bool = False


class ClassEmbedder(nn.Module):
    def __init__(self, config: ClassConfig) -> None:
        super().__init__()
        self.config = config
        self.embedding = nn.Embedding(config.n_classes, config.embed_dim)

    def outputs(self) -> tuple[str, ...]:
        return (self.config.output,)

    def forward(self, labels: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """(B,) int labels -> (B, embed_dim) or (B, 1, embed_dim). `generator` is unused."""
        c = self.embedding(torch.as_tensor(labels, device=self.embedding.weight.device).long())
        return [c[:, None, :] if self.config.add_sequence_dim else c]


@dataclass(frozen=True, kw_only=True)
class VAEEncoderConfig:
    """`[[conditioner]] kind = "vae_encoder"`: sgm VideoPredictionEmbedderWithEncoder with an
    AutoencoderKLModeOnly (a full legacy KL autoencoder; only the encoder runs).

    Latents are the posterior MODE times `scale_factor` 1.0 (not 0.18215), encoded
    `en_and_decode_n_samples_a_time` frames at a time (the scripts' `encoding_t`; None = all).
    SV4D sets `noise_sigma` = 1e-5 (sgm ZeroSampler: frames += 1e-5 * N(0, 1) before encoding) and,
    for `cond_frames`, `sigma_cond_outdim` = 256: the sinusoid of that sigma goes to
    `sigma_output`, one row per conditioning frame.
    """

    input: str = "cond_frames"
    output: str = "concat"
    sigma_output: str = "vector"
    ucg_rate: float = 0.0
    legacy_ucg_value: str | float | None = None
    is_trainable: bool = False
    zero_in_uc: bool = True  # video models: uc zeroes the image conditioning
    n_cond_frames: int = 1
    n_copies: int = 1
    scale_factor: float = 1.0
    en_and_decode_n_samples_a_time: int | None = None
    noise_sigma: float | None = None
    sigma_cond_outdim: int | None = None
    encoder_config: VAEConfig = field(default_factory=VAEConfig)


class VAEEncoderEmbedder(nn.Module):
    """Frames (B*n_cond_frames, 3, H, W) in [-1, 1] -> latents (+ sigma embedding).

    With n_cond_frames == 1 the latents (B, 4, h, w) are repeated n_copies times per sample;
    otherwise (SV4D) they stay one row per frame: (B*n_cond_frames, 4, h, w).
    """

    def __init__(self, config: VAEEncoderConfig) -> None:
        super().__init__()
        if config.sigma_cond_outdim is not None and config.noise_sigma is None:
            raise PresetError("vae_encoder: sigma_cond_outdim needs noise_sigma")
        self.config = config
        self.encoder = Autoencoder(config.encoder_config)

    def outputs(self) -> tuple[str, ...]:
        cfg = self.config
        return (cfg.output,) if cfg.sigma_cond_outdim is None else (cfg.output, cfg.sigma_output)

    def forward(self, frames: torch.Tensor, generator: torch.Generator | None = None) -> list[torch.Tensor]:
        """`generator` draws the `noise_sigma` noise (global RNG when None)."""
        cfg = self.config
        extra: list[torch.Tensor] = []
        if cfg.noise_sigma is not None:
            b = frames.shape[0] // cfg.n_cond_frames
            sigmas = torch.full((b,), cfg.noise_sigma, dtype=torch.float32, device=frames.device)
            if cfg.sigma_cond_outdim is not None:
                reps = cfg.n_copies if cfg.n_cond_frames == 1 else cfg.n_cond_frames
                emb = timestep_embedding(sigmas, cfg.sigma_cond_outdim)  # (B, outdim)
                extra.append(emb.repeat_interleave(reps, dim=0))  # (B*reps, outdim)
            if generator is None:
                noise = torch.randn_like(frames)
            else:
                noise = torch.randn(frames.shape, generator=generator, device=generator.device, dtype=frames.dtype)
            per_frame = sigmas.repeat_interleave(cfg.n_cond_frames).to(frames.dtype)  # (B*T,)
            frames = frames + noise.to(frames.device) * per_frame.view(-1, 1, 1, 1)
        step = cfg.en_and_decode_n_samples_a_time or frames.shape[0]
        latents = torch.cat(
            [self.encoder.encode_mode(frames[i : i + step]) for i in range(0, frames.shape[0], step)]
        )
        latents = latents * cfg.scale_factor  # (B*T, 4, h, w)
        if cfg.n_cond_frames == 1:
            latents = latents.repeat_interleave(cfg.n_copies, dim=0)  # (B*n_copies, 4, h, w)
        return [latents, *extra]
