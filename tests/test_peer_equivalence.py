"""gm vs diffusers/transformers on tiny random weights converted by diffusers' own single-file code.

The same conversion as `make bench` (bench/peers.py) on tiny configurations: an SDXL-style UNet
(vector conditioning through diffusers' text_time embedding), an SD 2.x-style UNet, the KL VAE
decoder and the CLIP text encoder must give the same outputs. Skipped without the bench extra.
"""

from __future__ import annotations

import pytest
import torch

pytest.importorskip("diffusers")
pytest.importorskip("transformers")

from bench import peers  # noqa: E402
from gm.models.clip_text import CLIPTextConfig, CLIPTextEmbedder  # noqa: E402
from gm.models.unet import UNet, UNetConfig  # noqa: E402
from gm.models.vae import Autoencoder, VAEConfig  # noqa: E402

TOL = 1e-4  # relative to the largest output value, fp32


def _close(a: torch.Tensor, b: torch.Tensor) -> None:
    assert a.shape == b.shape
    assert peers.max_abs_diff(a, b) <= TOL * float(a.abs().max())


def _unet(**changes) -> UNet:
    base = dict(in_channels=4, out_channels=4, model_channels=64, num_res_blocks=1, attention_resolutions=(2,),
                channel_mult=(1, 2), num_head_channels=32, transformer_depth=1, context_dim=48,
                use_linear_in_transformer=True)
    torch.manual_seed(0)
    return UNet(UNetConfig(**{**base, **changes})).eval()


@torch.inference_mode()
def test_sdxl_style_unet_matches_diffusers() -> None:
    # context 1280 makes diffusers pick SDXL's text_time vector path (addition_embed_type).
    unet = _unet(context_dim=1280, transformer_depth=(1, 2), num_classes="sequential", adm_in_channels=32 + 6 * 256)
    peer = peers.diffusers_unet(unet)
    g = torch.Generator().manual_seed(1)
    x, ctx = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 1280, generator=g)
    t, pooled = torch.tensor([10.0, 700.0]), torch.randn(2, 32, generator=g)
    time_ids = torch.tensor([[128.0, 128.0, 0.0, 16.0, 128.0, 128.0]] * 2)
    ours = unet(x, t, ctx, peers.sdxl_vector(pooled, time_ids))
    theirs = peer(x, t, encoder_hidden_states=ctx,
                  added_cond_kwargs={"text_embeds": pooled, "time_ids": time_ids}).sample
    _close(ours, theirs)


@torch.inference_mode()
def test_sd2_style_unet_matches_diffusers() -> None:
    unet = _unet(attention_resolutions=(1, 2))
    peer = peers.diffusers_unet(unet)
    g = torch.Generator().manual_seed(2)
    x, ctx, t = torch.randn(2, 4, 16, 16, generator=g), torch.randn(2, 7, 48, generator=g), torch.tensor([1.0, 999.0])
    _close(unet(x, t, ctx), peer(x, t, encoder_hidden_states=ctx).sample)


@torch.inference_mode()
def test_vae_decode_matches_diffusers() -> None:
    torch.manual_seed(3)
    vae = Autoencoder(VAEConfig(ch=32, ch_mult=(1, 2), num_res_blocks=1)).eval()
    peer = peers.diffusers_vae(vae, _unet().cfg)
    z = torch.randn(1, 4, 8, 8, generator=torch.Generator().manual_seed(4))
    _close(vae.decode(z), peer.decode(z).sample)


@torch.inference_mode()
def test_clip_text_matches_transformers() -> None:
    torch.manual_seed(5)
    cfg = CLIPTextConfig(hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
                         layer_idx=2)
    clip = CLIPTextEmbedder(cfg).eval()
    peer = peers.transformers_clip(clip)
    ids = torch.randint(1, 49407, (2, 77), generator=torch.Generator().manual_seed(6))
    ids[:, 0], ids[:, 20:] = 49406, 49407
    _close(clip(ids)[0], peer(input_ids=ids, output_hidden_states=True).hidden_states[2])


@torch.inference_mode()
def test_conversion_catches_a_changed_weight() -> None:
    """The check has teeth: perturbing one gm tensor after conversion changes the peer too (shared
    storage), perturbing a cloned peer does not."""
    unet = _unet(attention_resolutions=(1, 2))
    peer = peers.diffusers_unet(unet)
    assert unet.out[2].weight.data_ptr() == peer.conv_out.weight.data_ptr()
    x, ctx, t = torch.randn(1, 4, 8, 8), torch.randn(1, 7, 48), torch.tensor([500.0])
    before = peer(x, t, encoder_hidden_states=ctx).sample.clone()
    peer.conv_out.bias = torch.nn.Parameter(peer.conv_out.bias + 1.0)
    assert peers.max_abs_diff(unet(x, t, ctx), peer(x, t, encoder_hidden_states=ctx).sample) > 0.5
    assert peers.max_abs_diff(before, unet(x, t, ctx)) <= TOL * float(before.abs().max())
