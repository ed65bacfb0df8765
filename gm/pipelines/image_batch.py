"""What the image pipeline needs to sample several images as one batch, and the turbo demo's noise.

Each image keeps its own noise stream (seed + k, drawn on the CPU), so an image sampled in a batch is
the image sampled alone; conditioning of one image is repeated along the batch.
"""

from __future__ import annotations

import numpy as np
import torch

from gm.diffusion.denoiser import Cond
from gm.diffusion.samplers import NoiseFn


def joined(fns: list[NoiseFn]) -> NoiseFn:
    """One batch's noise: each image's own draw, stacked."""
    return lambda step: fns[0](step) if len(fns) == 1 else torch.cat([f(step) for f in fns])


def repeat_cond(cond: Cond, b: int, done: dict[int, torch.Tensor]) -> Cond:
    """Conditioning of one image for a batch of b (shared tensors stay shared between c and uc)."""
    if b == 1:
        return cond
    out = {}
    for key, value in cond.items():
        if isinstance(value, torch.Tensor) and id(value) not in done:
            done[id(value)] = value.repeat(b, *([1] * (value.ndim - 1)))
        out[key] = done[id(value)] if isinstance(value, torch.Tensor) else value
    return out


def numpy_noise(seed: int, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """Standard normal noise from numpy's RandomState(seed), as the turbo demo draws it."""
    return torch.from_numpy(np.random.RandomState(seed).randn(*shape).astype(np.float32)).to(device)


def turbo_noise_fn(seed: int, shape: tuple[int, ...], device: torch.device) -> NoiseFn:
    """The turbo demo's ancestral draws: call i (every step, the last included) uses RandomState(seed + 1 + i)."""
    calls = iter(range(seed + 1, seed + 1 + 10_000))
    return lambda _step: numpy_noise(next(calls), shape, device)
