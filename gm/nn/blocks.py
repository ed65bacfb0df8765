"""The per-call conditioning bundle and the block container of the UNets (sgm
`openaimodel.TimestepEmbedSequential`).

sgm's container dispatches on the class of each child to decide which extra inputs it gets. Here
every conditioned child subclasses `CondModule` and receives one `Cond`; plain layers (the input
conv, Downsample, Upsample) receive only `x`. Video blocks read the frame count and the
image-only indicator from the same `Cond`, so image and video UNets share one container.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.checkpoint import checkpoint


@dataclass(frozen=True)
class Cond:
    """Everything a UNet block may need besides its input features."""

    emb: torch.Tensor  # (B, 4*model_channels) time (+ label) embedding; B = videos * frames
    context: torch.Tensor | None = None  # (B, M, context_dim) cross-attention tokens
    num_frames: int = 1  # frames per video (video UNets)
    image_only_indicator: torch.Tensor | None = None  # (videos, frames); 1 = spatial path only
    time_context: torch.Tensor | None = None  # (videos, M, time_context_dim), video transformers


class CondModule(nn.Module):
    """Marker base class: subclasses implement `forward(x, cond: Cond) -> Tensor`."""


class BlockSequence(nn.Sequential):
    """nn.Sequential whose `CondModule` children also get the `Cond` (keys stay `N.i.*`)."""

    def __init__(self, *layers: nn.Module, use_checkpoint: bool = False) -> None:
        super().__init__(*layers)
        self.use_checkpoint = use_checkpoint

    def _run(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:
        for layer in self:
            x = layer(x, cond) if isinstance(layer, CondModule) else layer(x)
        return x

    def forward(self, x: torch.Tensor, cond: Cond) -> torch.Tensor:  # type: ignore[override]
        if self.use_checkpoint and self.training and torch.is_grad_enabled():
            # Gradient checkpointing (sgm's use_checkpoint): no numerical effect, less memory.
            return checkpoint(self._run, x, cond, use_reentrant=False)
        return self._run(x, cond)
