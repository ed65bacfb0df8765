"""Tiled VAE decode/encode on a tiny random VAE, and `--vae` overrides loaded strictly.

Tolerance: a tiled result differs from the untiled one because each tile's GroupNorms and
mid-block attention see only that tile. On this random tiny VAE (whose per-tile statistics differ
far more than a trained VAE's) the mean absolute difference is 2.4 % of the output range; the test
allows 5 %. Seams: the largest step between neighbouring pixels across any tile border must stay
within the largest step anywhere in the untiled image; pasting the same tiles without blending
breaks that bound, which shows the check can fail. With diffusers installed, diffusers'
`enable_tiling` on the same weights and tile geometry must depart from the untiled decode at least as
much as gm's tiling does (measured: mean 0.199 vs gm's 0.184).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from safetensors.torch import save_file

from gm import presets
from gm.diffusion.tiling import decode_bytes, decode_tiled, encode_tiled, should_tile, tile_starts
from gm.errors import CheckpointError
from gm.models.build import build_engine
from gm.models.vae import Autoencoder, VAEConfig
from gm.vae_file import load_vae_override
from tests.tiny import make_checkpoint

F4 = 4  # the tiny VAE's factor (ch_mult of 3 levels)


def _vae(seed: int = 0, ch: int = 32) -> Autoencoder:
    torch.manual_seed(seed)
    return Autoencoder(VAEConfig(ch=ch, ch_mult=(1, 2, 2), num_res_blocks=1)).eval().requires_grad_(False)


def _smooth_latent(h: int = 24, w: int = 40) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    return F.interpolate(torch.randn(1, 4, h // 4, w // 4, generator=g), size=(h, w), mode="bicubic")


def _max_steps(img: torch.Tensor, rows: list[int], cols: list[int]) -> tuple[float, float]:
    gy = (img[..., 1:, :] - img[..., :-1, :]).abs()
    gx = (img[..., 1:] - img[..., :-1]).abs()
    return max(float(gy[..., r - 1, :].max()) for r in rows), max(float(gx[..., c - 1].max()) for c in cols)


def test_tile_starts_cover_with_overlap() -> None:
    assert tile_starts(24, 16, 8) == [0, 8]
    assert tile_starts(16, 16, 8) == [0] and tile_starts(10, 16, 8) == [0]
    starts = tile_starts(128, 64, 16)
    assert starts[0] == 0 and starts[-1] == 64 and all(b - a <= 48 for a, b in zip(starts, starts[1:]))
    with pytest.raises(ValueError):
        tile_starts(100, 16, 16)


@torch.no_grad()
def test_one_tile_is_the_plain_decode_and_encode_bit_for_bit() -> None:
    vae = _vae()
    z = _smooth_latent(16, 16)
    assert torch.equal(decode_tiled(vae, z, tile=16, overlap=8), vae.decode(z))
    x = torch.rand(1, 3, 64, 64) * 2 - 1
    mean, logvar = encode_tiled(vae, x, tile=16, overlap=8)
    ref = vae.encode(x)
    assert torch.equal(mean, ref[0]) and torch.equal(logvar, ref[1])


@torch.no_grad()
def test_tiled_decode_is_close_and_seamless() -> None:
    vae = _vae()
    z = _smooth_latent()
    full = vae.decode(z)
    tiled = decode_tiled(vae, z, tile=16, overlap=8)
    assert tiled.shape == full.shape and tiled.dtype == full.dtype
    span = float(full.max() - full.min())
    assert float((tiled - full).abs().mean()) <= 0.05 * span
    ys, xs = tile_starts(24, 16, 8), tile_starts(40, 16, 8)
    rows = sorted({y * F4 for y in ys[1:]} | {(y + 16) * F4 for y in ys[:-1]})
    cols = sorted({x * F4 for x in xs[1:]} | {(x + 16) * F4 for x in xs[:-1]})
    own = _max_steps(full, list(range(1, full.shape[-2])), list(range(1, full.shape[-1])))
    seams = _max_steps(tiled, rows, cols)
    assert seams[0] <= own[0] and seams[1] <= own[1]
    pasted = full.clone()  # the same tiles without blending: the bound catches the seams
    for y in ys:
        for x in xs:
            pasted[..., y * F4:(y + 16) * F4, x * F4:(x + 16) * F4] = vae.decode(z[..., y:y + 16, x:x + 16])
    naive = _max_steps(pasted, [y * F4 for y in ys[1:]], [x * F4 for x in xs[1:]])
    assert naive[0] > own[0] or naive[1] > own[1]


@torch.no_grad()
def test_tiled_encode_is_close() -> None:
    vae = _vae()
    x = vae.decode(_smooth_latent()).clamp(-1, 1)
    mean, logvar = vae.encode(x)
    tmean, tlogvar = encode_tiled(vae, x, tile=16, overlap=8)
    assert tmean.shape == mean.shape and tlogvar.shape == logvar.shape
    assert float((tmean - mean).abs().mean()) <= 0.05 * float(mean.max() - mean.min())


def test_memory_estimate_and_auto_mode() -> None:
    assert decode_bytes(1024, 1024) == 2 * decode_bytes(1024, 512)
    assert decode_bytes(1024, 1024, torch.float16) == decode_bytes(1024, 1024) // 2
    big = decode_bytes(2048, 2048)
    assert should_tile("auto", 2048, 2048, torch.float32, free=big // 2)
    assert not should_tile("auto", 2048, 2048, torch.float32, free=big * 2)
    assert not should_tile("auto", 2048, 2048, torch.float32, free=None)
    assert should_tile("auto", 2048, 2048, torch.float32, free=None, budget=big // 2)
    assert should_tile("auto", 2048, 2048, torch.float32, free=big * 2, budget=big // 2)
    assert not should_tile("auto", 1024, 1024, torch.float32, free=big * 2, budget=big)
    assert should_tile("on", 64, 64, torch.float32, None) and not should_tile("off", 4096, 4096, torch.float32, 1)


def _tiny_engine_vae():
    torch.manual_seed(0)
    return build_engine(presets.load(str(Path(__file__).parent / "presets" / "tiny-sdxl-base.toml"))).first_stage_model


@torch.no_grad()
def test_vae_override_single_file_and_checkpoint_layouts(tmp_path: Path) -> None:
    vae = _tiny_engine_vae().eval()
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(2))
    before = vae.decode(z)
    torch.manual_seed(5)
    other = type(vae)(vae.cfg).eval()
    save_file({k: v.contiguous() for k, v in other.state_dict().items()}, str(tmp_path / "my_vae.safetensors"))
    assert load_vae_override(tmp_path / "my_vae.safetensors", vae, "cpu", torch.float32) == "single-file"
    after = vae.decode(z)
    assert not torch.allclose(after, before) and torch.equal(after, other.decode(z))
    preset = presets.load(str(Path(__file__).parent / "presets" / "tiny-sdxl-base.toml"))
    ckpt = make_checkpoint(preset, tmp_path / "ck", seed=7)
    assert load_vae_override(ckpt, vae, "cpu", torch.float16) == "checkpoint"
    assert vae.dtype == torch.float16 and not torch.allclose(vae.decode(z).float(), after, atol=1e-2)


def test_vae_override_refuses_wrong_files(tmp_path: Path) -> None:
    vae = _tiny_engine_vae()
    wrong = _vae(ch=64)
    save_file({k: v.contiguous() for k, v in wrong.state_dict().items()}, str(tmp_path / "big.safetensors"))
    with pytest.raises(CheckpointError) as err:
        load_vae_override(tmp_path / "big.safetensors", vae)
    assert "VAE big.safetensors (single-file layout) does not match" in str(err.value)
    assert "missing: decoder.up.3" in str(err.value) and "wrong shape" in str(err.value) and "\n" not in str(err.value)
    save_file({"lora_unet_x.lora_down.weight": torch.zeros(2, 2)}, str(tmp_path / "lora.safetensors"))
    with pytest.raises(CheckpointError, match="a LoRA goes to --lora"):
        load_vae_override(tmp_path / "lora.safetensors", vae)
    torch.save({}, tmp_path / "vae.pt")
    with pytest.raises(CheckpointError, match="pickle file"):
        load_vae_override(tmp_path / "vae.pt", vae)
    with pytest.raises(CheckpointError, match="VAE file not found"):
        load_vae_override(tmp_path / "none.safetensors", vae)


@torch.no_grad()
def test_tiled_decode_error_no_larger_than_diffusers_tiling() -> None:
    """diffusers' `enable_tiling` on the same weights and tile geometry (16-latent tiles, a quarter
    overlapping) departs from the untiled decode at least as much as gm's tiling."""
    pytest.importorskip("diffusers")
    from bench import peers
    from gm.models.unet import UNetConfig

    vae = _vae()
    unet_cfg = UNetConfig(in_channels=4, out_channels=4, model_channels=64, num_res_blocks=1,
                          attention_resolutions=(2,), channel_mult=(1, 2), num_head_channels=32, context_dim=48)
    peer = peers.diffusers_vae(vae, unet_cfg)
    peer.enable_tiling()
    peer.tile_sample_min_size, peer.tile_latent_min_size = 16 * F4, 16
    z = _smooth_latent()
    full = vae.decode(z)
    ours = float((decode_tiled(vae, z, tile=16, overlap=4) - full).abs().mean())
    theirs = float((peer.decode(z).sample - full).abs().mean())
    assert ours <= theirs
