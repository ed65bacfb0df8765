"""The SV4D / SV4D 2.0 UNet (sgm `diffusionmodules/video_model.py` `SpatialUNetModelWithTime`).

The image UNet's layout with its two block builders swapped for the multiview blocks of
`gm.nn.multiview`: every ResBlock becomes a PostHocResBlock (temporal conv over the flattened
frame x view axis) and every SpatialTransformer a MultiviewTransformer (spatial, camera and
motion attention). Rows of x are t-major (videos, frames T, views V) with num_video_frames = T*V;
the CLIP context is (videos, T, D), one token per frame, and `cond_view` (videos*V, 4, H, W)
holds the reference-view latents. SV4D 2.0 adds a camera embedding fed from the UNet's own
time+vector embedding (`use_camera_emb`, so adm_in_channels = 4*model_channels), a separate
motion merge factor, and the 4-view model's "3D" camera attention reshapes.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from gm.errors import PresetError
from gm.models.unet import UNet, UNetConfig
from gm.nn.multiview import MultiviewTransformer, PostHocResBlock, ViewCond
from gm.nn.temporal import MergeStrategy


@dataclass(frozen=True)
class SV4DUNetConfig(UNetConfig):
    """`SpatialUNetModelWithTime` hyper-parameters: the UNet's plus the spacetime ones (sgm names)."""

    motion_context_dim: int = 4  # the reference hard-codes 4 (VAE latent channels)
    extra_ff_mix_layer: bool = False
    use_spatial_context: bool = True  # the camera attention's context is the CLIP token
    use_spatial_transformer: bool = True
    time_block_merge_strategy: MergeStrategy = "fixed"
    time_block_merge_factor: float = 0.5
    time_kernel_size: int | tuple[int, ...] = 3
    time_mix_legacy: bool = False
    # The reference accepts the flag but its buggy blender branch is disabled (`if False`).
    replicate_time_mix_bug: bool = False
    legacy: bool = False  # with num_head_channels set, legacy only re-derives the same head width
    use_motion_attention: bool = True
    use_camera_emb: bool = False
    use_3d_attention: bool = False
    separate_motion_merge_factor: bool = False
    disable_temporal_crossattention: bool = False
    max_ddpm_temb_period: int = 10000
    # Accepted for parity with the YAML (softmax-xformers); every value is the same SDPA math.
    spatial_transformer_attn_type: Literal["softmax", "softmax-xformers"] = "softmax"

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.context_dim is None or not self.use_spatial_transformer:
            raise PresetError("network: the SV4D UNet needs use_spatial_transformer = true and context_dim")
        if not self.use_motion_attention or not self.use_spatial_context:
            raise PresetError("network: only use_motion_attention = true, use_spatial_context = true are supported")
        if self.time_mix_legacy:
            raise PresetError("network: time_mix_legacy = true is not supported (every release uses false)")
        if self.use_camera_emb and self.adm_in_channels != 4 * self.model_channels:
            raise PresetError(
                "network: use_camera_emb feeds the time+vector embedding to the camera MLP, so "
                f"adm_in_channels must be 4*model_channels = {4 * self.model_channels}"
            )


class SV4DUNet(UNet):
    """`forward(x, timesteps, context, y, num_video_frames=T*V, image_only_indicator, cond_view)`."""

    cfg: SV4DUNetConfig

    def __init__(self, cfg: SV4DUNetConfig) -> None:
        super().__init__(cfg)

    def make_resblock(self, channels: int, out_channels: int) -> nn.Module:
        cfg = self.cfg
        return PostHocResBlock(
            channels,
            4 * cfg.model_channels,
            out_channels,
            dropout=cfg.dropout,
            video_kernel_size=cfg.time_kernel_size,
            merge_strategy=cfg.time_block_merge_strategy,
            merge_factor=cfg.time_block_merge_factor,
        )

    def make_transformer(self, channels: int, depth: int) -> nn.Module:
        cfg = self.cfg
        heads, dim_head = cfg.heads(channels)
        assert cfg.context_width is not None
        return MultiviewTransformer(
            channels,
            heads,
            dim_head,
            depth=depth,
            context_dim=cfg.context_width,
            motion_context_dim=cfg.motion_context_dim,
            use_linear=cfg.use_linear_in_transformer,
            dropout=cfg.dropout,
            ff_in=cfg.extra_ff_mix_layer,
            merge_strategy=cfg.time_block_merge_strategy,
            merge_factor=cfg.time_block_merge_factor,
            camera_emb_dim=4 * cfg.model_channels if cfg.use_camera_emb else None,
            use_3d_attention=cfg.use_3d_attention,
            separate_motion_merge_factor=cfg.separate_motion_merge_factor,
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
        image_only_indicator: torch.Tensor,
        cond_view: torch.Tensor,
        cond_motion: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """x (b*T*V, in, H, W), timesteps (b*T*V,), context (b, T, D), y (b*T*V, adm),
        image_only_indicator (b, T*V) (only its shape is used, as in the reference),
        cond_view (b*V, 4, H', W'). `cond_motion` is accepted and unused, as in the reference
        (the motion frames reach the network through the concat channels)."""
        del cond_motion
        if context is None or context.ndim != 3:
            raise ValueError("the SV4D UNet needs the per-frame CLIP context (videos, T, D)")
        if x.shape[0] % num_video_frames:
            raise ValueError(f"batch {x.shape[0]} is not a multiple of num_video_frames={num_video_frames}")
        cond = ViewCond(
            emb=self.embed(timesteps, y),
            context=context.to(self.dtype),
            num_frames=num_video_frames,
            image_only_indicator=image_only_indicator,
            cond_view=cond_view.to(self.dtype),
        )
        return self.run(x.to(self.dtype), cond).to(x.dtype)
