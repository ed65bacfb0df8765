"""Attention layers via `F.scaled_dot_product_attention` (sgm `modules/attention.py` CrossAttention,
`diffusionmodules/model.py` AttnBlock).

* `CrossAttention`: multi-head attention with keys to_q / to_k / to_v (no bias) and to_out.0
  (with bias); self-attention when no context is given. Scale d_head**-0.5 (the SDPA default).
* `AttnBlock`: the autoencoder's single-head attention over all h*w positions, with 1x1-conv
  q / k / v / proj_out and a residual, scale C**-0.5.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from gm.nn.norm import group_norm

# Fused attention kernels launch one grid row per (batch, head); very large batches (the temporal
# attention of video models runs over batch*height*width rows) exceed the CUDA grid limit, so the
# batch is split into chunks of at most this many (batch*head) rows, as sgm does for xformers.
MAX_BATCH_HEADS = 32768


def attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """SDPA on (B, H, N, D) tensors, chunked over B when B*H is huge."""
    batch, heads = q.shape[:2]
    rows = max(1, MAX_BATCH_HEADS // heads)
    if batch <= rows:
        return F.scaled_dot_product_attention(q, k, v)
    return torch.cat(
        [
            F.scaled_dot_product_attention(q[i : i + rows], k[i : i + rows], v[i : i + rows])
            for i in range(0, batch, rows)
        ]
    )


class CrossAttention(nn.Module):
    """Multi-head (cross-)attention; `context=None` makes it self-attention."""

    def __init__(
        self,
        query_dim: int,
        heads: int,
        dim_head: int,
        context_dim: int | None = None,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        inner = heads * dim_head
        context_dim = query_dim if context_dim is None else context_dim
        self.heads = heads
        self.to_q = nn.Linear(query_dim, inner, bias=False)
        self.to_k = nn.Linear(context_dim, inner, bias=False)
        self.to_v = nn.Linear(context_dim, inner, bias=False)
        self.to_out = nn.Sequential(nn.Linear(inner, query_dim), nn.Dropout(dropout))

    def forward(
        self, x: torch.Tensor, context: torch.Tensor | None = None, context_repeat: int = 1
    ) -> torch.Tensor:
        """x (B, N, C); context (B // context_repeat, M, Cc) or None.

        `context_repeat` > 1 means each context row serves `context_repeat` consecutive query rows
        (the video transformers' per-pixel temporal rows share one context per video): keys and
        values are projected once and then repeated, which is the same math as repeating the
        context first.
        """
        ctx = x if context is None else context
        q = self.to_q(x)
        k = self.to_k(ctx)
        v = self.to_v(ctx)
        if context_repeat > 1:
            k = k.repeat_interleave(context_repeat, dim=0)  # (B, M, inner)
            v = v.repeat_interleave(context_repeat, dim=0)
        b, n, inner = q.shape
        d = inner // self.heads
        q = q.view(b, n, self.heads, d).transpose(1, 2)  # (B, H, N, d)
        k = k.view(b, k.shape[1], self.heads, d).transpose(1, 2)  # (B, H, M, d)
        v = v.view(b, v.shape[1], self.heads, d).transpose(1, 2)
        out = attention(q, k, v).transpose(1, 2).reshape(b, n, inner)  # (B, N, inner)
        return self.to_out(out)


class AttnBlock(nn.Module):
    """VAE mid-block attention: GroupNorm(eps 1e-6), 1x1-conv q/k/v, one head, proj_out, residual."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.norm = group_norm(channels, eps=1e-6)
        self.q = nn.Conv2d(channels, channels, 1)
        self.k = nn.Conv2d(channels, channels, 1)
        self.v = nn.Conv2d(channels, channels, 1)
        self.proj_out = nn.Conv2d(channels, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        hn = self.norm(x)
        q, k, v = (
            conv(hn).reshape(b, 1, c, h * w).transpose(2, 3)  # (B, 1, h*w, C)
            for conv in (self.q, self.k, self.v)
        )
        out = attention(q, k, v).transpose(2, 3).reshape(b, c, h, w)  # (B, C, h, w)
        return x + self.proj_out(out)
