"""The side-by-side cases: full-size gm modules of the release presets and their diffusers twins.

Each case builds the real channel/depth configuration (from presets/*.toml) with random weights,
the peer from the same tensors (bench/peers.py), and two closures that run one call on identical
inputs. Spatial sizes come from `Sizes`: small on the CPU, the release resolutions on a GPU.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

from bench import peers
from bench.weights import random_module
from gm import presets
from gm.models.build import network_config, vae_config

SVD_NO_PEER = (
    "diffusers {v} ships no sgm->diffusers converter for UNetSpatioTemporalConditionModel / "
    "AutoencoderKLTemporalDecoder (single_file_utils has none; from_single_file does not list them)"
)


@dataclass(frozen=True)
class Sizes:
    image_latent: int  # SDXL/SD 2.1 UNet latent side (image side / 8)
    vae_latent: int  # VAE decode latent side
    video_latent: tuple[int, int]  # SVD UNet latent (h, w)
    decode_latent: tuple[int, int]  # SVD temporal decode latent (h, w)
    frames: int  # SVD frames (UNet and temporal decode)


# CPU: 128^2 images, 4 frames at 128^2 (UNet) / 64x128 (decode) keep `make bench` near 10 minutes
# on 2 cores; channels and depths are always the released ones.
CPU_SIZES = Sizes(image_latent=16, vae_latent=16, video_latent=(16, 16), decode_latent=(8, 16), frames=4)
GPU_SIZES = Sizes(image_latent=128, vae_latent=128, video_latent=(72, 128), decode_latent=(72, 128), frames=14)


@dataclass
class Prepared:
    """One case ready to run: closures returning the output tensor, and what was built."""

    gm: Callable[[], torch.Tensor]
    peer: Callable[[], torch.Tensor] | None
    shape: str
    params: int
    skip_reason: str = ""
    modules: tuple[nn.Module, ...] = ()


def _count(module: nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())


def _network(name: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    cfg, cls = network_config(presets.load(name))
    return random_module(lambda: cls(cfg)).to(device, dtype)


def _vae(name: str, dtype: torch.dtype, device: torch.device) -> nn.Module:
    spec = vae_config(presets.load(name))
    assert spec is not None
    cfg, cls, _scale = spec
    return random_module(lambda: cls(cfg)).to(device, dtype)


def sdxl_unet(s: Sizes, dtype: torch.dtype, device: torch.device) -> Prepared:
    unet = _network("sdxl-base-1.0", dtype, device)
    peer = peers.diffusers_unet(unet)
    g = torch.Generator().manual_seed(1)
    h = s.image_latent
    x = torch.randn(2, 4, h, h, generator=g).to(device, dtype)  # CFG: cond + uncond
    t = torch.tensor([999.0, 999.0], device=device)
    ctx = torch.randn(2, 77, 2048, generator=g).to(device, dtype)
    pooled = torch.randn(2, 1280, generator=g).to(device, dtype)
    side = float(8 * h)
    time_ids = torch.tensor([[side, side, 0.0, 0.0, side, side]] * 2, device=device)
    y = peers.sdxl_vector(pooled.float(), time_ids).to(dtype)
    return Prepared(
        gm=lambda: unet(x, t, ctx, y),
        peer=lambda: peer(x, t, encoder_hidden_states=ctx,
                          added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids.to(dtype)}).sample,
        shape=f"2x4x{h}x{h} (CFG), ctx 77x2048", params=_count(unet), modules=(unet, peer),
    )


def sd21_unet(s: Sizes, dtype: torch.dtype, device: torch.device) -> Prepared:
    unet = _network("sd-2.1", dtype, device)
    peer = peers.diffusers_unet(unet)
    g = torch.Generator().manual_seed(2)
    h = s.image_latent
    x = torch.randn(2, 4, h, h, generator=g).to(device, dtype)
    t = torch.tensor([999.0, 999.0], device=device)
    ctx = torch.randn(2, 77, 1024, generator=g).to(device, dtype)
    return Prepared(
        gm=lambda: unet(x, t, ctx),
        peer=lambda: peer(x, t, encoder_hidden_states=ctx).sample,
        shape=f"2x4x{h}x{h} (CFG), ctx 77x1024", params=_count(unet), modules=(unet, peer),
    )


def sdxl_vae_decode(s: Sizes, dtype: torch.dtype, device: torch.device) -> Prepared:
    vae = _vae("sdxl-base-1.0", dtype, device)
    cfg, _cls = network_config(presets.load("sdxl-base-1.0"))
    peer = peers.diffusers_vae(vae, cfg)
    h = s.vae_latent
    z = torch.randn(1, 4, h, h, generator=torch.Generator().manual_seed(3)).to(device, dtype)
    return Prepared(
        gm=lambda: vae.decode(z), peer=lambda: peer.decode(z).sample,
        shape=f"1x4x{h}x{h} -> {8 * h}^2", params=_count(vae.decoder), modules=(vae, peer),
    )


def svd_unet(s: Sizes, dtype: torch.dtype, device: torch.device) -> Prepared:
    import diffusers

    unet = _network("svd", dtype, device)
    g = torch.Generator().manual_seed(4)
    (h, w), n = s.video_latent, 2 * s.frames  # CFG doubles the clip
    x = torch.randn(n, 8, h, w, generator=g).to(device, dtype)
    t = torch.full((n,), 0.25 * 3.0, device=device)  # c_noise = 0.25 ln(sigma)
    ctx = torch.randn(n, 1, 1024, generator=g).to(device, dtype)
    y = torch.randn(n, 768, generator=g).to(device, dtype)
    return Prepared(
        gm=lambda: unet(x, t, ctx, y, num_video_frames=s.frames), peer=None,
        shape=f"2x{s.frames} frames x8x{h}x{w} (CFG)", params=_count(unet), modules=(unet,),
        skip_reason=SVD_NO_PEER.format(v=diffusers.__version__),
    )


def svd_temporal_decode(s: Sizes, dtype: torch.dtype, device: torch.device) -> Prepared:
    import diffusers

    vae = _vae("svd", dtype, device)
    (h, w), n = s.decode_latent, s.frames
    z = torch.randn(n, 4, h, w, generator=torch.Generator().manual_seed(5)).to(device, dtype)
    return Prepared(
        gm=lambda: vae.decode(z, n), peer=None,
        shape=f"{n} frames x4x{h}x{w} -> {8 * h}x{8 * w}", params=_count(vae.decoder), modules=(vae,),
        skip_reason=SVD_NO_PEER.format(v=diffusers.__version__),
    )


def clip_l_text(s: Sizes, dtype: torch.dtype, device: torch.device) -> Prepared:
    from gm.models.clip_text import CLIPTextConfig, CLIPTextEmbedder

    clip = random_module(lambda: CLIPTextEmbedder(CLIPTextConfig())).to(device, dtype)
    peer = peers.transformers_clip(clip).to(device, dtype)
    ids = torch.randint(1, 49407, (2, 77), generator=torch.Generator().manual_seed(6)).to(device)
    ids[:, 0], ids[:, -1] = 49406, 49407
    return Prepared(
        gm=lambda: clip(ids)[0],
        peer=lambda: peer(input_ids=ids, output_hidden_states=True).hidden_states[11],
        shape="2x77 tokens -> hidden_states[11]", params=_count(clip), modules=(clip, peer),
    )


CASES: dict[str, Callable[[Sizes, torch.dtype, torch.device], Prepared]] = {
    "sdxl-unet-step": sdxl_unet,
    "sdxl-vae-decode": sdxl_vae_decode,
    "sd21-unet-step": sd21_unet,
    "svd-unet-step": svd_unet,
    "svd-temporal-decode": svd_temporal_decode,
    "clip-l-text": clip_l_text,
}
