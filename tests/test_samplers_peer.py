"""Samplers and schedulers against the peers: k-diffusion (test extra) for every sampler it has,
diffusers' DDIM / UniPC / LCM schedulers for the rest, run on the same denoiser, sigmas and noise.

The denoiser is analytic and nonlinear: the exact posterior mean of a two-point Gaussian mixture
(data +-1 with std 0.3 per element). k-diffusion's noise is made deterministic: its noise_sampler
(and, for the churn samplers, the global generator) yields the same seeded draws as gm's noise_fn;
for DPM++ SDE it is a Brownian path built from gm's two draws per step (see test_dpmpp_sde).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import math
import sys
import types

import numpy as np
import pytest
import torch

from gm.diffusion.sampler_base import make_noise_fn
from gm.diffusion.samplers import SAMPLERS
from gm.diffusion.schedulers import SCHEDULERS, model_sigmas, scheduler_sigmas

SHAPE = (2, 3, 4, 4)
MEANS, DATA_STD = (-1.0, 1.0), 0.3


def mixture_denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """E[x0 | x] for x0 ~ 0.5 N(-1, 0.3^2) + 0.5 N(1, 0.3^2), x = x0 + sigma n (per element)."""
    s = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype)
    var = DATA_STD**2 + s**2
    logits = torch.stack([-((x - m) ** 2) / (2 * var) for m in MEANS])
    w = torch.softmax(logits, dim=0)
    post = torch.stack([(DATA_STD**2 * x + s**2 * m) / var for m in MEANS])
    return (w * post).sum(0)


def k_sampling():
    """k_diffusion.sampling, importing only what sampling needs when the package's __init__ fails
    (it imports CLIP and wandb for its training tools; those may be broken in a slim env)."""
    if importlib.util.find_spec("k_diffusion") is None:
        pytest.skip("k-diffusion is not installed (test extra)")
    try:
        return importlib.import_module("k_diffusion.sampling")
    except ImportError:
        spec = importlib.util.find_spec("k_diffusion")
        pkg = types.ModuleType("k_diffusion")
        pkg.__path__ = list(spec.submodule_search_locations)
        sys.modules["k_diffusion"] = pkg
        try:
            return importlib.import_module("k_diffusion.sampling")
        except ImportError as exc:
            pytest.skip(f"k_diffusion.sampling does not import: {exc}")


@pytest.fixture(scope="module")
def ks():
    return k_sampling()


def _start(sigmas: torch.Tensor) -> torch.Tensor:
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(1)) * sigmas[0]


def _noise_sampler(seed: int):
    gen = torch.Generator().manual_seed(seed)
    return lambda sigma, sigma_next: torch.randn(SHAPE, generator=gen)


# gm name -> (k-diffusion function, options, noise: "sampler" | "global" | None)
K_CASES = {
    "euler": ("sample_euler", {}, None),
    "euler_churn": ("sample_euler", {"s_churn": 1.0}, "global"),
    "heun": ("sample_heun", {}, None),
    "heun_churn": ("sample_heun", {"s_churn": 1.0, "s_noise": 1.003}, "global"),
    "dpm_2": ("sample_dpm_2", {}, None),
    "dpm_2_churn": ("sample_dpm_2", {"s_churn": 1.0}, "global"),
    "lms": ("sample_lms", {}, None),
    "euler_a": ("sample_euler_ancestral", {}, "sampler"),
    "dpm_2_ancestral": ("sample_dpm_2_ancestral", {"eta": 0.8}, "sampler"),
    "dpmpp_2s_a": ("sample_dpmpp_2s_ancestral", {}, "sampler"),
    "dpmpp_2m": ("sample_dpmpp_2m", {}, None),
    "dpmpp_2m_sde": ("sample_dpmpp_2m_sde", {}, "sampler"),
    "dpmpp_2m_sde_eta": ("sample_dpmpp_2m_sde", {"eta": 0.5, "s_noise": 0.9}, "sampler"),
    "dpmpp_2m_sde_heun": ("sample_dpmpp_2m_sde", {"solver_type": "heun"}, "sampler"),
    "dpmpp_3m_sde": ("sample_dpmpp_3m_sde", {}, "sampler"),
    "dpmpp_3m_sde_eta0": ("sample_dpmpp_3m_sde", {"eta": 0.0}, "sampler"),
}


@pytest.mark.parametrize("case", K_CASES)
@pytest.mark.parametrize("steps", [2, 3, 10])  # k-diffusion's 2M/3M SDE crash on 1 step
def test_sampler_matches_k_diffusion(ks, case: str, steps: int) -> None:
    k_name, options, noise = K_CASES[case]
    name = case.removesuffix("_churn").removesuffix("_eta0").removesuffix("_eta")
    sigmas = ks.get_sigmas_karras(steps, 0.0292, 14.6146)
    x = _start(sigmas)
    gm_options = {k: v for k, v in options.items() if k != "solver_type"}
    ours = SAMPLERS[name](mixture_denoise, x.clone(), sigmas,
                          noise_fn=make_noise_fn(torch.Generator().manual_seed(5), SHAPE, "cpu", torch.float32),
                          **gm_options)
    extra = {"noise_sampler": _noise_sampler(5)} if noise == "sampler" else {}
    if noise == "global":
        torch.manual_seed(5)  # k-diffusion's churn samplers draw torch.randn_like every step
    theirs = getattr(ks, k_name)(mixture_denoise, x.clone(), sigmas, disable=True, **options, **extra)
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-5)


class BrownianPath:
    """A deterministic Brownian motion W(sigma) on the points DPM++ SDE queries, built from the
    draws n1, n2 of each step in gm's order: W(mid) - W(sigma) = sqrt(sigma - mid) n1 and
    W(next) - W(mid) = sqrt(mid - next) n2. Any query answers (W(b) - W(a)) / sqrt(|b - a|)."""

    def __init__(self, sigmas: torch.Tensor, r: float, seed: int) -> None:
        gen = torch.Generator().manual_seed(seed)
        self.points, self.values = [float(sigmas[0])], [torch.zeros(SHAPE)]
        for i in range(len(sigmas) - 2):  # the step to 0 draws nothing
            t, t_next = -sigmas[i].log(), -sigmas[i + 1].log()
            mid = float((-(t + (t_next - t) * r)).exp())
            for point in (mid, float(sigmas[i + 1])):
                step = torch.randn(SHAPE, generator=gen) * math.sqrt(self.points[-1] - point)
                self.points.append(point)
                self.values.append(self.values[-1] + step)

    def w(self, sigma: float) -> torch.Tensor:
        k = int(np.argmin([abs(p - sigma) for p in self.points]))
        assert abs(self.points[k] - sigma) <= 1e-5 * sigma, (sigma, self.points[k])
        return self.values[k]

    def __call__(self, a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        a, b = float(a), float(b)
        return (self.w(b) - self.w(a)) / math.sqrt(abs(b - a))


@pytest.mark.parametrize("eta, r", [(1.0, 0.5), (0.7, 0.4)])
def test_dpmpp_sde_matches_k_diffusion_on_one_brownian_path(ks, eta: float, r: float) -> None:
    sigmas = ks.get_sigmas_karras(8, 0.0292, 14.6146)
    x = _start(sigmas)
    ours = SAMPLERS["dpmpp_sde"](mixture_denoise, x.clone(), sigmas, eta=eta, r=r,
                                 noise_fn=make_noise_fn(torch.Generator().manual_seed(3), SHAPE, "cpu", torch.float32))
    theirs = ks.sample_dpmpp_sde(mixture_denoise, x.clone(), sigmas, disable=True, eta=eta, r=r,
                                 noise_sampler=BrownianPath(sigmas, r, seed=3))
    torch.testing.assert_close(ours, theirs, rtol=1e-5, atol=2e-5)


@pytest.mark.parametrize("steps", [1, 4, 25])
def test_karras_and_exponential_match_k_diffusion(ks, steps: int) -> None:
    model = model_sigmas(discrete=True)
    torch.testing.assert_close(scheduler_sigmas("karras", steps, model),
                               ks.get_sigmas_karras(steps, model.sigma_min, model.sigma_max), rtol=1e-6, atol=0)
    torch.testing.assert_close(scheduler_sigmas("exponential", steps, model),
                               ks.get_sigmas_exponential(steps, model.sigma_min, model.sigma_max), rtol=1e-6, atol=0)
    svd = model_sigmas(discrete=False, discretization="edm", sigma_min=0.002, sigma_max=700.0)
    torch.testing.assert_close(scheduler_sigmas("karras", steps, svd), ks.get_sigmas_karras(steps, 0.002, 700.0))


# ---------------------------------------------------------------- diffusers (bench extra)

def _diffusers(name: str, **config):
    schedulers = pytest.importorskip("diffusers.schedulers")
    base = dict(num_train_timesteps=1000, beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear")
    return getattr(schedulers, name)(**base, **config)


def _run_diffusers(scheduler, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Sample with a diffusers scheduler on the mixture denoiser (as an eps model); returns
    (gm sigmas of its timesteps, the unit start noise, the result in gm's coordinates x / alpha).
    The schedule ends at 0 unless the scheduler's own sigmas end elsewhere (UniPC's sigma_min)."""
    scheduler.set_timesteps(steps)
    abar = scheduler.alphas_cumprod.double()
    sig = ((1 - abar) / abar).sqrt()
    own = getattr(scheduler, "sigmas", None)
    last = float(own[-1]) if isinstance(own, torch.Tensor) and len(own) == steps + 1 else 0.0
    sigmas = torch.cat([sig[scheduler.timesteps.long()], sig.new_full((1,), last)]).float()
    noise = torch.randn(SHAPE, generator=torch.Generator().manual_seed(1))
    x, gen = noise.clone(), torch.Generator().manual_seed(seed)
    for t in scheduler.timesteps:
        s = sig[int(t)].float()
        x_ve = x * (1 + s**2).sqrt()
        eps = (x_ve - mixture_denoise(x_ve, s[None])) / s
        takes_generator = "generator" in inspect.signature(scheduler.step).parameters
        x = scheduler.step(eps, t, x, **({"generator": gen} if takes_generator else {})).prev_sample
    return sigmas, noise, x * (1 + sigmas[-1].double() ** 2).sqrt().float()


@pytest.mark.parametrize("eta", [0.0, 1.0])
def test_ddim_matches_diffusers(eta: float) -> None:
    scheduler = _diffusers("DDIMScheduler", clip_sample=False, set_alpha_to_one=True, steps_offset=1,
                           timestep_spacing="leading")
    original = scheduler.step
    scheduler.step = lambda *a, generator=None: original(*a, eta=eta, generator=generator)
    sigmas, noise, theirs = _run_diffusers(scheduler, 12, seed=4)
    torch.testing.assert_close(sigmas[:-1], scheduler_sigmas("ddim_uniform", 12, model_sigmas(True))[:-1], rtol=1e-5, atol=0)
    ours = SAMPLERS["ddim"](mixture_denoise, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, eta=eta,
                            noise_fn=make_noise_fn(torch.Generator().manual_seed(4), SHAPE, "cpu", torch.float32))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("variant, order", [("bh1", 3), ("bh2", 2), ("bh2", 3), ("bh1", 1)])
@pytest.mark.parametrize("steps", [3, 12])
def test_uni_pc_matches_diffusers(variant: str, order: int, steps: int) -> None:
    # diffusers' bh1 gives NaN on a final step to sigma 0 (B(h) = -inf times 0): end at sigma_min there.
    scheduler = _diffusers("UniPCMultistepScheduler", solver_order=order, solver_type=variant,
                           predict_x0=True, lower_order_final=True,
                           final_sigmas_type="sigma_min" if variant == "bh1" else "zero")
    sigmas, noise, theirs = _run_diffusers(scheduler, steps, seed=0)
    torch.testing.assert_close(sigmas, scheduler.sigmas.float(), rtol=1e-5, atol=0)
    name = "uni_pc" if variant == "bh1" else "uni_pc_bh2"
    ours = SAMPLERS[name](mixture_denoise, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas, order=order)
    assert torch.isfinite(theirs).all()
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [1, 4, 8])
def test_lcm_matches_diffusers(steps: int, monkeypatch: pytest.MonkeyPatch) -> None:
    scheduler = _diffusers("LCMScheduler", set_alpha_to_one=True, original_inference_steps=50)
    # gm leaves LCM's boundary scalings (c_skip ~ 0, c_out ~ 1 for t >= 1) to the model.
    monkeypatch.setattr(scheduler, "get_scalings_for_boundary_condition_discrete", lambda t: (0.0, 1.0))
    sigmas, noise, theirs = _run_diffusers(scheduler, steps, seed=9)
    ours = SAMPLERS["lcm"](mixture_denoise, noise * (1 + sigmas[0] ** 2).sqrt(), sigmas,
                           noise_fn=make_noise_fn(torch.Generator().manual_seed(9), SHAPE, "cpu", torch.float32))
    torch.testing.assert_close(ours, theirs, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("steps", [4, 20, 30, 50])
def test_ddim_uniform_is_diffusers_leading_spacing(steps: int) -> None:
    scheduler = _diffusers("EulerDiscreteScheduler", timestep_spacing="leading", steps_offset=1)
    scheduler.set_timesteps(steps)
    torch.testing.assert_close(scheduler_sigmas("ddim_uniform", steps, model_sigmas(True)), scheduler.sigmas.float(),
                               rtol=2e-5, atol=0)


def test_beta_schedule_matches_scipy_quantiles() -> None:
    stats = pytest.importorskip("scipy.stats")
    model = model_sigmas(True)
    for steps in (5, 20, 40):
        ts = np.rint(stats.beta.ppf(1 - np.linspace(0, 1, steps, endpoint=False), 0.6, 0.6) * 999).astype(int)
        kept = [t for k, t in enumerate(ts) if k == 0 or t != ts[k - 1]]
        torch.testing.assert_close(scheduler_sigmas("beta", steps, model)[:-1], model.table[kept])


def test_every_scheduler_is_named() -> None:
    from gm.diffusion.schedulers import A1111_SCHEDULE_NAMES

    assert set(A1111_SCHEDULE_NAMES) == set(SCHEDULERS)
