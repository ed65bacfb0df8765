"""What every sampler shares: the callable types, CPU-drawn noise, the schedule pair, the ODE slope
and the ancestral split of a step.

A sampler is `f(denoise, x, sigmas, *, noise_fn=None, callback=None, <options>) -> x` where
`denoise(x, sigma) -> denoised` is already guided, `x` starts at sigmas[0] and `noise_fn(step_index)`
supplies each fresh standard-normal draw (called in order; the index is informative only).
Branch decisions read a CPU copy of the schedule and the scalar math runs on a device copy in
float32, so a step costs no host sync.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (x, sigma (B,)) -> denoised
NoiseFn = Callable[[int], torch.Tensor]  # step index -> standard normal noise shaped like x
Callback = Callable[[int, torch.Tensor, torch.Tensor], None]  # (step index, x, denoised)


def make_noise_fn(
    generator: torch.Generator, shape: tuple[int, ...], device: torch.device | str, dtype: torch.dtype
) -> NoiseFn:
    """Noise drawn on the CPU from `generator` (in call order), then moved: CPU == GPU numbers."""

    pin = torch.device(device).type == "cuda"

    def noise_fn(step_index: int) -> torch.Tensor:
        noise = torch.randn(shape, generator=generator, dtype=torch.float32)
        if pin:  # a pinned buffer lets the copy overlap instead of syncing the host
            return noise.pin_memory().to(device, dtype, non_blocking=True)
        return noise.to(device, dtype)

    return noise_fn


def default_noise(x: torch.Tensor) -> NoiseFn:
    """Noise from the global CPU generator, for callers that pass no noise_fn."""
    return make_noise_fn(torch.default_generator, tuple(x.shape), x.device, x.dtype)


class Schedule:
    """The sigmas twice: a CPU copy for branching, a device copy for the float32 scalar math."""

    def __init__(self, sigmas: torch.Tensor, x: torch.Tensor) -> None:
        self.cpu = sigmas.detach().to("cpu", torch.float32)
        self.dev = self.cpu.to(x.device)
        self.batch = x.shape[0]

    def __len__(self) -> int:
        return len(self.cpu) - 1  # number of steps

    def is_zero(self, i: int) -> bool:
        return float(self.cpu[i]) == 0.0

    def batched(self, sigma: torch.Tensor) -> torch.Tensor:
        return sigma.expand(self.batch)  # () -> (B,)


def to_d(x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The probability-flow ODE slope dx/dsigma = (x - D(x, sigma)) / sigma."""
    return (x - denoised) / sigma


def ancestral_step(
    sigma: torch.Tensor, sigma_next: torch.Tensor, eta: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(sigma_down, sigma_up): deterministic step to sigma_down, then add sigma_up fresh noise.

    sigma_up = min(s', eta * sqrt(s'^2 (s^2 - s'^2) / s^2)), sigma_down = sqrt(s'^2 - sigma_up^2).
    eta = 0 is the deterministic sampler (the reference crashes on it).
    """
    if not eta:
        return sigma_next, torch.zeros_like(sigma_next)
    sigma_up = torch.minimum(sigma_next, eta * (sigma_next**2 * (sigma**2 - sigma_next**2) / sigma**2) ** 0.5)
    sigma_down = (sigma_next**2 - sigma_up**2) ** 0.5
    return sigma_down, sigma_up
