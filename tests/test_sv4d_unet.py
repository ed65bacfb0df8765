"""Golden parity of the SV4D / SV4D 2.0 UNet (unet-sv4d, unet-sv4d2) and the release manifests of
the sv4d, sv4d2 and sv4d2-8views networks."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gm.config import from_dict
from gm.errors import PresetError
from gm.models.sv4d_unet import SV4DUNet, SV4DUNetConfig

HERE = Path(__file__).parent


def load_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    folder = HERE / "golden" / name
    config = json.loads((folder / "config.json").read_text())
    return config, load_file(folder / "weights.safetensors"), load_file(folder / "io.safetensors")


def build(name: str) -> tuple[SV4DUNet, dict, dict[str, torch.Tensor]]:
    config, weights, io = load_fixture(name)
    module = config["modules"][0]
    unet = SV4DUNet(from_dict(SV4DUNetConfig, module["params"], name)).eval()
    prefix = module["prefix"]
    unet.load_state_dict({k[len(prefix):]: v for k, v in weights.items()}, strict=True)
    return unet, config, io


def run(unet: SV4DUNet, io: dict[str, torch.Tensor], **changes: torch.Tensor) -> torch.Tensor:
    args = {**io, **changes}
    with torch.no_grad():
        return unet(args["x"], args["timesteps"], args["context"], args["y"],
                    num_video_frames=int(args["num_video_frames"]),
                    image_only_indicator=args["image_only_indicator"],
                    cond_view=args["cond_view"], cond_motion=args["cond_motion"])


@pytest.mark.parametrize("name", ["unet-sv4d", "unet-sv4d2"])
def test_sv4d_unet_golden(name: str) -> None:
    unet, config, io = build(name)
    out = run(unet, io)
    ref, tol = io["output"], config["tolerance"]["output"]
    err = (out - ref).abs()
    assert bool((err <= tol["atol"] + tol["rtol"] * ref.abs()).all()), f"max abs err {err.max().item():.3g}"


def test_indicator_values_and_cond_motion_are_ignored() -> None:
    """The reference's spacetime blocks only use the indicator's shape; cond_motion is unused."""
    unet, _, io = build("unet-sv4d2")
    base = run(unet, io)
    other = run(unet, io, image_only_indicator=torch.ones_like(io["image_only_indicator"]),
                cond_motion=torch.randn_like(io["cond_motion"]))
    assert torch.equal(base, other)


def test_8view_path_differs_from_3d_attention() -> None:
    """sv4d2-8views = sv4d2 without use_3d_attention: same keys, different camera attention."""
    unet, config, io = build("unet-sv4d2")
    params = {**config["modules"][0]["params"], "use_3d_attention": False}
    flat = SV4DUNet(from_dict(SV4DUNetConfig, params, "8views")).eval()
    flat.load_state_dict(unet.state_dict(), strict=True)
    assert (run(flat, io) - io["output"]).abs().max() > 1e-3


def test_camera_emb_needs_adm_equal_to_embedding_width() -> None:
    config = json.loads((HERE / "golden" / "unet-sv4d2" / "config.json").read_text())
    with pytest.raises(PresetError, match="adm_in_channels"):
        from_dict(SV4DUNetConfig, {**config["modules"][0]["params"], "adm_in_channels": 48}, "x")


RELEASE = dict(
    in_channels=8, out_channels=4, model_channels=320, num_res_blocks=2, attention_resolutions=[4, 2, 1],
    channel_mult=[1, 2, 4, 4], num_head_channels=64, transformer_depth=1, context_dim=1024,
    num_classes="sequential", adm_in_channels=1280, use_linear_in_transformer=True, extra_ff_mix_layer=True,
    use_spatial_context=True, use_spatial_transformer=True, time_block_merge_strategy="learned_with_images",
    time_block_merge_factor=0.0, time_kernel_size=[3, 1, 1], time_mix_legacy=False, legacy=False,
    replicate_time_mix_bug=True, use_motion_attention=True, motion_context_dim=4,
    spatial_transformer_attn_type="softmax-xformers",
)
SV4D2 = dict(use_camera_emb=True, separate_motion_merge_factor=True)


@pytest.mark.parametrize("name, extra", [
    ("sv4d", {}),
    ("sv4d2", {**SV4D2, "use_3d_attention": True}),
    ("sv4d2-8views", {**SV4D2, "use_3d_attention": False}),
])
def test_release_sv4d_unet_matches_manifest(name: str, extra: dict) -> None:
    prefix = "model.diffusion_model."
    tensors = json.loads((HERE / "manifests" / f"{name}.json").read_text())["tensors"]
    expected = {k[len(prefix):]: list(v) for k, v in tensors.items() if k.startswith(prefix)}
    with torch.device("meta"):
        unet = SV4DUNet(from_dict(SV4DUNetConfig, {**RELEASE, **extra}, name))
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    assert sorted(set(ours) ^ set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}
