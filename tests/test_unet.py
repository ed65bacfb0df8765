"""Golden parity of the image UNet (unet-sdxl, unet-sd21) and config validation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gm.config import from_dict
from gm.errors import PresetError
from gm.models.unet import UNet, UNetConfig

GOLDEN = Path(__file__).parent / "golden"


def load_fixture(name: str) -> tuple[dict, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    folder = GOLDEN / name
    config = json.loads((folder / "config.json").read_text())
    return config, load_file(folder / "weights.safetensors"), load_file(folder / "io.safetensors")


def strip(weights: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    return {k[len(prefix) :]: v for k, v in weights.items() if k.startswith(prefix)}


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: dict) -> None:
    assert out.shape == ref.shape
    err = (out - ref).abs()
    bound = tol["atol"] + tol["rtol"] * ref.abs()
    assert bool((err <= bound).all()), f"max abs err {err.max().item():.3g}"


def build_unet(name: str) -> tuple[UNet, dict, dict[str, torch.Tensor]]:
    config, weights, io = load_fixture(name)
    module = config["modules"][0]
    unet = UNet(from_dict(UNetConfig, module["params"], name)).eval()
    unet.load_state_dict(strip(weights, module["prefix"]), strict=True)
    return unet, config, io


@pytest.mark.parametrize("name", ["unet-sdxl", "unet-sd21"])
def test_unet_golden(name: str) -> None:
    unet, config, io = build_unet(name)
    with torch.no_grad():
        out = unet(io["x"], io["timesteps"], context=io["context"], y=io.get("y"))
    assert_close(out, io["output"], config["tolerance"]["output"])


def test_unet_vector_conditioning_matters() -> None:
    # The fixture's random vector path is weak: y + 100 moves the output by ~1e-5, which is below
    # fp32 rounding noise after the large embedding (the GroupNorms cancel it), so compare in fp64.
    unet, _, io = build_unet("unet-sdxl")
    unet = unet.double()
    x, t, ctx, y = (io[k].double() for k in ("x", "timesteps", "context", "y"))
    with torch.no_grad():
        a = unet(x, t, context=ctx, y=y)
        b = unet(x, t, context=ctx, y=y + 100.0)
        again = unet(x, t, context=ctx, y=y)
    assert (a - again).abs().max() == 0
    assert (a - b).abs().max() > 1e-6
    with pytest.raises(ValueError):
        unet(io["x"], io["timesteps"], context=io["context"])


def test_unet_bf16_weights_run_close() -> None:
    unet, config, io = build_unet("unet-sd21")
    unet = unet.to(torch.bfloat16)
    with torch.no_grad():
        out = unet(io["x"], io["timesteps"], context=io["context"])
    assert out.dtype == torch.float32
    assert (out - io["output"]).abs().max() < 0.1


def test_training_configs_build() -> None:
    mnist = UNetConfig(
        in_channels=1, out_channels=1, model_channels=32, num_res_blocks=4, attention_resolutions=(),
        channel_mult=(1, 2, 2), num_head_channels=32,
    )
    mnist_cond = UNetConfig(
        in_channels=1, out_channels=1, model_channels=32, num_res_blocks=4, attention_resolutions=(),
        channel_mult=(1, 2, 2), num_head_channels=32, num_classes="sequential", adm_in_channels=128,
    )
    count = {}
    for name, cfg in (("mnist", mnist), ("mnist_cond", mnist_cond)):
        with torch.device("meta"):
            count[name] = sum(p.numel() for p in UNet(cfg).parameters())
    # docs/reference.md §4.3: 2.57 M and 2.60 M parameters.
    assert round(count["mnist"] / 1e6, 2) == 2.57
    assert round(count["mnist_cond"] / 1e6, 2) == 2.60
    unet = UNet(mnist_cond)
    out = unet(torch.randn(2, 1, 28, 28), torch.tensor([1.0, 2.0]), y=torch.randn(2, 128))
    assert out.shape == (2, 1, 28, 28)


@pytest.mark.parametrize(
    "params, millions",
    [
        # imagenet-f8_cond.yaml: 407.3 M
        (dict(in_channels=4, out_channels=4, model_channels=256, num_res_blocks=2,
              attention_resolutions=[1, 2, 4], channel_mult=[1, 2, 4], num_head_channels=64,
              num_classes="sequential", adm_in_channels=1024, context_dim=1024, transformer_depth=1), 407.3),
        # txt2img-clipl.yaml: 863.5 M
        (dict(in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2,
              attention_resolutions=[1, 2, 4], channel_mult=[1, 2, 4, 4], num_head_channels=64, num_heads=1,
              num_classes="sequential", adm_in_channels=1792, context_dim=768, transformer_depth=1), 863.5),
    ],
)
def test_training_recipe_param_counts(params: dict, millions: float) -> None:
    with torch.device("meta"):
        unet = UNet(from_dict(UNetConfig, params, "network"))
    assert round(sum(p.numel() for p in unet.parameters()) / 1e6, 1) == millions


def test_config_errors_name_the_key() -> None:
    with pytest.raises(PresetError, match="num_heads"):
        UNetConfig(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1, attention_resolutions=())
    with pytest.raises(PresetError, match="context_dim"):
        UNetConfig(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1, attention_resolutions=(),
                   num_head_channels=8, context_dim=(8, 16))
    with pytest.raises(PresetError, match="adm_in_channels"):
        UNetConfig(in_channels=4, out_channels=4, model_channels=32, num_res_blocks=1, attention_resolutions=(),
                   num_head_channels=8, num_classes="sequential")


MANIFESTS = Path(__file__).parent / "manifests"

RELEASE_UNETS = {
    "sdxl-base": dict(
        in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2, attention_resolutions=[4, 2],
        channel_mult=[1, 2, 4], num_head_channels=64, transformer_depth=[1, 2, 10], context_dim=2048,
        num_classes="sequential", adm_in_channels=2816, use_linear_in_transformer=True,
    ),
    "sdxl-refiner": dict(
        in_channels=4, out_channels=4, model_channels=384, num_res_blocks=2, attention_resolutions=[4, 2],
        channel_mult=[1, 2, 4, 4], num_head_channels=64, transformer_depth=4, context_dim=[1280] * 4,
        num_classes="sequential", adm_in_channels=2560, use_linear_in_transformer=True,
    ),
    "sd-2.1": dict(
        in_channels=4, out_channels=4, model_channels=320, num_res_blocks=2, attention_resolutions=[4, 2, 1],
        channel_mult=[1, 2, 4, 4], num_head_channels=64, transformer_depth=1, context_dim=1024,
        use_linear_in_transformer=True,
    ),
}


def manifest_subset(name: str, prefix: str) -> dict[str, list[int]]:
    tensors = json.loads((MANIFESTS / f"{name}.json").read_text())["tensors"]
    return {k[len(prefix) :]: list(v) for k, v in tensors.items() if k.startswith(prefix)}


@pytest.mark.parametrize("name", sorted(RELEASE_UNETS))
def test_release_unet_matches_manifest(name: str) -> None:
    with torch.device("meta"):
        unet = UNet(from_dict(UNetConfig, RELEASE_UNETS[name], name))
    ours = {k: list(v.shape) for k, v in unet.state_dict().items()}
    expected = manifest_subset(name, "model.diffusion_model.")
    assert sorted(set(ours) ^ set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}


def test_gradient_checkpointing_gives_identical_gradients() -> None:
    torch.manual_seed(0)
    params = dict(
        in_channels=1, out_channels=1, model_channels=32, num_res_blocks=1, attention_resolutions=(2,),
        channel_mult=(1, 2), num_head_channels=32, num_classes="sequential", adm_in_channels=16, context_dim=8,
    )
    plain = UNet(UNetConfig(**params)).train()
    ckpt = UNet(UNetConfig(**params, use_checkpoint=True)).train()
    ckpt.load_state_dict(plain.state_dict())
    args = (torch.randn(1, 1, 8, 8), torch.tensor([500.0]), torch.randn(1, 3, 8), torch.randn(1, 16))
    for unet in (plain, ckpt):
        unet(*args).square().mean().backward()
    for p, q in zip(plain.parameters(), ckpt.parameters()):
        assert p.grad is not None and torch.allclose(p.grad, q.grad, atol=1e-7)


@pytest.mark.parametrize("use_linear", [True, False])
@pytest.mark.parametrize("fmt", [torch.contiguous_format, torch.channels_last])
def test_spatial_transformer_keeps_the_memory_format(use_linear: bool, fmt: torch.memory_format) -> None:
    """The token view is NHWC by its strides; an NCHW network must get NCHW back (else every later
    convolution re-lays out its weights per call), an NHWC one (perf.channels_last) NHWC."""
    from gm.nn.blocks import Cond
    from gm.nn.transformer import SpatialTransformer

    block = SpatialTransformer(64, n_heads=2, d_head=32, context_dim=16, use_linear=use_linear)
    x = torch.randn(2, 64, 4, 6)
    cond = Cond(emb=torch.zeros(2, 1), context=torch.randn(2, 3, 16))
    with torch.no_grad():
        out = block(x.contiguous(memory_format=fmt), cond)
        reference = block(x, cond)
    assert out.is_contiguous(memory_format=fmt)
    torch.testing.assert_close(out, reference, rtol=1e-5, atol=1e-5)
