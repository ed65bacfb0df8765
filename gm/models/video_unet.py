"""The SVD / SV3D video UNet (sgm `diffusionmodules/video_model.py` `VideoUNet`).

The image UNet's layout with its two block builders swapped: every ResBlock becomes a
VideoResBlock (per-frame ResBlock + temporal 3-D ResBlock `time_stack`, mixed by `time_mixer`) and
every SpatialTransformer a SpatialVideoTransformer (per-frame transformer + frame-axis transformer
`time_stack` with `time_pos_embed`, mixed by `time_mixer`). Inputs are (videos * frames, C, H, W)
with the frames of one video contiguous; `num_video_frames` says how many.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from gm.errors import PresetError
from gm.models.unet import UNet, UNetConfig
from gm.nn.blocks import Cond
from gm.nn.temporal import MergeStrategy, SpatialVideoTransformer, VideoResBlock


@dataclass(frozen=True)
class VideoUNetConfig(UNetConfig):
    """`VideoUNet` hyper-parameters: the UNet's plus the time-mixing ones (sgm names)."""

    extra_ff_mix_layer: bool = False  # ff_in before the temporal attention
    use_spatial_context: bool = False  # temporal cross-attention uses the first frame's context
    merge_strategy: MergeStrategy = "fixed"
    merge_factor: float = 0.5
    video_kernel_size: int | tuple[int, ...] = 3  # (3, 1, 1) in every release: time-only conv
    time_context_dim: int | None = None
    disable_temporal_crossattention: bool = False
    max_ddpm_temb_period: int = 10000

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_dim is None:
            raise PresetError("network: a video UNet needs context_dim")


class VideoUNet(UNet):
    """`forward(x, timesteps, context, y, num_video_frames=T, image_only_indicator=(b, T))`."""

    cfg: VideoUNetConfig

    def __init__(self, cfg: VideoUNetConfig) -> None:
        super().__init__(cfg)

    def make_resblock(self, channels: int, out_channels: int) -> nn.Module:
        cfg = self.cfg
        return VideoResBlock(
            channels,
            4 * cfg.model_channels,
            out_channels,
            dropout=cfg.dropout,
            video_kernel_size=cfg.video_kernel_size,
            merge_strategy=cfg.merge_strategy,
            merge_factor=cfg.merge_factor,
        )

    def make_transformer(self, channels: int, depth: int) -> nn.Module:
        cfg = self.cfg
        heads, dim_head = cfg.heads(channels)
        return SpatialVideoTransformer(
            channels,
            heads,
            dim_head,
            depth=depth,
            context_dim=cfg.context_width,
            use_linear=cfg.use_linear_in_transformer,
            dropout=cfg.dropout,
            time_context_dim=cfg.time_context_dim,
            ff_in=cfg.extra_ff_mix_layer,
            use_spatial_context=cfg.use_spatial_context,
            merge_strategy=cfg.merge_strategy,
            merge_factor=cfg.merge_factor,
            disable_temporal_crossattention=cfg.disable_temporal_crossattention,
            max_time_embed_period=cfg.max_ddpm_temb_period,
        )

    def forward(  # type: ignore[override]
        self,
        x: torch.Tensor,
        timesteps: torch.Tensor,
        context: torch.Tensor | None = None,
        y: torch.Tensor | None = None,
        *,
        num_video_frames: int,
        image_only_indicator: torch.Tensor | None = None,
        time_context: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (b*T, in, H, W), timesteps (b*T,), context (b*T, M, ctx), y (b*T, adm);
        image_only_indicator (b, T), 1 = spatial path only for that frame (zeros when omitted)."""
        if x.shape[0] % num_video_frames:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_video_frames={num_video_frames}")
        if image_only_indicator is None:
            image_only_indicator = torch.zeros(x.shape[0] // num_video_frames, num_video_frames, device=x.device)
        cond = Cond(
            emb=self.embed(timesteps, y),
            context=None if context is None else context.to(self.dtype),
            num_frames=num_video_frames,
            image_only_indicator=image_only_indicator,
            time_context=None if time_context is None else time_context.to(self.dtype),
        )
        return self.run(x.to(self.dtype), cond).to(x.dtype)
