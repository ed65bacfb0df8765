"""Samplers on a problem with a known answer (always run; no peer needed).

Data N(mu, s^2) per element: the exact denoiser is D(x, sigma) = (s^2 x + sigma^2 mu) / (s^2 + sigma^2)
and the probability-flow ODE from sigma_0 to sigma is solved by
x(sigma) = mu + (x(sigma_0) - mu) sqrt((s^2 + sigma^2) / (s^2 + sigma_0^2)).
Deterministic samplers must converge to it at their order; stochastic ones must produce N(mu, s^2).
"""

from __future__ import annotations

import math

import pytest
import torch

from gm.diffusion.sampler_base import make_noise_fn
from gm.diffusion.samplers import A1111_SAMPLER_NAMES, SAMPLERS, a1111_name, sample
from gm.diffusion.schedulers import SCHEDULERS, model_sigmas, scheduler_sigmas
from gm.diffusion.schedules import legacy_ddpm_sigmas

MU, S = 0.3, 0.5


def gaussian_denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    s2 = sigma.reshape(-1, *([1] * (x.ndim - 1))).to(x.dtype) ** 2
    return (S**2 * x + s2 * MU) / (S**2 + s2)


def exact(x0: torch.Tensor, sigma_0: float, sigma: float) -> torch.Tensor:
    return MU + (x0 - MU) * math.sqrt((S**2 + sigma**2) / (S**2 + sigma_0**2))


# name -> (options making it deterministic, expected global order)
ORDERS = {
    "euler": ({}, 1),
    "euler_a": ({"eta": 0.0}, 1),
    "ddim": ({}, 1),
    "heun": ({}, 2),
    "dpm_2": ({}, 2),
    "dpm_2_ancestral": ({"eta": 0.0}, 2),
    "dpmpp_2s_a": ({"eta": 0.0}, 2),
    "dpmpp_sde": ({"eta": 0.0}, 2),
    "dpmpp_2m": ({}, 2),
    "dpmpp_2m_sde": ({"eta": 0.0}, 2),
    "dpmpp_2m_sde_heun": ({"eta": 0.0}, 2),
    "dpmpp_3m_sde": ({"eta": 0.0}, 2),  # 3 in the interior; its first-order warm-up step bounds it by 2
    "lms": ({}, 3),  # 4 in the interior; warm-up steps fall where this solution is nearly linear in sigma
    "uni_pc": ({}, 2),  # 3 in the interior; the last step is a first-order UniP with no corrector after it
    "uni_pc_bh2": ({}, 2),
}


def _error(name: str, options: dict, steps: int) -> float:
    sigma_0, sigma_end = 10.0, 0.05  # stop short of 0: the step to 0 is exact only in the limit
    sigmas = torch.linspace(math.log(sigma_0), math.log(sigma_end), steps + 1, dtype=torch.float64).exp().float()
    x0 = torch.linspace(-3, 3, 64, dtype=torch.float64)[None] * math.sqrt(S**2 + sigma_0**2) + MU
    out = SAMPLERS[name](gaussian_denoise, x0.clone(), sigmas, **options)
    return float((out - exact(x0, float(sigmas[0]), float(sigmas[-1]))).abs().max())


@pytest.mark.parametrize("name", ORDERS)
def test_deterministic_samplers_converge_at_their_order(name: str) -> None:
    options, order = ORDERS[name]
    errors = [_error(name, options, n) for n in (32, 64, 128)]
    observed = math.log2(errors[1] / errors[2])
    assert errors[2] < errors[1] < errors[0], errors
    assert observed > order - 0.3, f"{name}: observed order {observed:.2f} (errors {errors})"


@pytest.mark.parametrize("name", ["euler_a", "dpm_2_ancestral", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde",
                                  "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "ddim", "lcm"])
def test_stochastic_samplers_sample_the_data_distribution(name: str) -> None:
    """From N(0, 1 + sigma_0^2)-scaled noise the samples must follow N(mu, s^2) (20000 draws).
    The first-order ancestral step underestimates the spread (6 % low at 40 steps): 400 steps there."""
    options = {"eta": 1.0} if name == "ddim" else {}
    steps = 400 if name in ("euler_a", "ddim") else 40
    denoise = gaussian_denoise
    if name == "lcm":  # LCM needs a consistency function: the exact ODE solution to sigma 0
        def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
            s2 = sigma.reshape(-1, 1) ** 2
            return MU + (x - MU) * (S**2 / (S**2 + s2)) ** 0.5
    sigmas = scheduler_sigmas("karras", steps, model_sigmas(True))
    noise = torch.randn(1, 20000, generator=torch.Generator().manual_seed(0))
    noise_fn = make_noise_fn(torch.Generator().manual_seed(1), (1, 20000), "cpu", torch.float32)
    out = sample(name, denoise, noise, sigmas, noise_fn=noise_fn, **options)
    assert abs(float(out.mean()) - MU) < 0.02
    assert abs(float(out.std()) / S - 1) < 0.03, float(out.std())


@pytest.mark.parametrize("name", ["euler_a", "dpm_2_ancestral", "dpmpp_2s_a", "dpmpp_sde", "dpmpp_2m_sde",
                                  "dpmpp_2m_sde_heun", "dpmpp_3m_sde", "lcm"])
def test_stochastic_samplers_follow_the_seed_only(name: str) -> None:
    """All fresh noise comes from noise_fn (the seeded CPU generator): the global generator does not
    matter, another seed changes the result."""
    sigmas = scheduler_sigmas("karras", 6, model_sigmas(True))
    runs = []
    for seed in (7, 7, 8):
        torch.manual_seed(123 + len(runs))
        fn = make_noise_fn(torch.Generator().manual_seed(seed), (2, 8), "cpu", torch.float32)
        runs.append(sample(name, gaussian_denoise, torch.ones(2, 8), sigmas, noise_fn=fn))
    assert torch.equal(runs[0], runs[1]) and not torch.equal(runs[0], runs[2])


@pytest.mark.parametrize("scheduler", SCHEDULERS)
def test_every_sampler_runs_on_every_scheduler(scheduler: str) -> None:
    for discrete in (True, False):
        model = model_sigmas(discrete, "legacy_ddpm" if discrete else "edm", 0.002, 700.0)
        sigmas = scheduler_sigmas(scheduler, 10, model)
        assert sigmas[-1] == 0 and bool((sigmas[:-1] > 0).all()) and bool((sigmas.diff() < 0).all())
        assert model.sigma_min * (1 - 1e-6) <= float(sigmas[-2]) and float(sigmas[0]) <= model.sigma_max * (1 + 1e-6)
        for name in SAMPLERS:
            fn = make_noise_fn(torch.Generator().manual_seed(0), (1, 4), "cpu", torch.float32)
            out = sample(name, gaussian_denoise, torch.randn(1, 4, generator=torch.Generator().manual_seed(0)),
                         sigmas, noise_fn=fn)
            assert torch.isfinite(out).all() and float((out - MU).abs().max()) < 4, (name, scheduler)


def test_normal_is_the_preset_discretization() -> None:
    assert torch.equal(scheduler_sigmas("normal", 30, model_sigmas(True)), legacy_ddpm_sigmas(30))
    svd = model_sigmas(False, "edm", 0.002, 700.0)
    assert torch.equal(scheduler_sigmas("normal", 25, svd), scheduler_sigmas("karras", 25, svd))


def test_table_schedule_formulas() -> None:
    model = model_sigmas(True)
    table = model.table
    assert (model.sigma_min, model.sigma_max) == (float(table[0]), float(table[-1]))
    # simple: every 1000/n-th level from the top; sgm_uniform: linspace(999, 0, n + 1)[:-1] in log sigma
    assert torch.equal(scheduler_sigmas("simple", 4, model)[:-1], table[[999, 749, 499, 249]])
    sgm = scheduler_sigmas("sgm_uniform", 3, model)[:-1]
    t = 999 - 333.0  # the second point, between table entries 666 and 667
    assert torch.equal(sgm[0], table[999]) and torch.equal(sgm[2], table[333])
    assert math.isclose(float(sgm[1]), float(table[666]), rel_tol=1e-6) and t == 666.0
    assert torch.equal(scheduler_sigmas("ddim_uniform", 4, model)[:-1], table[[751, 501, 251, 1]])
    with pytest.raises(Exception, match="unknown scheduler"):
        scheduler_sigmas("linear", 4, model)


def test_sampler_defaults() -> None:
    from gm.diffusion.samplers import sampler_defaults

    assert sampler_defaults("ddim") == {"eta": 0.0, "s_noise": 1.0}
    assert sampler_defaults("uni_pc") == {"order": 3} and sampler_defaults("lms") == {"order": 4}
    assert sampler_defaults("dpmpp_sde") == {"eta": 1.0, "s_noise": 1.0, "r": 0.5}
    assert sampler_defaults("lcm") == {} and sampler_defaults("dpmpp_2m") == {}


def test_a1111_names() -> None:
    assert a1111_name("dpmpp_2m_sde", "karras") == "DPM++ 2M SDE Karras"
    assert a1111_name("dpmpp_2m", "normal") == "DPM++ 2M"
    assert a1111_name("euler_a", "sgm_uniform") == "Euler a SGM Uniform"
    assert set(A1111_SAMPLER_NAMES) == set(SAMPLERS)
