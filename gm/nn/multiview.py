"""Multiview ("camera") and motion attention blocks of SV4D / SV4D 2.0 (sgm
`modules/spacetime_attention.py` PostHocSpatialTransformerWithTimeMixingAndMotion,
`diffusionmodules/video_model.py` PostHocResBlockWithTime).

Features travel as (B, C, h, w) with B = videos * frames * views, t-major: row (b, t, v).
* `PostHocResBlock`: ResBlock per row, then `time_mix_blocks` (3-D ResBlock, kernel (3, 1, 1))
  over the flattened T*V axis (so the temporal conv crosses view and frame boundaries).
* `MultiviewTransformer`: per image spatial transformer block (one CLIP token per frame), then a
  camera attention across the V views (`time_mix_blocks`, context = the frame's CLIP token) and a
  motion attention across the T frames (`motion_blocks`, context = the reference view's latent
  pixel, bilinearly resized to the level's size).
Both merge with an AlphaBlender whose image-only indicator is zero in the reference (it only
contributes its batch size), so alpha = sigmoid(mix_factor) everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from gm.nn.blocks import Cond
from gm.nn.embeddings import embed_mlp, timestep_embedding
from gm.nn.temporal import AlphaBlender, MergeStrategy, VideoResBlock, VideoTransformerBlock
from gm.nn.transformer import SpatialTransformer


@dataclass(frozen=True)
class ViewCond(Cond):
    """`Cond` plus the SV4D inputs. `context` is (videos, T, D): one CLIP token per frame, not per
    row; `num_frames` is T*V; `cond_view` (videos*V, 4, H, W) are the reference-view latents."""

    cond_view: torch.Tensor | None = None


def _no_images(rows: int, like: torch.Tensor) -> torch.Tensor:
    """The all-zero image-only indicator (rows, 1) the reference's spacetime blocks pass."""
    return torch.zeros(rows, 1, device=like.device, dtype=like.dtype)


class PostHocResBlock(VideoResBlock):
    """ResBlock per image, then a (3, 1, 1) 3-D ResBlock over the flattened (frame, view) axis; the
    reference multiplies the image-only indicator by 0 here, so the learned mix always applies."""

    time_block_name = "time_mix_blocks"

    def mix_indicator(self, cond: Cond) -> torch.Tensor:
        assert cond.image_only_indicator is not None
        return torch.zeros_like(cond.image_only_indicator)


class MultiviewTransformer(SpatialTransformer):
    """SpatialTransformer + camera (across views) and motion (across frames) attention."""

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int,
        context_dim: int,
        motion_context_dim: int,
        use_linear: bool = False,
        dropout: float = 0.0,
        ff_in: bool = False,
        merge_strategy: MergeStrategy = "fixed",
        merge_factor: float = 0.5,
        camera_emb_dim: int | None = None,
        use_3d_attention: bool = False,
        separate_motion_merge_factor: bool = False,
        disable_temporal_crossattention: bool = False,
        max_time_embed_period: int = 10000,
    ) -> None:
        super().__init__(in_channels, n_heads, d_head, depth, context_dim, use_linear, dropout)
        inner = n_heads * d_head

        def mix_blocks(ctx_dim: int) -> nn.ModuleList:
            return nn.ModuleList(
                VideoTransformerBlock(inner, n_heads, d_head, context_dim=ctx_dim, ff_in=ff_in,
                                      disable_temporal_crossattention=disable_temporal_crossattention,
                                      dropout=dropout)
                for _ in range(depth)
            )

        self.time_mix_blocks = mix_blocks(context_dim)  # camera attention (sgm's name)
        self.motion_blocks = mix_blocks(motion_context_dim)
        self.use_camera_emb = camera_emb_dim is not None
        self.use_3d_attention = use_3d_attention
        self.max_time_embed_period = max_time_embed_period
        # View embedding: of the view index (SV4D) or of the UNet's time+vector embedding (SV4D 2.0).
        self.time_mix_time_embed = embed_mlp(camera_emb_dim or in_channels, 4 * in_channels, in_channels)
        self.time_mix_motion_embed = embed_mlp(in_channels, 4 * in_channels, in_channels)
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, "tokens")
        if separate_motion_merge_factor:
            self.time_mixer_motion = AlphaBlender(merge_factor, merge_strategy, "tokens")

    def _index_embedding(self, mlp: nn.Sequential, count: int, videos: int, like: torch.Tensor) -> torch.Tensor:
        """mlp(sinusoid(index)) for index 0..count-1 of every video: (videos*count, 1, C)."""
        index = torch.arange(count, device=like.device).repeat(videos)  # (videos*count,)
        emb = timestep_embedding(index, mlp[0].in_features, self.max_time_embed_period)
        return mlp(emb.to(like.dtype))[:, None]

    def mix(self, tokens: torch.Tensor, cond: Cond, h: int, w: int) -> torch.Tensor:
        assert isinstance(cond, ViewCond) and cond.context is not None and cond.cond_view is not None
        context = cond.context  # (b, T, D)
        b, t, d = context.shape
        v = cond.cond_view.shape[0] // b
        hw, c = h * w, tokens.shape[-1]
        view_latents = F.interpolate(cond.cond_view.to(tokens.dtype), size=(h, w), mode="bilinear")  # (b*V, 4, h, w)
        spatial_context = context[:, :, None].expand(b, t, v, d).reshape(b * t * v, 1, d)  # (b*T*V, 1, D)
        frame_context = context.reshape(b * t, 1, d)  # (b*T, 1, D), one row per hw camera rows
        motion_context = view_latents.permute(0, 2, 3, 1).reshape(b * v * hw, 1, -1)  # (b*V*h*w, 1, 4)

        emb_time = self._index_embedding(self.time_mix_motion_embed, t, b, tokens)  # (b*T, 1, C)
        if self.use_camera_emb:
            cam = cond.emb.view(b, t, v, -1)[:, 0].reshape(b * v, -1)  # frame 0's embedding per view
            emb_view = self.time_mix_time_embed(cam.to(tokens.dtype))[:, None]  # (b*V, 1, C)
        else:
            emb_view = self._index_embedding(self.time_mix_time_embed, v, b, tokens)  # (b*V, 1, C)
        motion_mixer = getattr(self, "time_mixer_motion", self.time_mixer)

        for block, view_block, motion_block in zip(self.transformer_blocks, self.time_mix_blocks, self.motion_blocks):
            tokens = block(tokens, spatial_context)  # (b*T*V, hw, C)
            # Camera attention: sequences over the V views.
            if self.use_3d_attention:
                # Literal reshapes of the reference: (b, V, hw)-ordered rows of T tokens, regrouped
                # by the block into runs of V consecutive rows (sequence length V).
                x = tokens.view(b, t, v, hw, c).permute(0, 2, 3, 1, 4).reshape(b * v * hw, t, c)
                mixed = view_block(x + emb_view.repeat_interleave(hw, dim=0), v, frame_context, hw)
                x = self.time_mixer(x, mixed, _no_images(x.shape[0], x))
                x = x.view(b, v, hw, t, c).permute(0, 3, 1, 2, 4).reshape(b * t, v * hw, c)  # (b*T, V*hw, C)
            else:
                x = tokens.view(b, t, v, hw, c).permute(0, 2, 1, 3, 4).reshape(b * v, t * hw, c)  # (b*V, T*hw, C)
                mixed = view_block(x + emb_view, v, frame_context, hw)
                x = self.time_mixer(x, mixed, _no_images(x.shape[0], x))
                x = x.view(b, v, t, hw, c).permute(0, 2, 1, 3, 4).reshape(b * t, v * hw, c)  # (b*T, V*hw, C)
            # Motion attention: sequences over the T frames, context = reference-view pixel.
            mixed = motion_block(x + emb_time, t, motion_context)
            x = motion_mixer(x, mixed, _no_images(x.shape[0], x))
            tokens = x.view(b, t, v, hw, c).reshape(b * t * v, hw, c)  # (b*T*V, hw, C)
        return tokens
