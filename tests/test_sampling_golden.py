"""Full sampling loops against the reference: tiny UNet / VideoUNet + denoiser + guider + sampler.

Fixtures: tests/golden/denoiser-and-sampling (SDXL-style UNet, DiscreteDenoiser, VanillaCFG 5.0,
4 LegacyDDPM steps) and tests/golden/denoiser-and-sampling-video (SVD-style VideoUNet,
v_edm continuous denoiser, EDM(0.002, 700, 7) 4 steps, linear / triangle per-frame CFG).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gm.config import from_dict
from gm.diffusion.denoiser import make_denoiser, unet_network
from gm.diffusion.guiders import LinearPredictionGuider, TrianglePredictionGuider, VanillaCFG, guided
from gm.diffusion.samplers import sample
from gm.diffusion.schedules import edm_sigmas, legacy_ddpm_sigmas
from gm.models.unet import UNet, UNetConfig

GOLDEN = Path(__file__).parent / "golden"


def _load(name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    folder = GOLDEN / name
    config = json.loads((folder / "config.json").read_text())
    module = config["modules"][0]
    weights = load_file(folder / "weights.safetensors")
    prefix = module["prefix"]
    state = {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}
    return config, state, load_file(folder / "io.safetensors")


def assert_close(actual: torch.Tensor, name: str, config: dict, io: dict[str, torch.Tensor]) -> None:
    ref = io[name]
    tol = config["tolerance"][name]
    assert actual.shape == ref.shape, name
    err = (actual - ref).abs()
    bound = tol["atol"] + tol["rtol"] * ref.abs()
    assert bool((err <= bound).all()), f"{name}: max err {err.max().item():.3g}"


@pytest.fixture(scope="module")
def image() -> tuple[dict, UNet, dict[str, torch.Tensor]]:
    config, state, io = _load("denoiser-and-sampling")
    params = config["modules"][0]["params"]
    unet = UNet(from_dict(UNetConfig, params, "denoiser-and-sampling unet")).eval()
    unet.load_state_dict(state, strict=True)
    return config, unet, io


# run -> (sampler, options, scaling, schedule); eta0 runs use eta = 0 exactly (the reference
# needed 1e-12 because it crashes on 0).
IMAGE_RUNS = {
    "euler": ("euler", {}, "eps", "ddpm"),
    "heun": ("heun", {}, "eps", "ddpm"),
    "dpmpp2m": ("dpmpp_2m", {}, "eps", "ddpm"),
    "lms": ("lms", {"order": 4}, "eps", "ddpm"),
    "euler_a_eta1": ("euler_a", {"eta": 1.0, "s_noise": 1.0}, "eps", "ddpm"),
    "dpmpp2s_a_eta1": ("dpmpp_2s_a", {"eta": 1.0, "s_noise": 1.0}, "eps", "ddpm"),
    "euler_a_eta0": ("euler_a", {"eta": 0.0}, "eps", "ddpm"),
    "dpmpp2s_a_eta0": ("dpmpp_2s_a", {"eta": 0.0}, "eps", "ddpm"),
    "euler_edmdisc": ("euler", {}, "eps", "edm"),
    "euler_vpred": ("euler", {}, "v", "ddpm"),
}


@pytest.mark.parametrize("run", sorted(IMAGE_RUNS))
def test_image_sampling_golden(image, run: str) -> None:
    config, unet, io = image
    name, options, scaling, schedule = IMAGE_RUNS[run]
    steps = config["sampling"]["num_steps"]
    sigmas = legacy_ddpm_sigmas(steps) if schedule == "ddpm" else edm_sigmas(steps, 0.0292, 14.6146, 3.0)
    denoiser = make_denoiser(unet_network(unet), scaling, discrete=True)
    cond = {"crossattn": io["c_crossattn"], "vector": io["c_vector"]}
    uc = {"crossattn": io["uc_crossattn"], "vector": io["uc_vector"]}
    denoise = guided(denoiser, VanillaCFG(scale=config["sampling"]["cfg_scale"]), cond, uc)
    noise = io["noise"].clone()
    out = sample(name, denoise, noise, sigmas, noise_fn=lambda i: io["ancestral_noise"][i], **options)
    assert torch.equal(noise, io["noise"])  # the caller's noise is not scaled in place
    assert_close(out, f"sample.{run}", config, io)


def test_image_single_guided_batch_golden(image) -> None:
    config, unet, io = image
    denoiser = make_denoiser(unet_network(unet), "eps", discrete=True)
    cond = {"crossattn": io["c_crossattn"], "vector": io["c_vector"]}
    uc = {"crossattn": io["uc_crossattn"], "vector": io["uc_vector"]}
    x2, s2, cond2 = VanillaCFG(scale=5.0).prepare(io["noise"], torch.tensor([3.0]), cond, uc)
    with torch.no_grad():
        out = denoiser(x2, s2, cond2)
    assert_close(out, "single_step.denoised_uc_c_at_sigma3", config, io)


@pytest.mark.parametrize("run", ["euler_linear", "euler_triangle"])
def test_video_sampling_golden(run: str) -> None:
    video_unet = pytest.importorskip("gm.models.video_unet")  # owned by the image-models helper
    VideoUNet, VideoUNetConfig = video_unet.VideoUNet, video_unet.VideoUNetConfig
    config, state, io = _load("denoiser-and-sampling-video")
    params = config["modules"][0]["params"]
    unet = VideoUNet(from_dict(VideoUNetConfig, params, "denoiser-and-sampling-video unet")).eval()
    unet.load_state_dict(state, strict=True)
    frames = int(io["num_video_frames"])
    guider_params = config["sampling"]["guiders"][run.removeprefix("euler_")]["params"]
    guider_cls = LinearPredictionGuider if run == "euler_linear" else TrianglePredictionGuider
    guider = from_dict(guider_cls, guider_params, f"guiders.{run}")
    # The uncond branch zeroes the image conditionings. The fixture's indicator is the reference's
    # pre-doubled (2b, T); here it is a (b, T) conditioning entry that the guider doubles.
    indicator = io["image_only_indicator"][:1]
    cond = {
        "crossattn": io["c_crossattn"],
        "concat": io["c_concat"],
        "vector": io["c_vector"],
        "image_only_indicator": indicator,
        "num_video_frames": frames,
    }
    uc = {
        **cond,
        "crossattn": torch.zeros_like(io["c_crossattn"]),
        "concat": torch.zeros_like(io["c_concat"]),
    }
    denoiser = make_denoiser(unet_network(unet), "v_edm", discrete=False)
    sigmas = edm_sigmas(config["sampling"]["num_steps"], 0.002, 700.0, 7.0)
    out = sample("euler", guided(denoiser, guider, cond, uc), io["noise"], sigmas)
    assert_close(out, f"sample.{run}", config, io)
