"""Samplers over a descending sigma schedule, as plain functions, and their one registry.

This module holds the six the reference demos use (ported from sgm's
`modules/diffusionmodules/sampling.py`, itself from k-diffusion): EDM Euler and Heun, Euler
ancestral, DPM++(2S) ancestral, DPM++(2M) and linear multistep. `samplers_dpm` adds DPM2 (a) and
the stochastic DPM-Solver++ samplers, `samplers_multistep` DDIM, UniPC and LCM. Every sampler is

    f(denoise, x, sigmas, *, noise_fn=None, callback=None, <options>) -> x

where `denoise(x, sigma) -> denoised` is already guided (see gm.diffusion.guiders.guided),
`x` starts at sigmas[0] (use `sample`, which scales the unit noise by sqrt(1 + sigma_0^2)),
and `noise_fn(step_index)` supplies every fresh noise draw from the seeded CPU generator, so a
seed gives the same numbers on every device (see gm.diffusion.sampler_base).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable

import numpy as np
import torch

from gm.diffusion import samplers_dpm as _dpm
from gm.diffusion import samplers_multistep as _ms
from gm.diffusion.sampler_base import (
    Callback,
    Denoise,
    NoiseFn,
    Schedule,
    ancestral_step,
    churn_sampler,
    default_noise,
    heun_step,
    make_noise_fn,  # noqa: F401 (re-exported: callers import it from here)
    to_d,
)
from gm.diffusion.schedules import start_scale
from gm.errors import UsageError

sample_euler = churn_sampler("sample_euler", None, "EDM Euler with optional churn: gamma = min(s_churn / N, "
                              "sqrt(2) - 1) where s_tmin <= sigma <= s_tmax.")
sample_heun = churn_sampler("sample_heun", heun_step, "EDM Heun (2nd order): Euler, then average the slopes at "
                            "sigma_hat and sigma_next.")


@torch.no_grad()
def sample_euler_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """Euler step to sigma_down, then add s_noise * sigma_up * fresh noise (if sigma_next > 0)."""
    sched = Schedule(sigmas, x)
    noise_fn = noise_fn or default_noise(x)
    for i in range(len(sched)):
        sigma, sigma_next = sched.dev[i], sched.dev[i + 1]
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        denoised = denoise(x, sched.batched(sigma))
        x = x + (sigma_down - sigma) * to_d(x, sigma, denoised)
        if eta and not sched.is_zero(i + 1):
            x = x + noise_fn(i) * s_noise * sigma_up
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2s_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM-Solver++(2S) (Lu et al. 2022, Alg. 1) to sigma_down with a midpoint in -log(sigma), plus
    ancestral noise. With t = -ln(sigma): x2 = (s_mid/s) x - expm1(-h/2) D, x = (s_down/s) x - expm1(-h) D2."""
    sched = Schedule(sigmas, x)
    noise_fn = noise_fn or default_noise(x)
    for i in range(len(sched)):
        sigma, sigma_next = sched.dev[i], sched.dev[i + 1]
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        denoised = denoise(x, sched.batched(sigma))
        # Branch on a CPU copy of sigma_down (0 when sigma_next is 0, or when eta > 1 takes it all).
        if float(ancestral_step(sched.cpu[i], sched.cpu[i + 1], eta)[0]) == 0.0:
            x = x + (sigma_down - sigma) * to_d(x, sigma, denoised)
        else:
            t, t_next = -sigma.log(), -sigma_down.log()
            h = t_next - t
            s = t + 0.5 * h
            x2 = ((-s).exp() / (-t).exp()) * x - (-0.5 * h).expm1() * denoised
            denoised2 = denoise(x2, sched.batched((-s).exp()))
            x = ((-t_next).exp() / (-t).exp()) * x - (-h).expm1() * denoised2
        if eta and not sched.is_zero(i + 1):
            x = x + noise_fn(i) * s_noise * sigma_up
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_2m(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """DPM-Solver++(2M) (Lu et al. 2022, Alg. 2): second order from the previous D, with
    r = h_prev / h; the first step and the final step to sigma 0 are first order."""
    sched = Schedule(sigmas, x)
    old_denoised: torch.Tensor | None = None
    for i in range(len(sched)):
        sigma, sigma_next = sched.dev[i], sched.dev[i + 1]
        denoised = denoise(x, sched.batched(sigma))
        if sched.is_zero(i + 1):
            x = denoised  # (0/s) x - expm1(-inf) D = D, without the infinities
        else:
            t, t_next = -sigma.log(), -sigma_next.log()
            h = t_next - t
            mult_x, mult_d = (-t_next).exp() / (-t).exp(), (-h).expm1()
            if old_denoised is None:
                x = mult_x * x - mult_d * denoised
            else:
                r = (t + sched.dev[i - 1].log()) / h  # h_prev / h
                denoised_d = (1 + 1 / (2 * r)) * denoised - (1 / (2 * r)) * old_denoised
                x = mult_x * x - mult_d * denoised_d
        old_denoised = denoised
        if callback is not None:
            callback(i, x, denoised)
    return x


# Gauss-Legendre on [-1, 1]: exact for polynomials up to degree 15, far beyond LMS order 4.
_GL_NODES, _GL_WEIGHTS = np.polynomial.legendre.leggauss(8)


def lms_coefficient(order: int, sigmas: np.ndarray, i: int, j: int) -> float:
    """Integral over [sigma_i, sigma_{i+1}] of the Lagrange basis polynomial of node sigma_{i-j}
    on the nodes sigma_i, ..., sigma_{i-order+1} (what the reference gets from scipy.quad)."""
    if order - 1 > i:
        raise ValueError(f"order {order} too high for step {i}")
    nodes = [float(sigmas[i - k]) for k in range(order)]
    a, b = float(sigmas[i]), float(sigmas[i + 1])
    tau = 0.5 * (b - a) * _GL_NODES + 0.5 * (b + a)
    basis = np.ones_like(tau)
    for k in range(order):
        if k != j:
            basis *= (tau - nodes[k]) / (nodes[j] - nodes[k])
    return float(0.5 * (b - a) * np.dot(_GL_WEIGHTS, basis))


@torch.no_grad()
def sample_lms(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    order: int = 4,
) -> torch.Tensor:
    """Linear multistep: integrate the Lagrange interpolant of the last `order` slopes."""
    sched = Schedule(sigmas, x)
    sigmas_np = sched.cpu.numpy()
    ds: list[torch.Tensor] = []
    for i in range(len(sched)):
        sigma = sched.dev[i]
        denoised = denoise(x, sched.batched(sigma))
        ds.append(to_d(x, sigma, denoised))
        if len(ds) > order:
            ds.pop(0)
        cur_order = min(i + 1, order)
        coeffs = [lms_coefficient(cur_order, sigmas_np, i, j) for j in range(cur_order)]
        x = x + sum(coeff * d for coeff, d in zip(coeffs, reversed(ds), strict=True))
        if callback is not None:
            callback(i, x, denoised)
    return x


# name -> (function, A1111's display name). Names follow k-diffusion / ComfyUI.
_TABLE: dict[str, tuple[Callable[..., torch.Tensor], str]] = {
    "euler": (sample_euler, "Euler"),
    "euler_a": (sample_euler_ancestral, "Euler a"),
    "heun": (sample_heun, "Heun"),
    "lms": (sample_lms, "LMS"),
    "dpm_2": (_dpm.sample_dpm_2, "DPM2"),
    "dpm_2_ancestral": (_dpm.sample_dpm_2_ancestral, "DPM2 a"),
    "dpmpp_2s_a": (sample_dpmpp_2s_ancestral, "DPM++ 2S a"),
    "dpmpp_2m": (sample_dpmpp_2m, "DPM++ 2M"),
    "dpmpp_sde": (_dpm.sample_dpmpp_sde, "DPM++ SDE"),
    "dpmpp_2m_sde": (_dpm.sample_dpmpp_2m_sde, "DPM++ 2M SDE"),
    "dpmpp_2m_sde_heun": (_dpm.sample_dpmpp_2m_sde_heun, "DPM++ 2M SDE Heun"),
    "dpmpp_3m_sde": (_dpm.sample_dpmpp_3m_sde, "DPM++ 3M SDE"),
    "ddim": (_ms.sample_ddim, "DDIM"),
    "uni_pc": (_ms.sample_uni_pc, "UniPC"),
    "uni_pc_bh2": (_ms.sample_uni_pc_bh2, "UniPC BH2"),
    "lcm": (_ms.sample_lcm, "LCM"),
}
SAMPLERS: dict[str, Callable[..., torch.Tensor]] = {name: fn for name, (fn, _) in _TABLE.items()}
A1111_SAMPLER_NAMES: dict[str, str] = {name: label for name, (_, label) in _TABLE.items()}


def a1111_name(sampler: str, scheduler: str = "normal") -> str:
    """A1111's combined label, e.g. ("dpmpp_2m_sde", "karras") -> "DPM++ 2M SDE Karras".

    "normal" (the model's own schedule, A1111's "Automatic") adds no suffix; unknown names pass
    through unchanged."""
    from gm.diffusion.schedulers import A1111_SCHEDULE_NAMES

    label = A1111_SAMPLER_NAMES.get(sampler, sampler)
    suffix = A1111_SCHEDULE_NAMES.get(scheduler, scheduler)
    return f"{label} {suffix}" if suffix else label


def sampler_options(name: str) -> tuple[str, ...]:
    """The options sampler `name` accepts (besides noise_fn and callback)."""
    params = inspect.signature(SAMPLERS[name]).parameters.values()
    return tuple(p.name for p in params if p.kind is p.KEYWORD_ONLY and p.name not in ("noise_fn", "callback"))


def sampler_defaults(name: str) -> dict[str, float]:
    """Sampler `name`'s own option defaults (ddim: eta 0; uni_pc: order 3; lms: order 4; ...), for
    callers that should not override them with another sampler's preset values."""
    params = inspect.signature(SAMPLERS[name]).parameters
    return {k: params[k].default for k in sampler_options(name)}


def sample(
    name: str,
    denoise: Denoise,
    noise: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    **options: float,
) -> torch.Tensor:
    """Run sampler `name` from unit `noise`, first scaled by sqrt(1 + sigma_0^2) (into a new tensor).

    `options` are the sampler's own settings (s_churn, eta, order, ...); an unknown one is an error.
    """
    if name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}", hint=f"use one of {', '.join(SAMPLERS)}")
    valid = sampler_options(name)
    unknown = sorted(set(options) - set(valid))
    if unknown:
        raise UsageError(
            f"sampler {name!r} has no option {', '.join(unknown)}",
            hint=f"its options are {', '.join(valid) or 'none'}",
        )
    x = noise.float() * start_scale(sigmas)  # a CPU 0-dim tensor: no device copy
    return SAMPLERS[name](denoise, x, sigmas, noise_fn=noise_fn, callback=callback, **options)
