"""The KL autoencoder ("VAE") of every release (sgm `diffusionmodules/model.py` Encoder/Decoder,
`models/autoencoder.py` AutoencoderKL / AutoencodingEngine).

Keys under `first_stage_model.`: encoder.{conv_in, down.N.block.M, down.N.attn.M, down.N.downsample,
mid.block_1, mid.attn_1, mid.block_2, norm_out, conv_out}, decoder.{conv_in, mid.*, up.N.block.M
(num_res_blocks + 1 per level), up.N.upsample, norm_out, conv_out}, and for the legacy
AutoencoderKL quant_conv / post_quant_conv (1x1). SVD's engine has no quant convs; the SV3D/SV4D
first stage is decoder-only (`parts = "decoder"`). Scale factors (0.18215 / 0.13025) belong to the
pipeline, not to this module.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.nn.attention import AttnBlock
from gm.nn.norm import group_norm
from gm.nn.resblock import EncoderDownsample, ResnetBlock, Upsample


@dataclass(frozen=True)
class VAEConfig:
    """`ddconfig` of the sgm YAML plus which parts exist; defaults are the released f8 autoencoder."""

    ch: int = 128
    ch_mult: tuple[int, ...] = (1, 2, 4, 4)
    num_res_blocks: int = 2
    z_channels: int = 4
    double_z: bool = True  # the encoder outputs mean and log-variance
    in_channels: int = 3
    out_ch: int = 3
    embed_dim: int = 4  # latent width after quant_conv (legacy AutoencoderKL)
    resolution: int = 256  # only used to place attn_resolutions
    attn_resolutions: tuple[int, ...] = ()
    attn_type: Literal["vanilla", "vanilla-xformers", "none"] = "vanilla"  # both vanilla = same SDPA
    dropout: float = 0.0
    quant_conv: bool = True  # legacy AutoencoderKL: True; SVD AutoencodingEngine: False
    parts: Literal["full", "encoder", "decoder"] = "full"


class _Level(nn.Module):
    """One resolution level: `block` (ResnetBlocks), `attn` and an optional down/upsample."""

    def __init__(self, blocks: list[nn.Module], attns: list[nn.Module]) -> None:
        super().__init__()
        self.block = nn.ModuleList(blocks)
        self.attn = nn.ModuleList(attns)


class _Mid(nn.Module):
    def __init__(self, block_1: nn.Module, attn_1: nn.Module, block_2: nn.Module) -> None:
        super().__init__()
        self.block_1 = block_1
        self.attn_1 = attn_1
        self.block_2 = block_2


def _attn(cfg: VAEConfig, channels: int) -> nn.Module:
    return nn.Identity() if cfg.attn_type == "none" else AttnBlock(channels)


class Encoder(nn.Module):
    """Image (B, in, H, W) -> moments (B, 2*z or z, H/f, W/f)."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.conv_in = nn.Conv2d(cfg.in_channels, cfg.ch, 3, padding=1)
        mults = (1, *cfg.ch_mult)
        res = cfg.resolution
        self.down = nn.ModuleList()
        for i, mult in enumerate(cfg.ch_mult):
            cin = cfg.ch * mults[i]
            cout = cfg.ch * mult
            blocks = [ResnetBlock(cin if j == 0 else cout, cout, cfg.dropout) for j in range(cfg.num_res_blocks)]
            attns = [AttnBlock(cout) for _ in blocks] if res in cfg.attn_resolutions else []
            level = _Level(blocks, attns)
            if i != len(cfg.ch_mult) - 1:
                level.downsample = EncoderDownsample(cout)
                res //= 2
            self.down.append(level)
        ch = cfg.ch * cfg.ch_mult[-1]
        self.mid = _Mid(ResnetBlock(ch, ch, cfg.dropout), _attn(cfg, ch), ResnetBlock(ch, ch, cfg.dropout))
        self.norm_out = group_norm(ch, eps=1e-6)
        self.conv_out = nn.Conv2d(ch, 2 * cfg.z_channels if cfg.double_z else cfg.z_channels, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(x)
        for level in self.down:
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "downsample"):
                h = level.downsample(h)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        return self.conv_out(F.silu(self.norm_out(h)))


class Decoder(nn.Module):
    """Latent (B, z, h, w) -> image (B, out, 8h, 8w) for f8; no tanh, not clamped."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        ch = cfg.ch * cfg.ch_mult[-1]
        self.conv_in = nn.Conv2d(cfg.z_channels, ch, 3, padding=1)
        self.mid = _Mid(self.make_resblock(ch, ch, cfg), _attn(cfg, ch), self.make_resblock(ch, ch, cfg))
        res = cfg.resolution // 2 ** (len(cfg.ch_mult) - 1)
        levels: list[_Level] = []
        for i in reversed(range(len(cfg.ch_mult))):
            cout = cfg.ch * cfg.ch_mult[i]
            blocks = []
            for _ in range(cfg.num_res_blocks + 1):
                blocks.append(self.make_resblock(ch, cout, cfg))
                ch = cout
            attns = [AttnBlock(cout) for _ in blocks] if res in cfg.attn_resolutions else []
            level = _Level(blocks, attns)
            if i != 0:
                level.upsample = Upsample(ch)
                res *= 2
            levels.insert(0, level)  # keys count levels from the finest: up.0 is full resolution
        self.up = nn.ModuleList(levels)
        self.norm_out = group_norm(ch, eps=1e-6)
        self.conv_out = self.make_conv_out(ch, cfg.out_ch, cfg)

    def make_resblock(self, cin: int, cout: int, cfg: VAEConfig) -> nn.Module:
        return ResnetBlock(cin, cout, cfg.dropout)

    def make_conv_out(self, cin: int, cout: int, cfg: VAEConfig) -> nn.Module:
        return nn.Conv2d(cin, cout, 3, padding=1)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h)))
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)))


class Autoencoder(nn.Module):
    """KL autoencoder: `encode(x) -> (mean, logvar)`, `encode_mode(x) -> mean`, `decode(z)`."""

    def __init__(self, cfg: VAEConfig) -> None:
        super().__init__()
        self.cfg = cfg
        z2 = 2 * cfg.z_channels if cfg.double_z else cfg.z_channels
        if cfg.parts in ("full", "encoder"):
            self.encoder = Encoder(cfg)
        if cfg.parts in ("full", "decoder"):
            self.decoder = self.make_decoder(cfg)
        if cfg.quant_conv and cfg.parts in ("full", "encoder"):
            self.quant_conv = nn.Conv2d(z2, 2 * cfg.embed_dim if cfg.double_z else cfg.embed_dim, 1)
        if cfg.quant_conv and cfg.parts in ("full", "decoder"):
            self.post_quant_conv = nn.Conv2d(cfg.embed_dim, cfg.z_channels, 1)

    def make_decoder(self, cfg: VAEConfig) -> nn.Module:
        return Decoder(cfg)

    @property
    def dtype(self) -> torch.dtype:
        return next(self.parameters()).dtype

    def encode_moments(self, x: torch.Tensor) -> torch.Tensor:
        """(B, in, H, W) -> (B, 2*latent, H/f, W/f) = [mean | logvar] before clamping."""
        h = self.encoder(x.to(self.dtype))
        if hasattr(self, "quant_conv"):
            h = self.quant_conv(h)
        return h.to(x.dtype)

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Posterior (mean, logvar), logvar clamped to [-30, 20] as DiagonalGaussianDistribution."""
        mean, logvar = self.encode_moments(x).chunk(2, dim=1)
        return mean, logvar.clamp(-30.0, 20.0)

    def encode_mode(self, x: torch.Tensor) -> torch.Tensor:
        """The posterior mode (= mean), what AutoencoderKLModeOnly and the video conditioners use."""
        return self.encode(x)[0]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """(B, z, h, w) latent (already divided by the scale factor) -> (B, out, H, W) in [-1, 1]."""
        h = z.to(self.dtype)
        if hasattr(self, "post_quant_conv"):
            h = self.post_quant_conv(h)
        return self.decoder(h).to(z.dtype)


def sample_posterior(mean: torch.Tensor, logvar: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """A posterior sample mean + exp(logvar / 2) * noise (AutoencoderKL.encode's `sample()`)."""
    return mean + torch.exp(0.5 * logvar) * noise
