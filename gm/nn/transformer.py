"""Transformer blocks of the UNet (sgm `modules/attention.py` GEGLU, FeedForward,
BasicTransformerBlock, SpatialTransformer).

SpatialTransformer: GroupNorm(eps 1e-6) -> proj_in (1x1 conv, or Linear after flattening when
`use_linear`) -> BasicTransformerBlocks on (B, h*w, C) tokens -> proj_out -> + input.
BasicTransformerBlock: x += attn1(norm1(x)); x += attn2(norm2(x), context); x += ff(norm3(x)).
FeedForward is GEGLU: proj -> (value, gate) halves, value * gelu(gate) (exact erf GELU).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gm.nn.attention import CrossAttention
from gm.nn.blocks import Cond, CondModule
from gm.nn.norm import group_norm


class GEGLU(nn.Module):
    """Linear(d, 2*inner) split into value (first half) and gate (second half)."""

    def __init__(self, dim_in: int, dim_out: int) -> None:
        super().__init__()
        self.proj = nn.Linear(dim_in, dim_out * 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        value, gate = self.proj(x).chunk(2, dim=-1)
        return value * F.gelu(gate)


class FeedForward(nn.Module):
    """GEGLU feed-forward, hidden width mult*dim; keys net.0.proj and net.2."""

    def __init__(self, dim: int, dim_out: int | None = None, mult: int = 4, dropout: float = 0.0) -> None:
        super().__init__()
        inner = dim * mult
        self.net = nn.Sequential(GEGLU(dim, inner), nn.Dropout(dropout), nn.Linear(inner, dim_out or dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


class BasicTransformerBlock(nn.Module):
    """Self-attention, cross-attention (self when context_dim is None), GEGLU feed-forward."""

    def __init__(
        self, dim: int, n_heads: int, d_head: int, context_dim: int | None = None, dropout: float = 0.0
    ) -> None:
        super().__init__()
        self.attn1 = CrossAttention(dim, n_heads, d_head, dropout=dropout)
        self.ff = FeedForward(dim, dropout=dropout)
        self.attn2 = CrossAttention(dim, n_heads, d_head, context_dim=context_dim, dropout=dropout)
        self.norm1 = nn.LayerNorm(dim)
        self.norm2 = nn.LayerNorm(dim)
        self.norm3 = nn.LayerNorm(dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor | None = None) -> torch.Tensor:
        x = self.attn1(self.norm1(x)) + x
        x = self.attn2(self.norm2(x), context) + x
        return self.ff(self.norm3(x)) + x


class SpatialTransformer(CondModule):
    """Image transformer over the h*w positions of a feature map, with cross-attention to context."""

    def __init__(
        self,
        in_channels: int,
        n_heads: int,
        d_head: int,
        depth: int = 1,
        context_dim: int | None = None,
        use_linear: bool = False,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner = n_heads * d_head
        self.use_linear = use_linear
        self.norm = group_norm(in_channels, eps=1e-6)
        self.proj_in: nn.Module = (
            nn.Linear(in_channels, inner) if use_linear else nn.Conv2d(in_channels, inner, 1)
        )
        self.transformer_blocks = nn.ModuleList(
            BasicTransformerBlock(inner, n_heads, d_head, context_dim=context_dim, dropout=dropout)
            for _ in range(depth)
        )
        self.proj_out: nn.Module = (
            nn.Linear(inner, in_channels) if use_linear else nn.Conv2d(inner, in_channels, 1)
        )

    def project_in(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, h, w) -> (B, h*w, inner) tokens."""
        x = self.norm(x)
        if not self.use_linear:
            x = self.proj_in(x)
        x = x.flatten(2).transpose(1, 2)  # (B, h*w, C)
        return self.proj_in(x) if self.use_linear else x

    def project_out(
        self, tokens: torch.Tensor, h: int, w: int, memory_format: torch.memory_format = torch.contiguous_format
    ) -> torch.Tensor:
        """(B, h*w, inner) -> (B, C, h, w) laid out in `memory_format`.

        The transposed token view is channels-last by its strides; handing that on to the next
        convolution when the weights are NCHW makes oneDNN/cuDNN re-lay out the weights on every
        call (measured: twice the per-call peak, +50 % time on the CPU), so the map is made
        contiguous in the layout the rest of the network uses.
        """
        if self.use_linear:
            tokens = self.proj_out(tokens)
        x = tokens.transpose(1, 2).unflatten(2, (h, w)).contiguous(memory_format=memory_format)
        return x if self.use_linear else self.proj_out(x)

    def mix(self, tokens: torch.Tensor, cond: Cond, h: int, w: int) -> torch.Tensor:
        """Run the transformer blocks on the tokens (the video transformer adds time mixing)."""
        for block in self.transformer_blocks:
            tokens = block(tokens, cond.context)
        return tokens

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        h, w = x.shape[-2:]
        tokens = self.mix(self.project_in(x), cond, h, w)
        return self.project_out(tokens, h, w, memory_format_of(x)) + x


def memory_format_of(x: torch.Tensor) -> torch.memory_format:
    """channels_last for an NHWC-strided map (gm's `perf.channels_last`), else contiguous."""
    nhwc = x.ndim == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous()
    return torch.channels_last if nhwc else torch.contiguous_format
