"""Time-mixing blocks of the video networks (sgm `diffusionmodules/util.py` AlphaBlender,
`diffusionmodules/video_model.py` VideoResBlock, `modules/video_attention.py`
VideoTransformerBlock and SpatialVideoTransformer).

Video features travel as (B, C, H, W) with B = videos * frames, frames of one video contiguous.
Each video block runs its image parent per frame, a temporal branch across the frames, and mixes
the two with an AlphaBlender: out = alpha * spatial + (1 - alpha) * temporal, where
  "fixed": alpha = mix_factor (a buffer), "learned": alpha = sigmoid(mix_factor),
  "learned_with_images": alpha = 1 where image_only_indicator is set, else sigmoid(mix_factor).
The SV4D network reuses these blocks.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from gm.nn.attention import CrossAttention
from gm.nn.blocks import Cond
from gm.nn.embeddings import embed_mlp, timestep_embedding
from gm.nn.resblock import ResBlock
from gm.nn.transformer import FeedForward, SpatialTransformer

MergeStrategy = Literal["fixed", "learned", "learned_with_images"]


class AlphaBlender(nn.Module):
    """Blend spatial and temporal branches; `layout` says how (videos, frames) alphas broadcast."""

    def __init__(self, alpha: float, merge_strategy: MergeStrategy, layout: Literal["video", "tokens"]) -> None:
        super().__init__()
        self.merge_strategy = merge_strategy
        self.layout = layout
        if merge_strategy == "fixed":
            self.register_buffer("mix_factor", torch.tensor([alpha]))
        else:
            self.mix_factor = nn.Parameter(torch.tensor([alpha]))

    def get_alpha(self, image_only_indicator: torch.Tensor | None) -> torch.Tensor:
        """float32 alpha: shape (1,) or, with images, (b, 1, t, 1, 1) ("video") / (b*t, 1, 1)."""
        factor = self.mix_factor.float()
        if self.merge_strategy == "fixed":
            return factor
        alpha = torch.sigmoid(factor)
        if self.merge_strategy == "learned":
            return alpha
        if image_only_indicator is None:
            raise ValueError("merge_strategy 'learned_with_images' needs an image_only_indicator")
        alpha = torch.where(image_only_indicator.bool(), torch.ones_like(alpha), alpha)  # (b, t)
        b, t = alpha.shape
        return alpha.reshape(b, 1, t, 1, 1) if self.layout == "video" else alpha.reshape(b * t, 1, 1)

    def forward(
        self, x_spatial: torch.Tensor, x_temporal: torch.Tensor, image_only_indicator: torch.Tensor | None
    ) -> torch.Tensor:
        alpha = self.get_alpha(image_only_indicator)
        dtype = x_spatial.dtype
        return alpha.to(dtype) * x_spatial + (1.0 - alpha).to(dtype) * x_temporal


def to_video(x: torch.Tensor, frames: int) -> torch.Tensor:
    """(b*t, C, H, W) -> (b, C, t, H, W)."""
    return x.unflatten(0, (-1, frames)).transpose(1, 2)


def from_video(x: torch.Tensor) -> torch.Tensor:
    """(b, C, t, H, W) -> (b*t, C, H, W)."""
    return x.transpose(1, 2).flatten(0, 1)


class VideoResBlock(ResBlock):
    """ResBlock per frame, then `time_stack` (3-D ResBlock, kernel video_kernel_size) across frames.

    SV4D's PostHocResBlock is the same block under another checkpoint name; subclasses set
    `time_block_name` and may override `mix_indicator`.
    """

    time_block_name = "time_stack"  # checkpoint key of the temporal 3-D ResBlock

    def __init__(
        self,
        channels: int,
        emb_channels: int,
        out_channels: int | None = None,
        dropout: float = 0.0,
        video_kernel_size: int | tuple[int, ...] = 3,
        merge_strategy: MergeStrategy = "fixed",
        merge_factor: float = 0.5,
    ) -> None:
        super().__init__(channels, emb_channels, out_channels, dropout=dropout)
        out_channels = out_channels or channels
        temporal = ResBlock(out_channels, emb_channels, out_channels, dropout=dropout, dims=3,
                            kernel_size=video_kernel_size)
        self.add_module(self.time_block_name, temporal)
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, "video")

    def mix_indicator(self, cond: Cond) -> torch.Tensor | None:
        return cond.image_only_indicator

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        t = cond.num_frames
        spatial = to_video(super().forward(x, cond), t)  # (b, C, t, H, W)
        temporal_block = getattr(self, self.time_block_name)
        temporal = temporal_block.residual(spatial, cond.emb.unflatten(0, (-1, t)))  # emb (b, t, E)
        return from_video(self.time_mixer(spatial, temporal, self.mix_indicator(cond)))


class VideoTransformerBlock(nn.Module):
    """Transformer over the frame axis of every spatial position: rows (b*t, s, C) -> (b*s, t, C)."""

    def __init__(
        self,
        dim: int,
        n_heads: int,
        d_head: int,
        context_dim: int | None = None,
        ff_in: bool = False,
        disable_temporal_crossattention: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if ff_in:  # extra_ff_mix_layer
            self.norm_in = nn.LayerNorm(dim)
            self.ff_in = FeedForward(dim, dropout=dropout)
        self.attn1 = CrossAttention(dim, n_heads, d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        if not disable_temporal_crossattention:
            self.norm2 = nn.LayerNorm(dim)
            self.attn2 = CrossAttention(dim, n_heads, d_head, context_dim=context_dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(
        self, x: torch.Tensor, frames: int, context: torch.Tensor | None = None, context_repeat: int = 1
    ) -> torch.Tensor:
        """x (b*t, s, C); context (b, M, Cc) is shared by the s rows of a video (context_repeat = s)."""
        bt, s, c = x.shape
        x = x.unflatten(0, (-1, frames)).transpose(1, 2).flatten(0, 1)  # (b*s, t, C)
        if hasattr(self, "ff_in"):
            x = self.ff_in(self.norm_in(x)) + x
        x = self.attn1(self.norm1(x)) + x
        if hasattr(self, "attn2"):
            x = self.attn2(self.norm2(x), context, context_repeat if context is not None else 1) + x
        x = self.ff(self.norm3(x)) + x
        return x.unflatten(0, (-1, s)).transpose(1, 2).flatten(0, 1)  # (b*t, s, C)


class SpatialVideoTransformer(SpatialTransformer):
    """SpatialTransformer whose every block is followed by a frame-axis VideoTransformerBlock.

    The temporal block sees x + time_pos_embed(frame index embedding); its context is the first
    frame's context of each video (use_spatial_context) or the given time_context.
    """

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        use_linear: bool = False,
        dropout: float = 0.0,
        time_context_dim: int | None = None,
        ff_in: bool = False,
        use_spatial_context: bool = False,
        merge_strategy: MergeStrategy = "fixed",
        merge_factor: float = 0.5,
        disable_temporal_crossattention: bool = False,
        max_time_embed_period: int = 10000,
    ) -> None:
        super().__init__(in_channels, n_heads, d_head, depth, context_dim, use_linear, dropout)
        inner = n_heads * d_head
        self.use_spatial_context = use_spatial_context
        self.max_time_embed_period = max_time_embed_period
        self.time_stack = nn.ModuleList(
            VideoTransformerBlock(
                inner,
                n_heads,
                d_head,
                context_dim=context_dim if use_spatial_context else time_context_dim,
                ff_in=ff_in,
                disable_temporal_crossattention=disable_temporal_crossattention,
                dropout=dropout,
            )
            for _ in range(depth)
        )
        self.time_pos_embed = embed_mlp(in_channels, 4 * in_channels, in_channels)
        self.time_mixer = AlphaBlender(merge_factor, merge_strategy, "tokens")

    def mix(self, tokens: torch.Tensor, cond: Cond, h: int, w: int) -> torch.Tensor:
        t = cond.num_frames
        b = tokens.shape[0] // t
        time_context = cond.time_context
        if self.use_spatial_context:
            assert cond.context is not None and cond.context.ndim == 3
            time_context = cond.context[::t]  # (b, M, Cc): the first frame's context of each video
        elif time_context is not None and time_context.ndim == 2:
            time_context = time_context[:, None]  # (b, 1, Cc)
        frames = torch.arange(t, device=tokens.device).repeat(b)  # (b*t,) frame index per row
        emb = timestep_embedding(frames, self.time_pos_embed[0].in_features, self.max_time_embed_period)
        emb = self.time_pos_embed(emb.to(tokens.dtype))[:, None]  # (b*t, 1, C)
        for block, mix_block in zip(self.transformer_blocks, self.time_stack):
            tokens = block(tokens, cond.context)
            temporal = mix_block(tokens + emb, t, time_context, context_repeat=h * w)
            tokens = self.time_mixer(tokens, temporal, cond.image_only_indicator)
        return tokens
