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
# A second-order step: (denoise, schedule, x, slope at sigma, sigma, sigma_to) -> x at sigma_to
SecondStep = Callable[["Denoise", "Schedule", torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


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


def heun_step(denoise: Denoise, sched: Schedule, x: torch.Tensor, d: torch.Tensor, sigma: torch.Tensor,
              sigma_to: torch.Tensor) -> torch.Tensor:
    """Heun: an Euler step, then the average of the slopes at both ends (trapezoid rule)."""
    dt = sigma_to - sigma
    x_euler = x + dt * d
    d_next = to_d(x_euler, sigma_to, denoise(x_euler, sched.batched(sigma_to)))
    return x + (d + d_next) / 2.0 * dt


def dpm2_step(denoise: Denoise, sched: Schedule, x: torch.Tensor, d: torch.Tensor, sigma: torch.Tensor,
              sigma_to: torch.Tensor) -> torch.Tensor:
    """DPM-Solver-2: the slope at the geometric midpoint of (sigma, sigma_to), used for the whole step."""
    sigma_mid = sigma.log().lerp(sigma_to.log(), 0.5).exp()
    x_2 = x + d * (sigma_mid - sigma)
    d_2 = to_d(x_2, sigma_mid, denoise(x_2, sched.batched(sigma_mid)))
    return x + d_2 * (sigma_to - sigma)


def churn_loop(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise_fn: NoiseFn | None,
    callback: Callback | None,
    churn: tuple[float, float, float, float],
    second: SecondStep | None = None,
) -> torch.Tensor:
    """Karras et al. (2022) Algorithm 2: churn (raise sigma to sigma_hat with fresh noise where
    s_tmin <= sigma <= s_tmax, gamma = min(s_churn / N, sqrt(2) - 1)), then an Euler step, or the
    `second`-order step (heun_step, dpm2_step) except on the final step to sigma 0."""
    s_churn, s_tmin, s_tmax, s_noise = churn
    sched = Schedule(sigmas, x)
    noise_fn = noise_fn or default_noise(x)
    n = len(sched)
    for i in range(n):
        gamma = min(s_churn / n, 2**0.5 - 1) if s_tmin <= float(sched.cpu[i]) <= s_tmax else 0.0
        sigma, sigma_next = sched.dev[i], sched.dev[i + 1]
        sigma_hat = sigma * (gamma + 1.0)
        if gamma > 0:
            x = x + noise_fn(i) * s_noise * (sigma_hat**2 - sigma**2) ** 0.5
        denoised = denoise(x, sched.batched(sigma_hat))
        d = to_d(x, sigma_hat, denoised)
        if second is None or sched.is_zero(i + 1):
            x = x + (sigma_next - sigma_hat) * d
        else:
            x = second(denoise, sched, x, d, sigma_hat, sigma_next)
        if callback is not None:
            callback(i, x, denoised)
    return x


def churn_sampler(name: str, second: SecondStep | None, doc: str) -> Callable[..., torch.Tensor]:
    """A registry-ready sampler running `churn_loop` with `second` (its options are the churn's)."""

    @torch.no_grad()
    def sampler(
        denoise: Denoise,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        noise_fn: NoiseFn | None = None,
        callback: Callback | None = None,
        s_churn: float = 0.0,
        s_tmin: float = 0.0,
        s_tmax: float = float("inf"),
        s_noise: float = 1.0,
    ) -> torch.Tensor:
        return churn_loop(denoise, x, sigmas, noise_fn, callback, (s_churn, s_tmin, s_tmax, s_noise), second)

    sampler.__name__ = sampler.__qualname__ = name
    sampler.__doc__ = doc
    return sampler
