"""DDIM, UniPC and LCM in the same sigma (variance-exploding) coordinates as the k-diffusion family.

* DDIM (Song et al. 2021) divided by sqrt(alpha_bar) is the ancestral Euler step: with
  s = sigma, s' = sigma_next, DDIM's noise std is eta * sqrt(s'^2 (s^2 - s'^2) / s^2) (k-diffusion's
  sigma_up) and its deterministic part lands at sqrt(s'^2 - sigma_up^2) (sigma_down). eta defaults
  to 0, the deterministic DDIM.
* UniPC (Zhao et al. 2023): the multistep predictor UniP plus the corrector UniC on the data
  prediction, lambda = -ln sigma, orders warming up from 1 and lowered on the final steps (as
  diffusers' UniPCMultistepScheduler with predict_x0 and lower_order_final). Variant bh1 (B(h) = h,
  A1111's and ComfyUI's default) or bh2 (B(h) = e^h - 1, diffusers' default).
* LCM (Luo et al. 2023) multistep sampling: jump to the model's clean estimate, then re-noise it to
  the next sigma with fresh noise. The boundary-condition scalings of LCM models are part of the
  distilled network and not applied here (below 1e-5 for every timestep >= 1).
"""

from __future__ import annotations

import math

import torch

from gm.diffusion.sampler_base import Callback, Denoise, NoiseFn, Schedule, default_noise


@torch.no_grad()
def sample_ddim(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
    eta: float = 0.0,
    s_noise: float = 1.0,
) -> torch.Tensor:
    """DDIM(eta): exactly the ancestral Euler step (see the module docstring); eta 0 = deterministic."""
    from gm.diffusion.samplers import sample_euler_ancestral  # the registry module imports this one

    return sample_euler_ancestral(denoise, x, sigmas, noise_fn=noise_fn, callback=callback, eta=eta, s_noise=s_noise)


@torch.no_grad()
def sample_lcm(
    denoise: Denoise,
    x: torch.Tensor,
    sigmas: torch.Tensor,
    *,
    noise_fn: NoiseFn | None = None,
    callback: Callback | None = None,
) -> torch.Tensor:
    """LCM multistep: x <- D(x, sigma) + sigma_next * fresh noise (no noise on the step to 0)."""
    sched = Schedule(sigmas, x)
    noise_fn = noise_fn or default_noise(x)
    for i in range(len(sched)):
        denoised = denoise(x, sched.batched(sched.dev[i]))
        x = denoised
        if not sched.is_zero(i + 1):
            x = x + noise_fn(i) * sched.dev[i + 1]
        if callback is not None:
            callback(i, x, denoised)
    return x


def _unipc_coefficients(rks: list[float], h: float, variant: str) -> tuple[torch.Tensor, torch.Tensor, float, float]:
    """(R, b, h*phi_1, B(h)) of UniPC's linear system for the ratios `rks` (the last one is 1).

    With hh = -h: h phi_1 = e^{hh} - 1, h phi_{k+1} = h phi_k / hh - 1/(k+1)!, b_k = k! h phi_{k+1} / B(h),
    R[k] = rks^k. Float64 on the CPU (no device sync; more exact than the float32 peers)."""
    hh = -h
    h_phi_1 = math.expm1(hh)
    b_h = hh if variant == "bh1" else math.expm1(hh)
    r = torch.tensor(rks, dtype=torch.float64)
    rows, b = [], []
    h_phi_k, factorial = h_phi_1 / hh - 1.0, 1
    for k in range(1, len(rks) + 1):
        rows.append(r ** (k - 1))
        b.append(h_phi_k * factorial / b_h)
        factorial *= k + 1
        h_phi_k = h_phi_k / hh - 1.0 / factorial
    return torch.stack(rows), torch.tensor(b, dtype=torch.float64), h_phi_1, b_h


def _unipc_update(
    x: torch.Tensor,
    lams: list[float],
    ds: list[torch.Tensor],
    lam_t: float,
    order: int,
    variant: str,
    model_t: torch.Tensor | None = None,
) -> torch.Tensor:
    """One UniP step (model_t None) or UniC correction from the point lams[-1] (D = ds[-1]) to lam_t.

    D1_k = (D_{-k-1} - D_0) / r_k with r_k = (lam_{-k-1} - lam_0) / h for the `order - 1` earlier points;
    x_t = (sigma_t / sigma_0) x - h phi_1 D_0 - B(h) * (sum rho_k D1_k [+ rho_last (model_t - D_0)])."""
    lam_0, m0 = lams[-1], ds[-1]
    h = lam_t - lam_0
    rks = [(lams[-(k + 1)] - lam_0) / h for k in range(1, order)]
    d1s = [(ds[-(k + 1)] - m0) / rk for k, rk in zip(range(1, order), rks, strict=True)]
    R, b, h_phi_1, b_h = _unipc_coefficients(rks + [1.0], h, variant)
    x_t = math.exp(lam_0 - lam_t) * x - h_phi_1 * m0  # sigma_t / sigma_0 = e^{-(lam_t - lam_0)}
    if model_t is None:  # predictor
        if not d1s:
            return x_t
        rhos = [0.5] if order == 2 else torch.linalg.solve(R[:-1, :-1], b[:-1]).tolist()
        return x_t - b_h * sum(rho * d for rho, d in zip(rhos, d1s, strict=True))
    rhos = [0.5] if order == 1 else torch.linalg.solve(R, b).tolist()
    res = sum((rho * d for rho, d in zip(rhos[:-1], d1s, strict=True)), torch.zeros_like(m0))
    return x_t - b_h * (res + rhos[-1] * (model_t - m0))


def _uni_pc(denoise: Denoise, x: torch.Tensor, sigmas: torch.Tensor, callback: Callback | None,
            order: int, variant: str) -> torch.Tensor:
    sched = Schedule(sigmas, x)
    n = len(sched)
    lams: list[float] = []
    ds: list[torch.Tensor] = []
    x_last, last_order = x, 0
    for i in range(n):
        lam = -math.log(float(sched.cpu[i]))
        denoised = denoise(x, sched.batched(sched.dev[i]))
        if sched.is_zero(i + 1):  # the step to sigma 0 is first order: the clean estimate itself
            x = denoised
        else:
            if last_order:  # UniC: correct the point just reached with the model output there
                x = _unipc_update(x_last, lams, ds, lam, last_order, variant, model_t=denoised)
            lams, ds = (lams + [lam])[-order:], (ds + [denoised])[-order:]
            last_order = min(order, n - i, i + 1)
            x_last = x
            x = _unipc_update(x, lams, ds, -math.log(float(sched.cpu[i + 1])), last_order, variant)
        if callback is not None:
            callback(i, x, denoised)
    return x


def _uni_pc_sampler(variant: str, doc: str):
    @torch.no_grad()
    def sampler(
        denoise: Denoise,
        x: torch.Tensor,
        sigmas: torch.Tensor,
        *,
        noise_fn: NoiseFn | None = None,
        callback: Callback | None = None,
        order: int = 3,
    ) -> torch.Tensor:
        return _uni_pc(denoise, x, sigmas, callback, int(order), variant)

    sampler.__doc__ = doc
    sampler.__name__ = sampler.__qualname__ = "sample_uni_pc" + ("" if variant == "bh1" else f"_{variant}")
    return sampler


sample_uni_pc = _uni_pc_sampler("bh1", "UniPC, variant bh1 (B(h) = h, A1111's default), `order` 3; deterministic.")
sample_uni_pc_bh2 = _uni_pc_sampler("bh2", "UniPC, variant bh2 (B(h) = e^h - 1, diffusers' default); deterministic.")
