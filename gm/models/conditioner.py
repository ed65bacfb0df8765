"""The conditioner: runs the embedders in order and concatenates their outputs per destination
(sgm `GeneralConditioner`, `modules/encoders/modules.py`).

Unlike sgm, nothing is routed by tensor rank: every embedder config says where each output goes
(`output`, plus `pooled_output` / `sigma_output` for the second tensor of the text towers and the
SV4D frame encoder). Outputs with the same destination are concatenated in embedder order:
vector on dim 1, crossattn on dim 2 (features), concat / cond_view / cond_motion on dim 1
(channels).

Unconditional branch (docs/reference.md §3.3): `get_conditioning(batch_uc, force_zero=...)` replaces every
output of the embedders whose `input` is listed by zeros (SDXL base: {"txt"}, both towers and the
pooled vector; video models: the image inputs). `uc_zero_inputs` collects the inputs whose config
says `zero_in_uc = true`.

Training dropout (docs/reference.md §4.2), only when a `ucg_generator` is passed: with `legacy_ucg_value`
the raw input of each sample is replaced by that value with probability `ucg_rate`; otherwise each
output tensor is multiplied by its own per-sample Bernoulli(1 - ucg_rate) mask, as sgm does. Both
draw from the given (seeded) generator, unlike sgm's unseeded NumPy RNG.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from gm.config import from_dict
from gm.errors import PresetError
from gm.models.clip_text import CLIPTextConfig, CLIPTextEmbedder
from gm.models.embedders import (
    ClassConfig,
    ClassEmbedder,
    ScalarConfig,
    ScalarEmbedder,
    VAEEncoderConfig,
    VAEEncoderEmbedder,
)
from gm.models.openclip import (
    OpenCLIPImageConfig,
    OpenCLIPImageEmbedder,
    OpenCLIPTextConfig,
    OpenCLIPTextEmbedder,
)

EmbedderConfig = (
    CLIPTextConfig | OpenCLIPTextConfig | OpenCLIPImageConfig | ScalarConfig | VAEEncoderConfig | ClassConfig
)

# `[[conditioner]] kind = "<key>"` -> (config class, module class). The other keys of the table are
# the config's fields.
EMBEDDERS: dict[str, tuple[type, type[nn.Module]]] = {
    "clip_l_text": (CLIPTextConfig, CLIPTextEmbedder),
    "openclip_text": (OpenCLIPTextConfig, OpenCLIPTextEmbedder),
    "openclip_image": (OpenCLIPImageConfig, OpenCLIPImageEmbedder),
    "scalar": (ScalarConfig, ScalarEmbedder),
    "vae_encoder": (VAEEncoderConfig, VAEEncoderEmbedder),
    "class": (ClassConfig, ClassEmbedder),
}

# Destination -> concatenation dim.
CAT_DIMS = {"vector": 1, "crossattn": 2, "concat": 1, "cond_view": 1, "cond_motion": 1}


def build_embedder(config: EmbedderConfig) -> nn.Module:
    """The module for one embedder config (looked up by config class in EMBEDDERS)."""
    for config_cls, module_cls in EMBEDDERS.values():
        if type(config) is config_cls:
            return module_cls(config)
    raise TypeError(f"not an embedder config: {type(config).__name__}")


def embedder_configs(tables: Sequence[Mapping[str, Any]], where: str) -> list[EmbedderConfig]:
    """Preset `[[conditioner]]` tables (`kind` + the config's fields) -> validated configs."""
    configs = []
    for i, table in enumerate(tables):
        here = f"{where} #{i}"
        kind = table.get("kind")
        if kind not in EMBEDDERS:
            raise PresetError(f"{here}: unknown or missing kind {kind!r} (one of {', '.join(EMBEDDERS)})")
        config_cls = EMBEDDERS[kind][0]
        configs.append(from_dict(config_cls, {k: v for k, v in table.items() if k != "kind"}, here))
    return configs


def validate_conditioner(tables: Sequence[Mapping[str, Any]], where: str) -> None:
    """Check preset tables without building modules (kinds, fields, output names)."""
    for i, cfg in enumerate(embedder_configs(tables, where)):
        for name in ("output", "pooled_output", "sigma_output"):
            dest = getattr(cfg, name, None)
            if dest is not None and dest not in CAT_DIMS:
                raise PresetError(f"{where} #{i}: {name} '{dest}' is not one of {', '.join(CAT_DIMS)}")


def build_conditioner(tables: Sequence[Mapping[str, Any]], where: str) -> Conditioner:
    """The Conditioner of a preset's `[[conditioner]]` tables (on the current default device)."""
    validate_conditioner(tables, where)
    return Conditioner(embedder_configs(tables, where))


def _replace_rows(value: Any, rows: torch.Tensor, new: str | float) -> Any:
    """Copy of a batch entry (list of prompts or tensor) with the selected samples set to `new`."""
    if isinstance(value, torch.Tensor):
        value = value.clone()
        value[rows.to(value.device)] = new
        return value
    return [new if drop else v for v, drop in zip(value, rows.tolist())]


class Conditioner(nn.Module):
    """`embedders.N` in config order; keys are `conditioner.embedders.N.*` in the checkpoints."""

    def __init__(self, configs: Sequence[EmbedderConfig]) -> None:
        super().__init__()
        self.embedders = nn.ModuleList(build_embedder(c) for c in configs)
        for i, emb in enumerate(self.embedders):
            for out in emb.outputs():
                if out not in CAT_DIMS:
                    valid = ", ".join(CAT_DIMS)
                    raise PresetError(f"conditioner {i} ({emb.config.input}): unknown output '{out}' (valid: {valid})")

    @property
    def uc_zero_inputs(self) -> frozenset[str]:
        """Inputs whose embeddings the unconditional branch replaces by zeros."""
        return frozenset(e.config.input for e in self.embedders if e.config.zero_in_uc)

    @property
    def input_keys(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(e.config.input for e in self.embedders))

    def dropped_tokens(self, prompts: Sequence[str]) -> int:
        """Most BPE tokens any text embedder cuts from any of `prompts` (0 = nothing truncated)."""
        counts = [max(e.tokenize(prompts).dropped, default=0) for e in self.embedders if hasattr(e, "tokenize")]
        return max(counts, default=0)

    def get_conditioning(
        self,
        batch: Mapping[str, Any],
        force_zero: Collection[str] = (),
        generator: torch.Generator | None = None,
        ucg_generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        """batch[input] per embedder -> {"crossattn": (B, L, C), "vector": (B, V), "concat": ...}.

        `generator` feeds the noise of noisy embedders (SV4D's 1e-5 frame noise); `ucg_generator`
        turns on training dropout.
        """
        out: dict[str, torch.Tensor] = {}
        for i, emb in enumerate(self.embedders):
            cfg = emb.config
            if cfg.input not in batch:
                raise KeyError(f"conditioner {i} needs batch['{cfg.input}'] (batch has {sorted(batch)})")
            value = batch[cfg.input]
            dropout = ucg_generator is not None and cfg.ucg_rate > 0.0
            if dropout and cfg.legacy_ucg_value is not None:
                rows = torch.rand(len(value), generator=ucg_generator, device=ucg_generator.device) < cfg.ucg_rate
                value = _replace_rows(value, rows, cfg.legacy_ucg_value)
            with torch.set_grad_enabled(cfg.is_trainable and torch.is_grad_enabled()):
                tensors = emb(value, generator)
            for dest, t in zip(emb.outputs(), tensors):
                if dropout and cfg.legacy_ucg_value is None:
                    keep = torch.bernoulli(
                        torch.full((t.shape[0],), 1.0 - cfg.ucg_rate, device=ucg_generator.device),
                        generator=ucg_generator,
                    )
                    t = t * keep.to(t.device, t.dtype).view(-1, *([1] * (t.ndim - 1)))
                if cfg.input in force_zero:
                    t = torch.zeros_like(t)
                out[dest] = t if dest not in out else torch.cat((out[dest], t), dim=CAT_DIMS[dest])
        return out

    def with_uncond(
        self,
        batch: Mapping[str, Any],
        uc_zero: Collection[str],
        force_zero: Collection[str] = (),
        generator: torch.Generator | None = None,
    ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """(c, uc) of ONE batch, where uc zeroes the outputs of the `uc_zero` inputs (and both zero
        `force_zero`): what `get_conditioning(batch)` and `get_conditioning(batch, force_zero=uc_zero)`
        give, without running the zeroed embedders (the video models' CLIP tower and VAE encoders) a
        second time. Deterministic outputs are shared; a noisy embedder (noise_sigma) that uc keeps
        runs again with fresh noise, as sgm's second conditioner call does."""
        c: dict[str, torch.Tensor] = {}
        uc: dict[str, torch.Tensor] = {}
        for i, emb in enumerate(self.embedders):
            cfg = emb.config
            if cfg.input not in batch:
                raise KeyError(f"conditioner {i} needs batch['{cfg.input}'] (batch has {sorted(batch)})")
            with torch.inference_mode():
                tensors = emb(batch[cfg.input], generator)
                if cfg.input in force_zero:
                    tensors = [torch.zeros_like(t) for t in tensors]
                if cfg.input in uc_zero or cfg.input in force_zero:
                    uc_tensors = [torch.zeros_like(t) for t in tensors]
                elif getattr(cfg, "noise_sigma", None) is not None:
                    uc_tensors = emb(batch[cfg.input], generator)
                else:
                    uc_tensors = tensors
            for out, values in ((c, tensors), (uc, uc_tensors)):
                for dest, t in zip(emb.outputs(), values):
                    out[dest] = t if dest not in out else torch.cat((out[dest], t), dim=CAT_DIMS[dest])
        return c, uc

    def forward(
        self,
        batch: Mapping[str, Any],
        force_zero: Collection[str] = (),
        generator: torch.Generator | None = None,
        ucg_generator: torch.Generator | None = None,
    ) -> dict[str, torch.Tensor]:
        return self.get_conditioning(batch, force_zero, generator, ucg_generator)
