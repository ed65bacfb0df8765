"""Merging LoRAs into the loaded weights: W' = W + scale * alpha / rank * (up @ down), in fp32,
cast back to the weight's dtype, in place, once at load (no per-step cost).

Everything is checked before the first weight changes: every LoRA module must name a weight of this
model with the matching shape, else one error names the module (or, when the LoRA evidently belongs
to another model family, that family). A failed check therefore leaves the model untouched.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from gm.errors import CheckpointError
from gm.lora.files import LoraFile, LoraModule
from gm.lora.names import UNET, Target, lookup_table

# Cross-attention context width -> the family whose UNet has it (the released models).
FAMILIES = {768: "SD 1.x", 1024: "SD 2.x", 2048: "SDXL base (or Turbo)", 1280: "SDXL refiner"}
_CROSS_K = ("attn2_to_k", "attn2.to_k", "attn2_to_v", "attn2.to_v")
_SHOW = 3


@dataclass(frozen=True)
class Step:
    """One planned update: which weight, by which LoRA module, at which scale."""

    target: Target
    module: LoraModule
    scale: float
    name: str  # LoRA module name, for messages
    index: int  # which LoRA of the list


@dataclass(frozen=True)
class Applied:
    """What `apply_loras` did for one LoRA (for logs and metadata)."""

    name: str
    path: str
    scale: float
    modules: int
    seconds: float


def _delta_shape(module: LoraModule) -> tuple[int, ...]:
    return (module.up.shape[0], *module.down.shape[1:])


def _fits(delta: tuple[int, ...], target: tuple[int, ...]) -> bool:
    """A linear LoRA may adapt a 1x1 convolution and vice versa (SD 2.x proj_in/proj_out)."""
    squeeze = lambda s: tuple(s[:2]) if all(d == 1 for d in s[2:]) else tuple(s)  # noqa: E731
    return squeeze(delta) == squeeze(target)


def _target_shape(target: Target, shapes: Mapping[str, tuple[int, ...]]) -> tuple[int, ...]:
    shape = tuple(shapes[target.key])
    if target.rows is not None:
        shape = (target.rows[1] - target.rows[0], *shape[1:])
    return shape[::-1] if target.transpose else shape


def lora_signature(lora: LoraFile) -> tuple[int | None, set[str]]:
    """(cross-attention context width, text-encoder roles) the LoRA was trained for."""
    width = next((m.down.shape[1] for n, m in lora.modules.items() if any(c in n for c in _CROSS_K)), None)
    roles = set()
    for name in lora.modules:
        for prefix, role in (("lora_te1_", "te1"), ("lora_te2_", "te2"), ("lora_te_", "te"),
                             ("text_encoder_2.", "te2"), ("text_encoder.", "te|te1")):
            if name.startswith(prefix):
                roles.add(role)
                break
    return width, roles


def _family(width: int | None, roles: set[str]) -> str:
    if width in FAMILIES and not (width == 768 and "te2" in roles):
        return f"{FAMILIES[width]} (cross-attention width {width})"
    if "te2" in roles or "te1" in roles:
        return "an SDXL-style model (two text encoders)"
    if width:
        return f"a model with cross-attention width {width}"
    return "an SD 1.x/2.x-style model (one text encoder)" if "te" in roles else "another model"


def _wrong_family(lora: LoraFile, label: str, width: int | None, roles: set[str]) -> CheckpointError | None:
    lora_width, lora_roles = lora_signature(lora)
    te_ok = all(any(r in roles for r in role.split("|")) for role in lora_roles)
    if (lora_width is None or lora_width == width) and te_ok:
        return None
    return CheckpointError(f"LoRA {lora.name} is for {_family(lora_width, lora_roles)}, not for {label}",
                           "pick a LoRA made for this model")


def plan_loras(shapes: Mapping[str, tuple[int, ...]], unet_cfg, loras: Sequence[tuple[LoraFile, float]],
               label: str) -> list[Step]:
    """Check every LoRA against the model's weight names and shapes; the updates to make.

    `shapes` is the model's state-dict key -> shape (a meta-built model will do)."""
    table, roles = lookup_table(shapes, unet_cfg)
    width = unet_cfg.context_width
    steps: list[Step] = []
    for index, (lora, scale) in enumerate(loras):
        unknown, wrong = [], []
        for name, module in lora.modules.items():
            target = table.get(name)
            if target is None:
                unknown.append(name)
                continue
            want = _target_shape(target, shapes)
            if not _fits(_delta_shape(module), want):
                wrong.append(f"{name} (LoRA {list(_delta_shape(module))}, model {list(want)})")
                continue
            steps.append(Step(target, module, scale, name, index))
        if unknown or wrong:
            family = _wrong_family(lora, label, width, roles)
            if family is not None:
                raise family
            what = []
            if unknown:
                more = f", … +{len(unknown) - _SHOW} more" if len(unknown) > _SHOW else ""
                what.append(f"{len(unknown)} module(s) matching no layer of {label}: {', '.join(unknown[:_SHOW])}{more}")
            if wrong:
                more = f", … +{len(wrong) - _SHOW} more" if len(wrong) > _SHOW else ""
                what.append(f"{len(wrong)} of the wrong shape: {', '.join(wrong[:_SHOW])}{more}")
            raise CheckpointError(f"LoRA {lora.name}: " + "; ".join(what), "is this LoRA made for this model?")
    return steps


def delta(module: LoraModule, scale: float, shape: tuple[int, ...], device: torch.device) -> torch.Tensor:
    """scale * alpha / rank * (up @ down) in fp32, shaped like the (un-transposed) target."""
    down = module.down.to(device, torch.float32)
    up = module.up.to(device, torch.float32)
    alpha = module.rank if module.alpha is None else module.alpha
    product = up.flatten(1) @ down.flatten(1)
    return (product * (scale * alpha / module.rank)).reshape(shape)


@torch.no_grad()
def merge(params: Mapping[str, torch.Tensor], steps: Sequence[Step]) -> None:
    """Add the planned deltas to the tensors of `params` in place (fp32 sum, cast back)."""
    for step in steps:
        t = step.target
        weight = params[t.key]
        part = weight[t.rows[0]:t.rows[1]] if t.rows is not None else weight
        m = step.module
        if part.dtype == torch.float32 and part.dim() == 2 and m.down.dim() == 2 and not t.transpose:
            factor = step.scale * (m.rank if m.alpha is None else m.alpha) / m.rank  # fused, no temporaries
            part.addmm_(m.up.to(part.device, torch.float32), m.down.to(part.device, torch.float32), alpha=factor)
            continue
        shape = tuple(part.shape[::-1]) if t.transpose else tuple(part.shape)
        d = delta(m, step.scale, shape, part.device)
        if t.transpose:
            d = d.T
        merged = (part.float() + d).to(part.dtype)
        if not torch.isfinite(merged).all():  # fp16 overflow: the factors themselves are checked at load
            raise CheckpointError(f"LoRA layer {step.name} overflows {part.dtype} in {t.key} at scale {step.scale}",
                                  "lower the LoRA scale, or use --dtype fp32/bf16")
        part.copy_(merged)


def check_loras(engine: nn.Module, loras: Sequence[tuple[LoraFile, float]], label: str) -> list[Step]:
    """`plan_loras` for an engine, which may be built on the meta device: run it before loading the
    checkpoint or sampling, so that a wrong LoRA fails first."""
    shapes = {k: tuple(v.shape) for k, v in engine.state_dict(keep_vars=True).items()}
    return plan_loras(shapes, engine.get_submodule(UNET.rstrip(".")).cfg, loras, label)


def apply_loras(engine: nn.Module, loras: Sequence[tuple[LoraFile, float]], label: str) -> list[Applied]:
    """Merge `loras` ((file, scale) pairs, in order) into a loaded engine's weights in place.

    The engine is the one `gm.models.build.load_engine` returns (names = the released keys); its
    UNet config comes from `engine.model.diffusion_model.cfg`. `label` names the model in errors
    (e.g. the preset name). All LoRAs are checked before any weight changes."""
    params = engine.state_dict(keep_vars=True)
    steps = check_loras(engine, loras, label)
    done = []
    for index, (lora, scale) in enumerate(loras):
        start = time.perf_counter()
        mine = [s for s in steps if s.index == index]
        merge(params, mine)
        done.append(Applied(lora.name, str(lora.path), scale, len(mine), time.perf_counter() - start))
    return done
