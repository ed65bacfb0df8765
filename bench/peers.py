"""gm modules -> the same weights in diffusers/transformers models, through the peer's own converters.

The gm side is built at random (real init, not meta) and its `state_dict()` is prefixed the way the
released files are (`model.diffusion_model.`, `first_stage_model.`, `conditioner.embedders.0.`).
That dict goes through diffusers' single-file utilities (`create_*_diffusers_config_from_ldm`,
`convert_ldm_*_checkpoint`), exactly as `from_single_file` would convert a released checkpoint.
The peer model is built on the meta device and loaded with `assign=True`, so both models share
the very same weight storages: one copy in RAM, identical weights by construction.
"""

from __future__ import annotations

import warnings
from typing import Any

import torch
from torch import nn

from gm.models.unet import UNet, UNetConfig
from gm.models.vae import Autoencoder, VAEConfig
from gm.nn.embeddings import timestep_embedding

UNET_PREFIX = "model.diffusion_model."
VAE_PREFIX = "first_stage_model."
CLIP_PREFIX = "conditioner.embedders.0."


def released_state(module: nn.Module, prefix: str) -> dict[str, torch.Tensor]:
    """`module.state_dict()` under the prefix the released checkpoints use (tensors are shared)."""
    return {prefix + k: v for k, v in module.state_dict().items()}


def ldm_original_config(unet: UNetConfig, vae: VAEConfig) -> dict[str, Any]:
    """The slice of an sgm/LDM YAML that diffusers' `create_*_diffusers_config_from_ldm` read."""
    net: dict[str, Any] = {
        "in_channels": unet.in_channels,
        "out_channels": unet.out_channels,
        "model_channels": unet.model_channels,
        "num_res_blocks": unet.num_res_blocks,
        "attention_resolutions": list(unet.attention_resolutions),
        "channel_mult": list(unet.channel_mult),
        "num_head_channels": unet.num_head_channels,
        "transformer_depth": unet.transformer_depth,
        "context_dim": unet.context_dim,
        "use_linear_in_transformer": unet.use_linear_in_transformer,
    }
    if unet.num_heads != -1:
        net["num_heads"] = unet.num_heads
    if unet.num_classes is not None:
        net["num_classes"] = unet.num_classes
        net["adm_in_channels"] = unet.adm_in_channels
    ddconfig = {
        "ch": vae.ch,
        "ch_mult": list(vae.ch_mult),
        "num_res_blocks": vae.num_res_blocks,
        "z_channels": vae.z_channels,
        "in_channels": vae.in_channels,
        "out_ch": vae.out_ch,
    }
    return {
        "model": {
            "params": {
                "network_config": {"params": net},
                "first_stage_config": {"params": {"ddconfig": ddconfig}},
                "scale_factor": 0.13025,
            }
        }
    }


def _assign(peer: nn.Module, state: dict[str, torch.Tensor]) -> nn.Module:
    """Strictly attach `state` to a meta-built peer model; nothing may stay on meta."""
    peer.load_state_dict(state, strict=True, assign=True)
    left = [n for n, t in [*peer.named_parameters(), *peer.named_buffers()] if t.is_meta]
    if left:
        raise RuntimeError(f"peer model tensors left on meta: {left[:5]}")
    return peer.eval().requires_grad_(False)


def diffusers_unet(gm_unet: UNet, vae_cfg: VAEConfig = VAEConfig()) -> nn.Module:
    """diffusers `UNet2DConditionModel` converted from `gm_unet`'s released-layout state dict."""
    from diffusers import UNet2DConditionModel
    from diffusers.loaders import single_file_utils as sfu

    checkpoint = released_state(gm_unet, UNET_PREFIX)
    original = ldm_original_config(gm_unet.cfg, vae_cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = sfu.create_unet_diffusers_config_from_ldm(original, checkpoint, image_size=1024)
        state = sfu.convert_ldm_unet_checkpoint(checkpoint, config)
    with torch.device("meta"):
        peer = UNet2DConditionModel(**config)
    return _assign(peer, state)


def diffusers_vae(gm_vae: Autoencoder, unet_cfg: UNetConfig) -> nn.Module:
    """diffusers `AutoencoderKL` converted from `gm_vae`'s released-layout state dict."""
    from diffusers import AutoencoderKL
    from diffusers.loaders import single_file_utils as sfu

    checkpoint = released_state(gm_vae, VAE_PREFIX)
    original = ldm_original_config(unet_cfg, gm_vae.cfg)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        config = sfu.create_vae_diffusers_config_from_ldm(original, checkpoint, image_size=1024)
        state = sfu.convert_ldm_vae_checkpoint(checkpoint, config)
    with torch.device("meta"):
        peer = AutoencoderKL(**config)
    return _assign(peer, state)


def transformers_clip(gm_clip: nn.Module) -> nn.Module:
    """transformers `CLIPTextModel` with the weights of gm's CLIP-L embedder (keys via diffusers)."""
    from diffusers.loaders import single_file_utils as sfu
    from transformers import CLIPTextConfig, CLIPTextModel

    c = gm_clip.config
    config = CLIPTextConfig(
        vocab_size=c.vocab_size,
        hidden_size=c.hidden_size,
        intermediate_size=c.intermediate_size,
        num_hidden_layers=c.num_hidden_layers,
        num_attention_heads=c.num_attention_heads,
        max_position_embeddings=c.max_position_embeddings,
        layer_norm_eps=c.layer_norm_eps,
        hidden_act="quick_gelu",
    )
    state = sfu.convert_ldm_clip_checkpoint(released_state(gm_clip, CLIP_PREFIX))
    with torch.device("meta"):
        peer = CLIPTextModel(config)
    if not any(k.startswith("text_model.") for k in peer.state_dict()):
        # transformers 5 dropped the `text_model.` level that 4.x (and the released files) have.
        state = {k.removeprefix("text_model."): v for k, v in state.items()}
    for name, buf in list(peer.named_buffers()):  # the one non-persistent buffer: position ids
        if name.endswith("position_ids"):
            owner = peer.get_submodule(name.rsplit(".", 1)[0])
            owner.register_buffer("position_ids", torch.arange(buf.shape[-1])[None], persistent=False)
    return _assign(peer, state)


def sdxl_vector(pooled: torch.Tensor, time_ids: torch.Tensor) -> torch.Tensor:
    """sgm's vector y = [pooled | 256-d embedding of each of the 6 size numbers]: (B, 1280 + 1536)."""
    b = time_ids.shape[0]
    return torch.cat([pooled, timestep_embedding(time_ids.flatten(), 256).reshape(b, -1)], dim=1)


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a.float() - b.float()).abs().max())
