"""Golden parity of the KL autoencoder (vae fixture) and the release first-stage manifests."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from gm.config import from_dict
from gm.models.vae import Autoencoder, VAEConfig, sample_posterior

HERE = Path(__file__).parent


def assert_close(out: torch.Tensor, ref: torch.Tensor, tol: dict) -> None:
    assert out.shape == ref.shape
    err = (out - ref).abs()
    assert bool((err <= tol["atol"] + tol["rtol"] * ref.abs()).all()), f"max abs err {err.max().item():.3g}"


def vae_config(params: dict) -> VAEConfig:
    """AutoencoderKL(embed_dim, ddconfig) params -> VAEConfig."""
    return from_dict(VAEConfig, {**params["ddconfig"], "embed_dim": params["embed_dim"]}, "vae")


@pytest.fixture(scope="module")
def golden() -> tuple[Autoencoder, dict, dict[str, torch.Tensor]]:
    folder = HERE / "golden" / "vae"
    config = json.loads((folder / "config.json").read_text())
    module = config["modules"][0]
    vae = Autoencoder(vae_config(module["params"])).eval()
    prefix = module["prefix"]
    weights = load_file(folder / "weights.safetensors")
    vae.load_state_dict({k[len(prefix) :]: v for k, v in weights.items()}, strict=True)
    return vae, config, load_file(folder / "io.safetensors")


def test_encode_golden(golden: tuple) -> None:
    vae, config, io = golden
    tol = config["tolerance"]
    with torch.no_grad():
        moments = vae.encode_moments(io["x"])
        mean, logvar = vae.encode(io["x"])
        mode = vae.encode_mode(io["x"])
    assert_close(moments, io["moments"], tol["moments"])
    assert_close(mean, io["mean"], tol["mean"])
    assert_close(logvar, io["logvar"], tol["logvar"])
    assert torch.equal(mode, mean)
    noise = torch.randn_like(mean)
    assert torch.allclose(sample_posterior(mean, logvar, noise), mean + (0.5 * logvar).exp() * noise)


def test_decode_golden(golden: tuple) -> None:
    vae, config, io = golden
    with torch.no_grad():
        decoded = vae.decode(io["z"])
    assert_close(decoded, io["decoded"], config["tolerance"]["decoded"])


def test_decode_bf16_weights_close(golden: tuple) -> None:
    vae, _, io = golden
    low = Autoencoder(vae.cfg).to(torch.bfloat16)
    low.load_state_dict(vae.state_dict())
    with torch.no_grad():
        decoded = low.decode(io["z"])
    assert decoded.dtype == torch.float32
    assert (decoded - io["decoded"]).abs().max() < 0.1


RELEASE_DD = dict(ch=128, ch_mult=[1, 2, 4, 4], num_res_blocks=2, z_channels=4, double_z=True)


@pytest.mark.parametrize(
    "manifest, extra",
    [
        ("sdxl-base", {}),  # legacy AutoencoderKL with quant convs
        ("sd-2.1", {}),
        ("sv3d-u", {"parts": "decoder", "quant_conv": False}),  # Identity encoder + image Decoder
        ("sv4d", {"parts": "decoder", "quant_conv": False}),
        ("svd-image-decoder", {}),
    ],
)
def test_release_first_stage_matches_manifest(manifest: str, extra: dict) -> None:
    with torch.device("meta"):
        vae = Autoencoder(from_dict(VAEConfig, {**RELEASE_DD, **extra}, manifest))
    tensors = json.loads((HERE / "manifests" / f"{manifest}.json").read_text())["tensors"]
    prefix = "first_stage_model."
    expected = {k[len(prefix) :]: list(v) for k, v in tensors.items() if k.startswith(prefix)}
    ours = {k: list(v.shape) for k, v in vae.state_dict().items()}
    assert sorted(set(ours) ^ set(expected)) == []
    assert {k: v for k, v in ours.items() if expected[k] != v} == {}


def test_conditioner_encoder_copy_matches_manifest() -> None:
    """The video conditioners hold a full legacy autoencoder (decoder included) per embedder."""
    with torch.device("meta"):
        vae = Autoencoder(from_dict(VAEConfig, RELEASE_DD, "cond_frames"))
    tensors = json.loads((HERE / "manifests" / "svd.json").read_text())["tensors"]
    prefix = "conditioner.embedders.3.encoder."
    expected = {k[len(prefix) :]: list(v) for k, v in tensors.items() if k.startswith(prefix)}
    assert {k: list(v.shape) for k, v in vae.state_dict().items()} == expected


@pytest.mark.parametrize(
    "params, enc_m, dec_m",
    [
        # autoencoder/kl-f4/imagenet-attnfree-logvar.yaml: encoder 33.7 M, decoder 44.3 M
        (dict(ch_mult=[1, 2, 4], num_res_blocks=4, attn_type="none", quant_conv=False), 33.7, 44.3),
        # autoencoder/kl-f4/imagenet-kl_f8_8chn.yaml: encoder 34.2 M, decoder 49.5 M
        (dict(z_channels=8, quant_conv=False), 34.2, 49.5),
    ],
)
def test_training_autoencoder_param_counts(params: dict, enc_m: float, dec_m: float) -> None:
    with torch.device("meta"):
        vae = Autoencoder(from_dict(VAEConfig, params, "autoencoder"))
    assert round(sum(p.numel() for p in vae.encoder.parameters()) / 1e6, 1) == enc_m
    assert round(sum(p.numel() for p in vae.decoder.parameters()) / 1e6, 1) == dec_m
