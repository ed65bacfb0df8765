"""Golden parity of the video networks (unet-svd, unet-sv3d, vae-video-decoder) and the release
manifests of the SVD / SV3D UNets and the SVD first stage."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gm.config import from_dict
from gm.models.video_unet import VideoUNet, VideoUNetConfig
from gm.models.video_vae import VideoAutoencoder, VideoVAEConfig
from gm.nn.embeddings import timestep_embedding

HERE = Path(__file__).parent


def load_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    folder = HERE / "golden" / name
    config = json.loads((folder / "config.json").read_text())
    return config, load_file(folder / "weights.safetensors"), load_file(folder / "io.safetensors")


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: dict) -> None:
    assert out.shape == ref.shape
    err = (out - ref).abs()
    assert bool((err <= tol["atol"] + tol["rtol"] * ref.abs()).all()), f"max abs err {err.max().item():.3g}"


@pytest.fixture(scope="module", params=["unet-svd", "unet-sv3d"])
def video_unet(request: pytest.FixtureRequest) -> tuple[VideoUNet, dict, dict[str, torch.Tensor]]:
    config, weights, io = load_fixture(request.param)
    module = config["modules"][0]
    unet = VideoUNet(from_dict(VideoUNetConfig, module["params"], request.param)).eval()
    prefix = module["prefix"]
    unet.load_state_dict({k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}, strict=True)
    return unet, config, io


@pytest.mark.parametrize(
    "context_key, indicator_key, output_key",
    [
        ("context", "image_only_indicator", "output"),
        ("context", "image_only_indicator_mixed", "output_mixed_indicator"),
        ("context_2tok", "image_only_indicator", "output_context_2tokens"),
    ],
)
def test_video_unet_golden(video_unet: tuple, context_key: str, indicator_key: str, output_key: str) -> None:
    unet, config, io = video_unet
    with torch.no_grad():
        out = unet(
            io["x"],
            io["timesteps"],
            io[context_key],
            io["y"],
            num_video_frames=int(io["num_video_frames"]),
            image_only_indicator=io[indicator_key],
        )
    assert_close(out, io[output_key], config["tolerance"][output_key])


def test_video_unet_vector_from_scalars(video_unet: tuple) -> None:
    """y = concatenated cos-first sinusoidal embeddings of the scalar conditions, in config order."""
    _, config, io = video_unet
    embedders = config["modules"][1]["params"]["emb_models"]
    y = torch.cat([timestep_embedding(io[e["input_key"]], e["params"]["outdim"]) for e in embedders], dim=1)
    assert_close(y, io["y"], config["tolerance"]["y"])


def test_image_only_indicator_defaults_to_zeros(video_unet: tuple) -> None:
    unet, _, io = video_unet
    t = int(io["num_video_frames"])
    with torch.no_grad():
        a = unet(io["x"], io["timesteps"], io["context"], io["y"], num_video_frames=t)
        b = unet(io["x"], io["timesteps"], io["context"], io["y"], num_video_frames=t,
                 image_only_indicator=torch.zeros(io["x"].shape[0] // t, t))
    assert torch.equal(a, b)
    with pytest.raises(ValueError):
        unet(io["x"], io["timesteps"], io["context"], io["y"], num_video_frames=t + 1)


@pytest.fixture(scope="module")
def video_decoder() -> tuple[VideoAutoencoder, dict, dict[str, torch.Tensor]]:
    config, weights, io = load_fixture("vae-video-decoder")
    params = config["modules"][0]["params"]
    vae = VideoAutoencoder(from_dict(VideoVAEConfig, {**params, "parts": "decoder", "quant_conv": False}, "vae"))
    vae.eval().load_state_dict({k[len("first_stage_model.") :]: v for k, v in weights.items()}, strict=True)
    return vae, config, io


def test_video_decoder_golden(video_decoder: tuple) -> None:
    vae, config, io = video_decoder
    with torch.no_grad():
        out = vae.decode(io["z"], int(io["num_frames"]))
    assert_close(out, io["decoded"], config["tolerance"]["decoded"])


def test_video_decoder_mixes_only_within_a_clip(video_decoder: tuple) -> None:
    vae, _, io = video_decoder
    t = int(io["num_frames"])
    with torch.no_grad():
        first_clip = vae.decode(io["z"][:t], t)
        per_frame = vae.decode(io["z"], 1)
    assert torch.allclose(first_clip, io["decoded"][:t], atol=2e-5, rtol=1e-4)
    assert (per_frame - io["decoded"]).abs().max() > 1e-3  # temporal mixing is real


RELEASE_VIDEO_UNET = dict(
    in_channels=8, out_channels=4, model_channels=320, num_res_blocks=2, attention_resolutions=[4, 2, 1],
    channel_mult=[1, 2, 4, 4], num_head_channels=64, transformer_depth=1, context_dim=1024,
    num_classes="sequential", use_linear_in_transformer=True, extra_ff_mix_layer=True,
    use_spatial_context=True, merge_strategy="learned_with_images", video_kernel_size=[3, 1, 1],
    spatial_transformer_attn_type="softmax-xformers", use_checkpoint=True,
)


def manifest_subset(name: str, prefix: str) -> dict[str, list[int]]:
    tensors = json.loads((HERE / "manifests" / f"{name}.json").read_text())["tensors"]
    return {k[len(prefix) :]: list(v) for k, v in tensors.items() if k.startswith(prefix)}


def assert_matches(module: torch.nn.Module, expected: dict[str, list[int]]) -> None:
    ours = {k: list(v.shape) for k, v in module.state_dict().items()}
    assert sorted(set(ours) ^ set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}


@pytest.mark.parametrize("name, adm", [("svd", 768), ("svd-xt", 768), ("sv3d-u", 256), ("sv3d-p", 1280)])
def test_release_video_unet_matches_manifest(name: str, adm: int) -> None:
    with torch.device("meta"):
        unet = VideoUNet(from_dict(VideoUNetConfig, {**RELEASE_VIDEO_UNET, "adm_in_channels": adm}, name))
    assert_matches(unet, manifest_subset(name, "model.diffusion_model."))


@pytest.mark.parametrize("name", ["svd", "svd-xt-1.1"])
def test_release_svd_first_stage_matches_manifest(name: str) -> None:
    params = dict(ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, z_channels=4, quant_conv=False)
    with torch.device("meta"):
        vae = VideoAutoencoder(from_dict(VideoVAEConfig, params, name))
    assert_matches(vae, manifest_subset(name, "first_stage_model."))


def test_video_unet_bf16_weights_run_close(video_unet: tuple) -> None:
    unet, _, io = video_unet
    low = VideoUNet(unet.cfg).eval().to(torch.bfloat16)
    low.load_state_dict(unet.state_dict())
    with torch.no_grad():
        out = low(io["x"], io["timesteps"], io["context"], io["y"], num_video_frames=int(io["num_video_frames"]),
                  image_only_indicator=io["image_only_indicator_mixed"])
    assert out.dtype == torch.float32
    assert (out - io["output_mixed_indicator"]).abs().max() < 0.1
