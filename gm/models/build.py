"""Preset -> modules: the architecture vocabulary and the engine whose keys are the checkpoint's.

Replaces the reference's `instantiate_from_config` + `target:` strings: a preset names a kind
from the small dicts below (`arch = "unet"`, `kind = "openclip_text"`), and its table is checked
against that kind's frozen config dataclass. The `Engine` module tree mirrors sgm's
`DiffusionEngine`, so its `state_dict()` keys are the released files' keys
(`model.diffusion_model.*`, `first_stage_model.*`, `conditioner.embedders.N.*`) and loading is a
strict `load_state_dict` (done by gm.loader, which also checks a file against a preset).
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any, Protocol

import torch
from torch import nn

from gm.config import from_dict
from gm.errors import PresetError


class Preset(Protocol):
    """What the builders read of a preset: its architecture tables and where they came from (for
    error messages). Any object with these attributes works; this layer reads no files."""

    source: str
    network: dict[str, Any]
    vae: dict[str, Any] | None
    conditioner: tuple[dict[str, Any], ...]


def _unet() -> tuple[type, type]:
    from gm.models.unet import UNet, UNetConfig

    return UNetConfig, UNet


def _video_unet() -> tuple[type, type]:
    from gm.models.video_unet import VideoUNet, VideoUNetConfig

    return VideoUNetConfig, VideoUNet


def _sv4d_unet() -> tuple[type, type]:
    from gm.models.sv4d_unet import SV4DUNet, SV4DUNetConfig

    return SV4DUNetConfig, SV4DUNet


def _kl() -> tuple[type, type]:
    from gm.models.vae import Autoencoder, VAEConfig

    return VAEConfig, Autoencoder


def _video_kl() -> tuple[type, type]:
    from gm.models.video_vae import VideoAutoencoder, VideoVAEConfig

    return VideoVAEConfig, VideoAutoencoder


# arch name -> (config class, module class), imported on first use.
NETWORKS: dict[str, Callable[[], tuple[type, type]]] = {
    "unet": _unet,
    "video_unet": _video_unet,
    "sv4d_unet": _sv4d_unet,
}
AUTOENCODERS: dict[str, Callable[[], tuple[type, type]]] = {"kl": _kl, "video_kl": _video_kl}


def _split_kind(table: dict[str, Any], key: str, vocabulary: dict, where: str) -> tuple[Any, dict[str, Any]]:
    if key not in table:
        raise PresetError(f"{where}: missing key '{key}' (one of {', '.join(vocabulary)})")
    kind = table[key]
    if kind not in vocabulary:
        raise PresetError(f"{where}: unknown {key} '{kind}' (one of {', '.join(vocabulary)})")
    return vocabulary[kind], {k: v for k, v in table.items() if k != key}


def network_config(preset: Preset) -> tuple[Any, type]:
    """(validated config, module class) of the preset's denoising network."""
    factory, params = _split_kind(preset.network, "arch", NETWORKS, f"{preset.source} [network]")
    config_cls, module_cls = factory()
    return from_dict(config_cls, params, f"{preset.source} [network]"), module_cls


def vae_config(preset: Preset) -> tuple[Any, type, float] | None:
    """(validated config, module class, latent scale factor) of the preset's autoencoder."""
    if preset.vae is None:
        return None
    where = f"{preset.source} [vae]"
    factory, params = _split_kind(preset.vae, "arch", AUTOENCODERS, where)
    scale = params.pop("scale_factor", None)
    if not isinstance(scale, (int, float)) or isinstance(scale, bool):
        raise PresetError(f"{where}: missing or non-numeric key 'scale_factor' (e.g. 0.13025 for SDXL)")
    config_cls, module_cls = factory()
    return from_dict(config_cls, params, where), module_cls, float(scale)


def build_network(preset: Preset) -> nn.Module:
    """The denoising network, on the current default device (use `torch.device("meta")` to skip init)."""
    config, module_cls = network_config(preset)
    return module_cls(config)


def build_vae(preset: Preset) -> nn.Module | None:
    spec = vae_config(preset)
    if spec is None:
        return None
    config, module_cls, _scale = spec
    return module_cls(config)


def build_conditioner(preset: Preset) -> nn.Module | None:
    """The ordered embedders (`conditioner.embedders.N`), or None for unconditional presets."""
    if not preset.conditioner:
        return None
    from gm.models.conditioner import build_conditioner as build

    return build(list(preset.conditioner), f"{preset.source} [[conditioner]]")


class Engine(nn.Module):
    """The whole model of a preset, laid out like sgm's DiffusionEngine (names = checkpoint keys)."""

    def __init__(self, network: nn.Module, vae: nn.Module | None, conditioner: nn.Module | None,
                 scale_factor: float = 1.0) -> None:
        super().__init__()
        self.model = nn.Module()
        self.model.diffusion_model = network
        if vae is not None:
            self.first_stage_model = vae
        if conditioner is not None:
            self.conditioner = conditioner
        self.scale_factor = scale_factor

    @property
    def network(self) -> nn.Module:
        return self.model.diffusion_model

    @property
    def vae(self) -> nn.Module | None:
        return getattr(self, "first_stage_model", None)

    @property
    def embedders(self) -> nn.Module | None:
        return getattr(self, "conditioner", None)


def build_engine(preset: Preset) -> Engine:
    spec = vae_config(preset)
    return Engine(
        build_network(preset),
        build_vae(preset),
        build_conditioner(preset),
        scale_factor=spec[2] if spec is not None else 1.0,
    )


def validate(preset: Preset) -> None:
    """Check the architecture tables of `preset` against their config classes (no modules built)."""
    network_config(preset)
    vae_config(preset)
    if preset.conditioner:
        from gm.models.conditioner import validate_conditioner

        validate_conditioner(list(preset.conditioner), f"{preset.source} [[conditioner]]")


_AUTOENCODER_KEY = re.compile(r"^(first_stage_model\.|conditioner\.embedders\.\d+\.encoder\.)")


def precision_map(dtype: torch.dtype, vae_dtype: torch.dtype) -> Callable[[str], torch.dtype]:
    """Per-tensor dtype when loading: autoencoders (the first stage and the conditioning-frame
    encoders) in `vae_dtype`, everything else (UNet, text/image encoders) in `dtype`."""

    def dtype_for(key: str) -> torch.dtype:
        return vae_dtype if _AUTOENCODER_KEY.match(key) else dtype

    return dtype_for
