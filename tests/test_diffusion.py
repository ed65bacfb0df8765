"""Diffusion core: schedules, scalings, denoiser, guiders, samplers and training loss.

Golden checks use tests/golden/denoiser-and-sampling{,-video} (static outputs, README tolerances);
the rest are measured reference numbers (docs/reference.md) and closed forms.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gm.config import from_dict
from gm.diffusion.denoiser import Denoiser, call_unet, make_denoiser
from gm.diffusion.guiders import (
    GUIDERS,
    IdentityGuider,
    LinearPredictionGuider,
    SpatiotemporalPredictionGuider,
    TrapezoidPredictionGuider,
    TrianglePredictionGuider,
    VanillaCFG,
    guided,
)
from gm.diffusion.samplers import SAMPLERS, lms_coefficient, make_noise_fn, sample
from gm.diffusion.scalings import SCALINGS
from gm.diffusion.schedules import (
    ddpm_sigma_table,
    ddpm_timesteps,
    edm_sigmas,
    img2img_sigmas,
    legacy_ddpm_sigmas,
    turbo_sigmas,
    txt2noisy_sigmas,
)
from gm.diffusion.training import (
    diffusion_loss,
    edm_weighting,
    eps_weighting,
    sample_sigmas_discrete,
    sample_sigmas_edm,
    unit_weighting,
    v_weighting,
    weighting_by_name,
)
from gm.errors import UsageError

GOLDEN = Path(__file__).parent / "golden"


def _fixture(name: str) -> tuple[dict, dict[str, torch.Tensor]]:
    config = json.loads((GOLDEN / name / "config.json").read_text())
    return config, load_file(GOLDEN / name / "io.safetensors")


IMG_CFG, IMG_IO = _fixture("denoiser-and-sampling")
VID_CFG, VID_IO = _fixture("denoiser-and-sampling-video")


def assert_close(actual: torch.Tensor, name: str, config: dict, io: dict[str, torch.Tensor]) -> None:
    ref = io[name]
    tol = config["tolerance"][name]
    assert actual.shape == ref.shape, name
    if tol.get("exact"):
        assert torch.equal(actual, ref), name
        return
    err = (actual.double() - ref.double()).abs()
    bound = tol["atol"] + tol["rtol"] * ref.double().abs()
    assert bool((err <= bound).all()), f"{name}: max err {err.max().item():.3g}"


# ---------------------------------------------------------------- golden: static outputs

SCALING_NAMES = {"EpsScaling": "eps", "VScaling": "v", "VScalingWithEDMcNoise": "v_edm", "EDMScaling": "edm"}


@pytest.mark.parametrize("ref_name", SCALING_NAMES)
def test_scalings_golden(ref_name: str) -> None:
    c = dict(zip(("c_skip", "c_out", "c_in", "c_noise"), SCALINGS[SCALING_NAMES[ref_name]](IMG_IO["scaling_sigmas"])))
    for part, value in c.items():
        assert value.dtype == torch.float32
        assert_close(value, f"scaling.{ref_name}.{part}", IMG_CFG, IMG_IO)


def test_discrete_table_and_quantisation_golden() -> None:
    assert_close(ddpm_sigma_table(), "discrete_denoiser.sigmas", IMG_CFG, IMG_IO)
    denoiser = make_denoiser(lambda x, c, cond: x, "eps", discrete=True)
    sigma_q, idx = denoiser.quantize(IMG_IO["scaling_sigmas"])
    assert_close(sigma_q, "discrete_denoiser.quantized_sigma", IMG_CFG, IMG_IO)
    assert_close(idx, "discrete_denoiser.idx", IMG_CFG, IMG_IO)


EDM_SETTINGS = {
    "svd_25": (25, 0.002, 700.0, 7.0),
    "svdxt_30": (30, 0.002, 700.0, 7.0),
    "sv3d_50": (50, 0.002, 700.0, 7.0),
    "sv4d_yaml_50": (50, 0.002, 500.0, 7.0),
    "sv4d_script_20": (20, 0.002, 700.0, 7.0),
    "sv4d2_script_50": (50, 0.002, 700.0, 7.0),
    "default_80": (10, 0.002, 80.0, 7.0),
    "sdxl_demo_edm": (4, 0.0292, 14.6146, 3.0),
}


def test_discretizations_golden() -> None:
    assert_close(legacy_ddpm_sigmas(4), "disc.legacy_ddpm.n4", IMG_CFG, IMG_IO)
    assert_close(legacy_ddpm_sigmas(50), "disc.legacy_ddpm.n50", IMG_CFG, IMG_IO)
    assert_close(legacy_ddpm_sigmas(1000, append_zero=False), "disc.legacy_ddpm.n1000_noappend", IMG_CFG, IMG_IO)
    for name, (n, smin, smax, rho) in EDM_SETTINGS.items():
        assert_close(edm_sigmas(n, smin, smax, rho), f"disc.edm.{name}", IMG_CFG, IMG_IO)
    assert_close(edm_sigmas(4, 0.002, 700.0, 7.0), "sigmas", VID_CFG, VID_IO)


GUIDER_KINDS = {
    "LinearPredictionGuider": "linear",
    "TrianglePredictionGuider": "triangle",
    "SpatiotemporalPredictionGuider": "spatiotemporal",
}


@pytest.mark.parametrize("name", sorted(VID_CFG["guider_scale_tables"]))
def test_guider_scales_golden(name: str) -> None:
    spec = VID_CFG["guider_scale_tables"][name]
    cls = GUIDERS[GUIDER_KINDS[spec["target"].rsplit(".", 1)[1]]]
    guider = from_dict(cls, spec["params"], f"guider_scale_tables.{name}")
    assert_close(guider.scales(), f"guider_scale.{name}", VID_CFG, VID_IO)


# ---------------------------------------------------------------- measured reference numbers (docs/reference.md)


def test_ddpm_timesteps_verified() -> None:
    assert list(ddpm_timesteps(50)[:2]) == [19, 39] and list(ddpm_timesteps(50)[-2:]) == [979, 999]
    assert list(ddpm_timesteps(40)[:2]) == [24, 49]
    assert list(ddpm_timesteps(25)[:2]) == [39, 79]
    assert list(ddpm_timesteps(10)[:2]) == [99, 199]
    assert list(ddpm_timesteps(4)) == [249, 499, 749, 999]
    assert list(ddpm_timesteps(1)) == [999]
    assert len(ddpm_timesteps(1000)) == 1000
    with pytest.raises(UsageError):
        legacy_ddpm_sigmas(1001)


def test_legacy_ddpm_50_verified() -> None:
    s = legacy_ddpm_sigmas(50)
    assert len(s) == 51 and s[-1] == 0 and bool((s[:-1] > s[1:]).all())
    expect = {0: 14.6146, 1: 12.9663, 2: 11.5428, -3: 0.1963, -2: 0.1345}
    for i, v in expect.items():
        assert float(s[i]) == pytest.approx(v, abs=1e-4)
    table = ddpm_sigma_table()
    assert float(table[0]) == pytest.approx(0.0292, abs=1e-4) and float(table[-1]) == pytest.approx(14.6146, abs=1e-4)
    assert legacy_ddpm_sigmas(50, append_zero=False).shape == (50,)


def test_edm_svd_verified() -> None:
    s = edm_sigmas(25, 0.002, 700.0, 7.0)
    for i, v in {0: 700.0, 1: 545.73, 2: 421.57, -3: 0.0079, -2: 0.002, -1: 0.0}.items():
        assert float(s[i]) == pytest.approx(v, abs=1e-2 if v > 1 else 1e-4)


@pytest.mark.parametrize(
    ("n", "strength", "steps", "start"),
    [(50, 0.75, 37, 3.9126), (40, 0.75, 29, 3.6758), (25, 0.5, 12, 1.5092), (50, 0.15, 6, 0.3866)],
)
def test_img2img_verified(n: int, strength: float, steps: int, start: float) -> None:
    s = img2img_sigmas(legacy_ddpm_sigmas(n), strength)
    assert len(s) - 1 == steps and s[-1] == 0
    assert float(s[0]) == pytest.approx(start, abs=1e-4)


def test_img2img_below_one_step() -> None:
    s = img2img_sigmas(legacy_ddpm_sigmas(50), 0.01)
    assert s.tolist() == [0.0]
    x = torch.randn(2, 4)
    assert torch.equal(sample("euler", lambda x, s: x * 0, x, s), x)  # no step: input unchanged


@pytest.mark.parametrize(
    ("n", "strength", "steps", "end"), [(50, 0.15, 44, 0.3866), (40, 0.15, 35, 0.3977), (50, 0.3, 36, 0.7734)]
)
def test_txt2noisy_verified(n: int, strength: float, steps: int, end: float) -> None:
    full = legacy_ddpm_sigmas(n)
    base = txt2noisy_sigmas(full, strength, original_steps=n)
    assert len(base) - 1 == steps
    assert float(base[-1]) == pytest.approx(end, abs=1e-4)
    assert float(base[0]) == float(full[0])
    # The refiner's img2img at the same strength starts exactly where the base stopped.
    assert float(img2img_sigmas(full, strength)[0]) == float(base[-1])


def test_turbo_verified() -> None:
    assert turbo_sigmas(1).tolist() == pytest.approx([14.6146, 0.0], abs=1e-4)
    assert turbo_sigmas(4).tolist() == pytest.approx([14.6146, 8.3028, 5.0878, 3.3211, 0.0], abs=1e-4)
    with pytest.raises(UsageError):
        turbo_sigmas(5)


def test_guider_vectors_verified() -> None:
    svd = LinearPredictionGuider(max_scale=2.5, num_frames=14).scales()[0]
    assert svd[[0, 1, -1]].tolist() == pytest.approx([1.0, 1.1154, 2.5], abs=1e-4)
    xt = LinearPredictionGuider(max_scale=3.0, num_frames=25, min_scale=1.5).scales()[0]
    assert xt[[0, 1, -1]].tolist() == pytest.approx([1.5, 1.5625, 3.0], abs=1e-5)
    sv3d = TrianglePredictionGuider(max_scale=2.5, num_frames=21).scales()[0]
    assert sv3d[[0, 1, 10, 20]].tolist() == pytest.approx([1.0, 1.15, 2.5, 1.0], abs=1e-5)
    assert int(sv3d.argmax()) == 10
    sv4d = SpatiotemporalPredictionGuider(max_scale=2.0, num_frames=40, num_views=8).scales()
    assert (float(sv4d.min()), float(sv4d.max())) == pytest.approx((1.0, 1.9286), abs=1e-4)
    sv4d2_4v = LinearPredictionGuider(max_scale=2.0, num_frames=48).scales()[0]
    assert float(sv4d2_4v[1] - sv4d2_4v[0]) == pytest.approx(0.0213, abs=1e-4) and float(sv4d2_4v[-1]) == 2.0
    sv4d2_8v = SpatiotemporalPredictionGuider(max_scale=2.5, num_frames=40, num_views=8, min_scale=1.5).scales()
    assert (float(sv4d2_8v.min()), float(sv4d2_8v.max())) == pytest.approx((1.5, 2.4286), abs=1e-4)


def test_triangle_period_from_preset() -> None:
    # The reference only accepts a float period; an int from the config must work too.
    int_period = from_dict(TrianglePredictionGuider, {"max_scale": 2.5, "num_frames": 21, "period": 1}, "t")
    default = TrianglePredictionGuider(max_scale=2.5, num_frames=21)
    assert torch.equal(int_period.scales(), default.scales())
    fused = TrianglePredictionGuider(max_scale=2.0, num_frames=5, period=(1.0, 0.5), period_fusing="max")
    assert fused.scales()[0].tolist() == pytest.approx([1.0, 2.0, 2.0, 2.0, 1.0])


def test_trapezoid_plateau_is_max() -> None:
    s = TrapezoidPredictionGuider(max_scale=3.0, num_frames=20, edge_perc=0.1).scales()[0]
    assert s.tolist() == pytest.approx([1.0, 3.0] + [3.0] * 16 + [3.0, 1.0])


# ---------------------------------------------------------------- denoiser and UNet adapter


def test_denoiser_discrete_passes_timestep_index() -> None:
    seen = {}

    def network(x, c_noise, cond):
        seen["c_noise"], seen["dtype"] = c_noise, x.dtype
        return torch.ones_like(x)

    denoiser = make_denoiser(network, "eps", discrete=True, dtype=torch.float64)
    x = torch.randn(2, 3)
    sigma = torch.tensor([1.0, 14.7])
    out = denoiser(x, sigma, {})
    table = ddpm_sigma_table()
    assert seen["c_noise"].dtype == torch.int64 and seen["c_noise"].tolist()[1] == 999
    assert seen["dtype"] == torch.float64 and out.dtype == torch.float32
    sigma_q = table[seen["c_noise"]]
    torch.testing.assert_close(out, x - sigma_q[:, None])  # eps: D = x - sigma_q * eps


def test_denoiser_continuous_v_edm() -> None:
    seen = {}

    def network(x, c_noise, cond):
        seen["x"], seen["c_noise"] = x, c_noise
        return torch.zeros_like(x)

    denoiser = Denoiser(network=network, scaling=SCALINGS["v_edm"])
    x = torch.randn(2, 4, 2, 2)
    sigma = torch.tensor([0.5, 700.0])
    out = denoiser(x, sigma, {})
    torch.testing.assert_close(seen["c_noise"], 0.25 * sigma.log())
    torch.testing.assert_close(seen["x"], x / (sigma**2 + 1).sqrt()[:, None, None, None])
    torch.testing.assert_close(out, x / (sigma**2 + 1)[:, None, None, None])


def test_call_unet_routes_by_name() -> None:
    seen = {}

    def unet(x, timesteps, context=None, y=None, **named):
        seen.update(x=x, t=timesteps, context=context, y=y, named=named)
        return x[:, :2]

    x = torch.zeros(2, 2, 3, 3)
    cond = {
        "crossattn": torch.ones(2, 5, 7),
        "vector": torch.ones(2, 6),
        "concat": torch.full((2, 3, 3, 3), 2.0),
        "num_video_frames": 1,
        "image_only_indicator": torch.zeros(2, 1),
    }
    call_unet(unet, x.half(), torch.tensor([1, 2]), cond)
    assert seen["x"].shape == (2, 5, 3, 3) and seen["x"].dtype == torch.float16
    assert float(seen["x"][:, 2:].mean()) == 2.0
    assert seen["context"].shape == (2, 5, 7) and seen["context"].dtype == torch.float16
    assert seen["y"].shape == (2, 6)
    assert set(seen["named"]) == {"num_video_frames", "image_only_indicator"}
    assert seen["named"]["image_only_indicator"].dtype == torch.float16


# ---------------------------------------------------------------- guiders


def test_vanilla_cfg_uc_first_and_passthrough() -> None:
    guider = VanillaCFG(scale=5.0)
    c = {"crossattn": torch.ones(1, 2, 3), "vector": torch.ones(1, 4), "num_video_frames": 3}
    uc = {"crossattn": torch.zeros(1, 2, 3), "vector": torch.zeros(1, 4), "num_video_frames": 3}
    x2, s2, cond2 = guider.prepare(torch.ones(1, 2), torch.tensor([3.0]), c, uc)
    assert x2.shape == (2, 2) and s2.tolist() == [3.0, 3.0]
    assert cond2["crossattn"][:, 0, 0].tolist() == [0.0, 1.0]  # uc first
    assert cond2["num_video_frames"] == 3
    out = torch.stack([torch.full((2,), 1.0), torch.full((2,), 2.0)])  # [x_u; x_c]
    assert guider.combine(out, s2).tolist() == [[6.0, 6.0]]
    with pytest.raises(UsageError):
        guider.prepare(torch.ones(1, 2), torch.tensor([3.0]), c, {**uc, "num_video_frames": 4})


def test_vanilla_cfg_scale_one_skips_uncond() -> None:
    calls = []

    def denoiser(x, sigma, cond):
        calls.append(x.shape[0])
        return x * 2

    c, uc = {"vector": torch.ones(3, 4)}, {"vector": torch.zeros(3, 4)}
    out = guided(denoiser, VanillaCFG(scale=1.0), c, uc)(torch.ones(3, 1), torch.ones(3))
    assert calls == [3] and out.tolist() == [[2.0]] * 3
    guided(denoiser, IdentityGuider(), c, uc)(torch.ones(3, 1), torch.ones(3))
    guided(denoiser, VanillaCFG(scale=2.0), c, uc)(torch.ones(3, 1), torch.ones(3))
    assert calls == [3, 3, 6]


def test_image_only_indicator_follows_the_batch() -> None:
    ind = torch.zeros(1, 3)
    c = {"vector": torch.ones(3, 2), "image_only_indicator": ind, "num_video_frames": 3}
    x, s = torch.zeros(3, 1), torch.ones(3)
    assert IdentityGuider().prepare(x, s, c, c)[2]["image_only_indicator"].shape == (1, 3)
    _, _, doubled = LinearPredictionGuider(max_scale=2.0, num_frames=3).prepare(x, s, c, c)
    assert doubled["image_only_indicator"].shape == (2, 3) and doubled["num_video_frames"] == 3


def test_linear_guider_per_frame_and_additional_keys() -> None:
    guider = LinearPredictionGuider(max_scale=3.0, num_frames=3, additional_cond_keys=("cond_view",))
    c = {"concat": torch.ones(6, 1), "cond_view": torch.ones(6, 1)}
    uc = {"concat": torch.zeros(6, 1), "cond_view": torch.zeros(6, 1)}
    _, _, cond2 = guider.prepare(torch.zeros(6, 1), torch.ones(6), c, uc)
    assert cond2["cond_view"].shape == (12, 1) and cond2["cond_view"][:6].sum() == 0
    out = torch.cat([torch.zeros(6, 1), torch.ones(6, 1)])  # x_u = 0, x_c = 1 -> result = scale
    assert guider.combine(out, torch.ones(12)).flatten().tolist() == [1.0, 2.0, 3.0] * 2


# ---------------------------------------------------------------- samplers: closed forms

DATA_STD = 1.5


def _gaussian_denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
    """The exact denoiser E[x0 | x] for x0 ~ N(0, DATA_STD^2)."""
    s2 = DATA_STD**2
    return x * (s2 / (s2 + sigma[:, None] ** 2))


@pytest.mark.parametrize(
    ("name", "options", "steps"),
    [
        # First-order samplers converge slowly near sigma ~ data std (40 Euler steps give var 1.99
        # instead of 2.25, by the exact variance recursion), so they get many small steps.
        ("euler", {}, 1000),
        ("euler", {"s_churn": 20.0}, 1000),
        ("euler_a", {"eta": 1.0}, 1000),
        ("euler_a", {"eta": 0.0}, 1000),
        ("heun", {}, 40),
        ("dpmpp_2s_a", {"eta": 1.0}, 100),
        ("dpmpp_2s_a", {"eta": 0.0}, 40),
        ("dpmpp_2m", {}, 40),
        ("lms", {}, 40),
    ],
)
def test_samplers_land_on_data_distribution(name: str, options: dict, steps: int) -> None:
    sigmas = edm_sigmas(steps, 0.002, 80.0, 7.0)
    gen = torch.Generator().manual_seed(0)
    noise = torch.randn(20000, 1, generator=gen)
    noise_fn = make_noise_fn(gen, (20000, 1), "cpu", torch.float32)
    out = sample(name, _gaussian_denoise, noise, sigmas, noise_fn=noise_fn, **options)
    # Normalise by the drawn noise's own variance so that only the sampler's error remains.
    assert float(out.var() / noise.var()) == pytest.approx(DATA_STD**2, rel=0.03)
    if options.get("eta", 0.0) == 0.0 and "s_churn" not in options:
        # Deterministic samplers follow the ODE: x(0) = x(T) * s / sqrt(s^2 + sigma_T^2).
        exact = noise * math.sqrt(1 + 80.0**2) * DATA_STD / math.sqrt(DATA_STD**2 + 80.0**2)
        assert float((out - exact).abs().max() / exact.abs().max()) < 0.01


def test_eta0_equals_euler_and_noise_not_mutated() -> None:
    sigmas = legacy_ddpm_sigmas(10)
    noise = torch.randn(64, 1, generator=torch.Generator().manual_seed(1))
    before = noise.clone()
    a = sample("euler", _gaussian_denoise, noise, sigmas)
    b = sample("euler_a", _gaussian_denoise, noise, sigmas, eta=0.0)
    torch.testing.assert_close(a, b)
    assert torch.equal(noise, before)


@pytest.mark.parametrize("name", sorted(SAMPLERS))
def test_callback_once_per_step(name: str) -> None:
    steps = []
    sample(name, _gaussian_denoise, torch.randn(4, 1), edm_sigmas(6), callback=lambda i, x, d: steps.append(i))
    assert steps == list(range(6))


def test_noise_fn_is_device_independent_and_reproducible() -> None:
    f1 = make_noise_fn(torch.Generator().manual_seed(7), (2, 3), "cpu", torch.float32)
    f2 = make_noise_fn(torch.Generator().manual_seed(7), (2, 3), "cpu", torch.float64)
    torch.testing.assert_close(f1(0).double(), f2(0))
    assert not torch.equal(f1(1), f1(2))


def test_sample_rejects_unknown() -> None:
    sigmas = edm_sigmas(2)
    with pytest.raises(UsageError, match="no option"):
        sample("heun", _gaussian_denoise, torch.zeros(1, 1), sigmas, eta=1.0)
    with pytest.raises(UsageError, match="unknown sampler"):
        sample("ddim", _gaussian_denoise, torch.zeros(1, 1), sigmas)
    assert set(SAMPLERS) == {"euler", "heun", "euler_a", "dpmpp_2s_a", "dpmpp_2m", "lms"}


def test_lms_coefficients_closed_form() -> None:
    sig = edm_sigmas(10).numpy()
    # order 1: the integral of 1 over [s_i, s_{i+1}]
    assert lms_coefficient(1, sig, 0, 0) == pytest.approx(float(sig[1] - sig[0]), rel=1e-12)
    # The Lagrange basis sums to 1, so the coefficients sum to the interval length.
    for i in range(3, 9):
        total = sum(lms_coefficient(4, sig, i, j) for j in range(4))
        assert total == pytest.approx(float(sig[i + 1]) - float(sig[i]), rel=1e-9)
    # order 2 closed form: basis of node s_i is (tau - s_{i-1}) / (s_i - s_{i-1}).
    a, b, p = float(sig[5]), float(sig[6]), float(sig[4])
    exact = ((b - p) ** 2 - (a - p) ** 2) / (2 * (a - p))
    assert lms_coefficient(2, sig, 5, 0) == pytest.approx(exact, rel=1e-9)


# ---------------------------------------------------------------- training math


def test_sigma_samplers() -> None:
    gen = torch.Generator().manual_seed(3)
    log_sigma = sample_sigmas_edm(200000, generator=gen).log()
    assert float(log_sigma.mean()) == pytest.approx(-1.2, abs=0.02)
    assert float(log_sigma.std()) == pytest.approx(1.2, abs=0.02)
    table = ddpm_sigma_table()
    sigmas = sample_sigmas_discrete(5000, generator=gen)
    assert bool(torch.isin(sigmas, table).all()) and len(sigmas.unique()) > 900


def test_loss_weightings_closed_form() -> None:
    sigma = torch.tensor([0.1, 0.5, 2.0, 80.0])
    torch.testing.assert_close(edm_weighting(sigma), (sigma**2 + 0.25) / (sigma * 0.5) ** 2)
    torch.testing.assert_close(v_weighting(sigma), (sigma**2 + 1) / sigma**2)
    torch.testing.assert_close(eps_weighting(sigma), 1 / sigma**2)
    torch.testing.assert_close(unit_weighting(sigma), torch.ones(4))
    torch.testing.assert_close(weighting_by_name("edm", sigma_data=1.0)(sigma), v_weighting(sigma))


def test_diffusion_loss() -> None:
    z = torch.randn(3, 2, 4, 4)
    noise = torch.randn(3, 2, 4, 4)
    sigma = torch.tensor([0.5, 1.0, 3.0])
    perfect = diffusion_loss(lambda x, s: z, z, sigma, noise, edm_weighting)
    assert perfect.shape == (3,) and float(perfect.abs().max()) == 0.0
    # Identity "denoiser": D - z = noise * sigma.
    l2 = diffusion_loss(lambda x, s: x, z, sigma, noise, eps_weighting)
    torch.testing.assert_close(l2, (noise**2).mean((1, 2, 3)))
    l1 = diffusion_loss(lambda x, s: x, z, sigma, noise, unit_weighting, loss_type="l1")
    torch.testing.assert_close(l1, (noise.abs() * sigma[:, None, None, None]).mean((1, 2, 3)))
