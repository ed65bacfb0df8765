"""SVD's temporal VAE decoder (sgm `modules/autoencoding/temporal_ae.py` VideoDecoder with
time_mode "conv-only", VideoResBlock, AE3DConv).

The image Decoder with two builders swapped:
* every ResnetBlock becomes a VideoResnetBlock: the 2-D block per frame, then `time_stack`, a 3-D
  UNet ResBlock (kernel video_kernel_size, zero-padded in time, no time embedding, GroupNorm eps
  1e-5), merged as alpha * temporal + (1 - alpha) * spatial with alpha = sigmoid(mix_factor)
  (the opposite convention of the UNet's AlphaBlender);
* conv_out becomes an AE3DConv: the 2-D conv followed by `time_mix_conv`, a 3-D conv over frames.
Attention stays per frame. Temporal convolutions see only the frames of one decode call, so the
result depends on the chunk length (decoding_t), as in the reference.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from gm.models.vae import Autoencoder, Decoder, VAEConfig
from gm.nn.resblock import ResBlock, ResnetBlock
from gm.nn.temporal import from_video, to_video


@dataclass(frozen=True)
class VideoVAEConfig(VAEConfig):
    """VAEConfig plus the VideoDecoder's time-mixing parameters (SVD: quant_conv = false)."""

    video_kernel_size: int | tuple[int, ...] = (3, 1, 1)
    alpha: float = 0.0  # initial mix_factor
    merge_strategy: Literal["fixed", "learned"] = "learned"


class VideoResnetBlock(ResnetBlock):
    """ResnetBlock per frame + temporal 3-D ResBlock, blended with a learned/fixed mix_factor."""

    def __init__(self, in_channels: int, out_channels: int, cfg: VideoVAEConfig) -> None:
        super().__init__(in_channels, out_channels, cfg.dropout)
        self.time_stack = ResBlock(
            out_channels, 0, out_channels, cfg.dropout, dims=3, kernel_size=cfg.video_kernel_size, skip_t_emb=True
        )
        self.learned = cfg.merge_strategy == "learned"
        if self.learned:
            self.mix_factor = nn.Parameter(torch.tensor([cfg.alpha]))
        else:
            self.register_buffer("mix_factor", torch.tensor([cfg.alpha]))

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        spatial = to_video(super().forward(x), num_frames)  # (b, C, t, H, W)
        temporal = self.time_stack.residual(spatial, None)
        alpha = torch.sigmoid(self.mix_factor.float()) if self.learned else self.mix_factor.float()
        return from_video(alpha.to(x.dtype) * temporal + (1.0 - alpha).to(x.dtype) * spatial)


class AE3DConv(nn.Conv2d):
    """Conv2d per frame followed by `time_mix_conv`, a Conv3d across frames (no residual)."""

    def __init__(self, in_channels: int, out_channels: int, video_kernel_size: int | tuple[int, ...]) -> None:
        super().__init__(in_channels, out_channels, 3, padding=1)
        kernel = video_kernel_size
        padding = tuple(k // 2 for k in kernel) if isinstance(kernel, tuple) else kernel // 2
        self.time_mix_conv = nn.Conv3d(out_channels, out_channels, kernel, padding=padding)

    def forward(self, x: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        h = to_video(super().forward(x), num_frames)  # (b, C, t, H, W)
        return from_video(self.time_mix_conv(h))


class VideoDecoder(Decoder):
    """Latent (b*t, z, h, w) -> frames (b*t, out, 8h, 8w), mixing over groups of `num_frames`."""

    def make_resblock(self, cin: int, cout: int, cfg: VAEConfig) -> nn.Module:
        assert isinstance(cfg, VideoVAEConfig)
        return VideoResnetBlock(cin, cout, cfg)

    def make_conv_out(self, cin: int, cout: int, cfg: VAEConfig) -> nn.Module:
        assert isinstance(cfg, VideoVAEConfig)
        return AE3DConv(cin, cout, cfg.video_kernel_size)

    def forward(self, z: torch.Tensor, num_frames: int) -> torch.Tensor:  # type: ignore[override]
        h = self.conv_in(z)
        h = self.mid.block_2(self.mid.attn_1(self.mid.block_1(h, num_frames)), num_frames)
        for level in reversed(self.up):
            for j, block in enumerate(level.block):
                h = block(h, num_frames)
                if len(level.attn):
                    h = level.attn[j](h)
            if hasattr(level, "upsample"):
                h = level.upsample(h)
        return self.conv_out(F.silu(self.norm_out(h)), num_frames)


class VideoAutoencoder(Autoencoder):
    """SVD first stage: 2-D encoder, temporal decoder; `decode(z, num_frames)`."""

    def make_decoder(self, cfg: VAEConfig) -> nn.Module:
        return VideoDecoder(cfg)

    def decode(self, z: torch.Tensor, num_frames: int | None = None) -> torch.Tensor:  # type: ignore[override]
        """z (b*t, z, h, w) -> (b*t, out, H, W); `num_frames` = t (None: all of z is one clip)."""
        t = z.shape[0] if num_frames is None else num_frames
        if z.shape[0] % t:
            raise ValueError(f"{z.shape[0]} latents are not a multiple of num_frames={t}")
        h = z.to(self.dtype)
        if hasattr(self, "post_quant_conv"):
            h = self.post_quant_conv(h)
        return self.decoder(h, t).to(z.dtype)
