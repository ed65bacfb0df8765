"""Exponential moving average of the trainable weights (sgm `modules/ema.py`, LitEma).

decay_n = min(decay, (1 + n) / (10 + n)) with n = number of updates so far (counting this one), so
early shadows follow the weights closely. Shadows are float32 tensors updated in place (unlike
the reference, which silently drops in-place updates on a dtype change, docs/reference.md §8.36).
"""

from __future__ import annotations

import torch
from torch import nn


class EMA:
    """Shadow copies of `module`'s trainable parameters, keyed by parameter name."""

    def __init__(self, module: nn.Module, decay: float = 0.9999) -> None:
        self.decay = decay
        self.num_updates = 0
        self.shadow = {
            name: p.detach().float().clone() for name, p in module.named_parameters() if p.requires_grad
        }

    def current_decay(self) -> float:
        n = self.num_updates
        return min(self.decay, (1 + n) / (10 + n))

    @torch.no_grad()
    def update(self, module: nn.Module) -> None:
        self.num_updates += 1
        one_minus = 1.0 - self.current_decay()
        for name, p in module.named_parameters():
            if name in self.shadow:
                s = self.shadow[name]
                s.sub_(one_minus * (s - p.detach().float()))

    @torch.no_grad()
    def copy_to(self, module: nn.Module) -> None:
        for name, p in module.named_parameters():
            if name in self.shadow:
                p.copy_(self.shadow[name].to(p.dtype))

    def state_dict(self) -> dict[str, torch.Tensor]:
        return dict(self.shadow)

    def load_state_dict(self, tensors: dict[str, torch.Tensor], num_updates: int) -> None:
        missing = sorted(set(self.shadow) - set(tensors))
        if missing:
            raise KeyError(f"EMA state lacks {missing[:3]}")
        for name in self.shadow:
            self.shadow[name].copy_(tensors[name])
        self.num_updates = num_updates
