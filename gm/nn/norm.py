"""GroupNorm computed in float32, as sgm's `GroupNorm32` (`diffusionmodules/util.py`).

sgm normalises in fp32 inside the UNet ResBlocks; we do the same for every GroupNorm (the VAE and
the transformer input norm too) because it is cheap and keeps fp16/bf16 weights stable. In fp32
it is exactly `nn.GroupNorm`.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class GroupNorm32(nn.GroupNorm):
    """`nn.GroupNorm` that computes in float32 and returns the input dtype."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        weight = self.weight.float() if self.weight is not None else None
        bias = self.bias.float() if self.bias is not None else None
        return F.group_norm(x.float(), self.num_groups, weight, bias, self.eps).to(x.dtype)


def group_norm(channels: int, eps: float = 1e-5, groups: int = 32) -> GroupNorm32:
    """32-group affine GroupNorm; eps 1e-5 in UNet ResBlocks, 1e-6 in transformers and the VAE."""
    return GroupNorm32(groups, channels, eps=eps, affine=True)
