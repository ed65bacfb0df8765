"""DPM-Solver family: DPM2 (+ ancestral) and the stochastic DPM-Solver++ samplers (SDE, 2M SDE,
3M SDE), with k-diffusion's update rules (Lu et al. 2022; Karras et al. 2022 for DPM2).

Noise: every fresh draw comes from `noise_fn` (the seeded CPU generator), so a seed gives the same
image on every device. k-diffusion's SDE samplers default to a torchsde `BrownianTree` instead,
which answers "the Brownian increment between two sigmas" consistently for any query: its noise
depends only on the seed and the two sigmas, not on the step list. Here the increments of one
step are drawn in order from the generator; over disjoint steps that is the same law (independent
Gaussian increments), and inside a DPM++ SDE step the two overlapping queries ([sigma, sigma_mid]
and [sigma, sigma_next]) are built from two draws exactly as one Brownian path would answer them.
What differs is only which numbers a seed gives (and that changing the step count redraws them).
"""

from __future__ import annotations

import torch

from gm.diffusion.sampler_base import (
    Callback,
    Denoise,
    NoiseFn,
    Schedule,
    ancestral_step,
    churn_sampler,
    default_noise,
    dpm2_step,
    to_d,
)

sample_dpm_2 = churn_sampler("sample_dpm_2", dpm2_step, "DPM2: Karras et al. Algorithm 2 churn, then a midpoint "
                             "step in log sigma (Euler on the step to sigma 0).")


@torch.no_grad()
def sample_dpm_2_ancestral(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DPM2 a: a DPM2 step down to sigma_down, then sigma_up fresh noise (none on the final step)."""
    sched = Schedule(sigmas, x)
    noise_fn = noise_fn or default_noise(x)
    for i in range(len(sched)):
        sigma, sigma_next = sched.dev[i], sched.dev[i + 1]
        denoised = denoise(x, sched.batched(sigma))
        sigma_down, sigma_up = ancestral_step(sigma, sigma_next, eta)
        d = to_d(x, sigma, denoised)
        if float(ancestral_step(sched.cpu[i], sched.cpu[i + 1], eta)[0]) == 0.0:
            x = x + d * (sigma_down - sigma)
        else:
            x = dpm2_step(denoise, sched, x, d, sigma, sigma_down)
            x = x + noise_fn(i) * s_noise * sigma_up
        if callback is not None:
            callback(i, x, denoised)
    return x


@torch.no_grad()
def sample_dpmpp_sde(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    eta: float = 1.0,
    s_noise: float = 1.0,
    r: float = 0.5,
) -> torch.Tensor:
    """DPM-Solver++ SDE (2 evaluations a step): with t = -ln sigma, an ancestral DPM-Solver++(1)
    sub-step to s = t + r h, then the full step from D_d = (1 - 1/2r) D + (1/2r) D(x_2, sigma_s),
    each followed by its share of noise. Brownian increments over [sigma, sigma_s] and
    [sigma_s, sigma_next] are two draws n1, n2; the sub-step sees n1, the full step
    (sqrt(a) n1 + sqrt(b) n2) / sqrt(a + b) with a, b the two interval lengths in sigma."""
    sched = Schedule(sigmas, x)
    noise_fn = noise_fn or default_noise(x)
    fac = 1 / (2 * r)
    for i in range(len(sched)):
        sigma, sigma_next = sched.dev[i], sched.dev[i + 1]
        denoised = denoise(x, sched.batched(sigma))
        if sched.is_zero(i + 1):
            x = x + to_d(x, sigma, denoised) * (sigma_next - sigma)
        else:
            t, t_next = -sigma.log(), -sigma_next.log()
            s = t + (t_next - t) * r
            sigma_t, sigma_s = (-t).exp(), (-s).exp()
            n1 = noise_fn(i) if eta else None
            sd, su = ancestral_step(sigma_t, sigma_s, eta)
            s_ = -sd.log()
            x_2 = (sd / sigma_t) * x - (t - s_).expm1() * denoised
            if n1 is not None:
                x_2 = x_2 + n1 * s_noise * su
            denoised_2 = denoise(x_2, sched.batched(sigma_s))
            sd, su = ancestral_step(sigma_t, sigma_next, eta)
            t_next_ = -sd.log()
            denoised_d = (1 - fac) * denoised + fac * denoised_2
            x = (sd / sigma_t) * x - (t - t_next_).expm1() * denoised_d
            if n1 is not None:
                a, b = sigma_t - sigma_s, sigma_s - sigma_next
                z = (a.sqrt() * n1 + b.sqrt() * noise_fn(i)) / (a + b).sqrt()
                x = x + z * s_noise * su
        if callback is not None:
            callback(i, x, denoised)
    return x


def _sde_loop(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    noise_fn: NoiseFn | None,
    callback: Callback | None,
    eta: float,
    s_noise: float,
    correction: str,
) -> torch.Tensor:
    """DPM-Solver++(2M/3M) SDE. With h = ln(sigma / sigma_next) and hη = h (1 + eta):
    x <- (sigma'/sigma) e^{-eta h} x + (1 - e^{-hη}) D + multistep corrections from the previous D's,
    + sigma' sqrt(1 - e^{-2 eta h}) s_noise * noise; the step to sigma 0 returns D."""
    sched = Schedule(sigmas, x)
    noise_fn = noise_fn or default_noise(x)
    history: list[tuple[torch.Tensor, torch.Tensor]] = []  # (denoised, h), newest first
    for i in range(len(sched)):
        sigma, sigma_next = sched.dev[i], sched.dev[i + 1]
        denoised = denoise(x, sched.batched(sigma))
        if sched.is_zero(i + 1):
            x = denoised
            h = None
        else:
            h = sigma.log() - sigma_next.log()
            eta_h = eta * h
            if correction == "3m":
                h_eta = h + eta_h
                x = torch.exp(-h_eta) * x + (-h_eta).expm1().neg() * denoised
                x = x + _three_m(denoised, history, h, h_eta)
            else:
                mult = (-h - eta_h).expm1().neg()
                x = sigma_next / sigma * (-eta_h).exp() * x + mult * denoised
                if history and history[0][1] is not None:
                    old, h_last = history[0]
                    diff = (denoised - old) * (h / h_last)  # (D - D_prev) / r
                    if correction == "heun":
                        x = x + (mult / (-h - eta_h) + 1) * diff
                    else:
                        x = x + 0.5 * mult * diff
            if eta:
                x = x + noise_fn(i) * sigma_next * (-2 * eta_h).expm1().neg().sqrt() * s_noise
        history = [(denoised, h)] + history[:1]
        if callback is not None:
            callback(i, x, denoised)
    return x


def _three_m(
    denoised: torch.Tensor, history: list[tuple[torch.Tensor, torch.Tensor]], h: torch.Tensor, h_eta: torch.Tensor
) -> torch.Tensor | float:
    """The 3M correction: phi_2 d1 - phi_3 d2 from the last two D's (phi_2 d1 with only one)."""
    if not history:
        return 0.0
    phi_2 = h_eta.neg().expm1() / h_eta + 1
    (d_1, h_1) = history[0]
    r0 = h_1 / h
    d1_0 = (denoised - d_1) / r0
    if len(history) < 2:
        return phi_2 * d1_0
    (d_2, h_2) = history[1]
    r1 = h_2 / h
    d1_1 = (d_1 - d_2) / r1
    d1 = d1_0 + (d1_0 - d1_1) * r0 / (r0 + r1)
    d2 = (d1_0 - d1_1) / (r0 + r1)
    phi_3 = phi_2 / h_eta - 0.5
    return phi_2 * d1 - phi_3 * d2


def _sde_sampler(correction: str, doc: str):
    @torch.no_grad()
    def sampler(
        denoise: Denoise,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        noise_fn: NoiseFn | None = None,
        callback: Callback | None = None,
        eta: float = 1.0,
        s_noise: float = 1.0,
    ) -> torch.Tensor:
        return _sde_loop(denoise, x, sigmas, noise_fn, callback, eta, s_noise, correction)

    sampler.__doc__ = doc
    sampler.__name__ = sampler.__qualname__ = f"sample_dpmpp_{correction}_sde"
    return sampler


sample_dpmpp_2m_sde = _sde_sampler("midpoint", "DPM-Solver++(2M) SDE, midpoint correction 0.5 (1 - e^{-hη}) (D - D_prev) / r.")
sample_dpmpp_2m_sde_heun = _sde_sampler("heun", "DPM-Solver++(2M) SDE, Heun correction ((1 - e^{-hη}) / (-hη) + 1) (D - D_prev) / r.")
sample_dpmpp_3m_sde = _sde_sampler("3m", "DPM-Solver++(3M) SDE: third order from the last two D's (second on step 2).")
