"""Sinusoidal embeddings and the small MLPs that consume them (sgm `diffusionmodules/util.py`).

`timestep_embedding` is sgm's: COS FIRST, then sin, no phase shift; the frequencies are
exp(-ln(max_period) * i / half) for i < half; an odd `dim` gets one zero column appended.
It is used for diffusion timesteps, the SDXL/SVD micro-conditioning scalars and the frame index
embedding of the video transformers.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


def timestep_embedding(t: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """(N,) float/int values -> (N, dim) float32 [cos(t*f_i) | sin(t*f_i)]."""
    half = dim // 2
    freqs = torch.exp(
        -math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half
    )
    args = t[:, None].float() * freqs[None]  # (N, half)
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = F.pad(emb, (0, 1))
    return emb


def embed_mlp(in_dim: int, hidden_dim: int, out_dim: int) -> nn.Sequential:
    """Linear -> SiLU -> Linear; keys `.0` and `.2` (time_embed, label_emb.0, time_pos_embed)."""
    return nn.Sequential(nn.Linear(in_dim, hidden_dim), nn.SiLU(), nn.Linear(hidden_dim, out_dim))


class Timestep(nn.Module):
    """Parameter-free `timestep_embedding` as a module (label_emb for num_classes='timestep')."""

    def __init__(self, dim: int) -> None:
        super().__init__()
        self.dim = dim

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return timestep_embedding(t, self.dim)
