"""Every name a LoRA may give a gm weight -> that weight (a key of the engine's state dict).

gm's modules carry the released checkpoints' names (SGM/LDM layout). LoRA files name the same
layers in three other vocabularies, all generated here from the model itself, so that a lookup is
a dict access and a name that is not in the table really matches nothing:

* the LDM UNet names (kohya's SDXL LoRAs: `lora_unet_input_blocks_4_1_transformer_blocks_0_attn1_to_q`);
* the diffusers UNet names (kohya's SD 1.x/2.x LoRAs, diffusers/PEFT files:
  `down_blocks.1.attentions.0.transformer_blocks.0.attn1.to_q`), derived from the UNet config with
  the same block arithmetic the UNet constructor uses;
* the Hugging Face CLIP text-model names for both text encoders
  (`text_model.encoder.layers.0.self_attn.q_proj`). gm's CLIP-L already uses them; gm's OpenCLIP
  towers keep open_clip's fused `attn.in_proj_weight`, so q/k/v map to row slices of it, and the
  HF `text_projection` Linear is the transpose of open_clip's `text_projection` matrix.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

UNET = "model.diffusion_model."
_CLIP_L = re.compile(r"^(conditioner\.embedders\.\d+\.transformer\.)text_model\.")
_OPENCLIP = re.compile(r"^(conditioner\.embedders\.\d+\.model\.)transformer\.resblocks\.0\.attn\.in_proj_weight$")

# LDM ResBlock / transformer inner names -> diffusers'.
_RESNET = {"in_layers.0": "norm1", "in_layers.2": "conv1", "emb_layers.1": "time_emb_proj",
           "out_layers.0": "norm2", "out_layers.3": "conv2", "skip_connection": "conv_shortcut"}
_FIXED = {"time_embed.0": "time_embedding.linear_1", "time_embed.2": "time_embedding.linear_2",
          "label_emb.0.0": "add_embedding.linear_1", "label_emb.0.2": "add_embedding.linear_2",
          "input_blocks.0.0": "conv_in", "out.0": "conv_norm_out", "out.2": "conv_out"}


@dataclass(frozen=True)
class Target:
    """One weight a LoRA module updates: `key` in the state dict, optionally rows [start, stop) of a
    fused tensor, optionally transposed (the delta is computed in the LoRA's (out, in) orientation)."""

    key: str
    rows: tuple[int, int] | None = None
    transpose: bool = False


def _unet_blocks(cfg) -> dict[str, tuple[str, str]]:
    """LDM block prefix -> (diffusers prefix, kind) where kind is resnet, attn or sample."""
    blocks: dict[str, tuple[str, str]] = {}
    levels = len(cfg.channel_mult)
    k = 1
    for level in range(levels):
        for j in range(cfg.res_blocks(level)):
            blocks[f"input_blocks.{k}.0"] = (f"down_blocks.{level}.resnets.{j}", "resnet")
            blocks[f"input_blocks.{k}.1"] = (f"down_blocks.{level}.attentions.{j}", "attn")
            k += 1
        if level != levels - 1:
            blocks[f"input_blocks.{k}.0.op"] = (f"down_blocks.{level}.downsamplers.0.conv", "sample")
            k += 1
    blocks["middle_block.0"] = ("mid_block.resnets.0", "resnet")
    blocks["middle_block.1"] = ("mid_block.attentions.0", "attn")
    blocks["middle_block.2"] = ("mid_block.resnets.1", "resnet")
    k = 0
    for up, level in enumerate(reversed(range(levels))):
        n = cfg.res_blocks(level) + 1
        for j in range(n):
            blocks[f"output_blocks.{k}.0"] = (f"up_blocks.{up}.resnets.{j}", "resnet")
            blocks[f"output_blocks.{k}.1"] = (f"up_blocks.{up}.attentions.{j}", "attn")
            if level and j == n - 1:  # the upsample follows the resnet, or the transformer if any
                for pos in (1, 2):
                    blocks[f"output_blocks.{k}.{pos}.conv"] = (f"up_blocks.{up}.upsamplers.0.conv", "sample")
            k += 1
    return blocks


def diffusers_unet_name(module: str, blocks: Mapping[str, tuple[str, str]]) -> str | None:
    """LDM UNet module path (no `model.diffusion_model.`) -> diffusers' path, None if it has none."""
    if module in _FIXED:
        return _FIXED[module]
    parts = module.split(".")
    for n in (4, 3, 2):  # longest block prefix first (`output_blocks.2.1.conv` before `output_blocks.2.1`)
        prefix = ".".join(parts[:n])
        if prefix in blocks:
            new, kind = blocks[prefix]
            rest = ".".join(parts[n:])
            if kind == "resnet":
                rest = _RESNET.get(rest, "")
                if not rest:
                    return None
            elif kind == "sample":
                if rest:
                    return None
                return new
            return f"{new}.{rest}" if rest else new
    return None


def _weights(shapes: Mapping[str, tuple[int, ...]], prefix: str) -> list[str]:
    """Module paths (prefix removed, `.weight` removed) of the matrices and kernels under prefix."""
    return [k[len(prefix):-7] for k, s in shapes.items() if k.startswith(prefix) and k.endswith(".weight")
            and len(s) >= 2]


def text_roles(shapes: Mapping[str, tuple[int, ...]], sdxl_like: bool) -> dict[str, tuple[str, str]]:
    """Role (te, te1, te2) -> (kind, state-dict prefix) of the model's text encoders.

    SDXL-style models (vector-conditioned UNet) name CLIP-L te1 and OpenCLIP te2 (the refiner has
    only te2); an SD 1.x/2.x-style model's single encoder is te."""
    clip = sorted({m.group(1) for k in shapes if (m := _CLIP_L.match(k))})
    openclip = sorted({m.group(1) for k in shapes if (m := _OPENCLIP.match(k))})
    found = [("clip", p) for p in clip] + [("openclip", p) for p in openclip]
    if sdxl_like:
        return {("te1" if kind == "clip" else "te2"): (kind, p) for kind, p in found}
    return {"te": found[0]} if len(found) == 1 else {}


def text_targets(kind: str, prefix: str, shapes: Mapping[str, tuple[int, ...]]) -> dict[str, Target]:
    """HF CLIP text-model module path -> Target, for one text encoder."""
    out: dict[str, Target] = {}
    if kind == "clip":
        for module in _weights(shapes, prefix):
            out[module] = Target(f"{prefix}{module}.weight")
            out[module.removeprefix("text_model.")] = Target(f"{prefix}{module}.weight")  # transformers 5
        return out
    blocks = re.compile(re.escape(prefix) + r"transformer\.resblocks\.(\d+)\.attn\.in_proj_weight$")
    for key, shape in shapes.items():
        m = blocks.match(key)
        if not m:
            continue
        i, width = m.group(1), shape[1]
        base = f"{prefix}transformer.resblocks.{i}."
        layer = f"text_model.encoder.layers.{i}."
        for n, proj in enumerate("qkv"):
            out[f"{layer}self_attn.{proj}_proj"] = Target(key, (n * width, (n + 1) * width))
        out[f"{layer}self_attn.out_proj"] = Target(f"{base}attn.out_proj.weight")
        out[f"{layer}mlp.fc1"] = Target(f"{base}mlp.c_fc.weight")
        out[f"{layer}mlp.fc2"] = Target(f"{base}mlp.c_proj.weight")
    if f"{prefix}text_projection" in shapes:
        out["text_projection"] = Target(f"{prefix}text_projection", transpose=True)
    for name in list(out):
        if name.startswith("text_model."):
            out[name.removeprefix("text_model.")] = out[name]
    return out


def lookup_table(shapes: Mapping[str, tuple[int, ...]], unet_cfg) -> tuple[dict[str, Target], set[str]]:
    """(every LoRA module name the model answers to -> Target, the model's text-encoder roles).

    Names are the kohya forms (`lora_unet_…`, `lora_te1_…`, dots as underscores) and the
    diffusers/PEFT forms (`unet.…`, `text_encoder.…`, `text_encoder_2.…`)."""
    table: dict[str, Target] = {}
    blocks = _unet_blocks(unet_cfg)
    for module in _weights(shapes, UNET):
        target = Target(f"{UNET}{module}.weight")
        names = [module]
        diffusers = diffusers_unet_name(module, blocks)
        if diffusers is not None:
            names.append(diffusers)
            table[f"unet.{diffusers}"] = target
        for name in names:
            table["lora_unet_" + name.replace(".", "_")] = target
    roles = text_roles(shapes, unet_cfg.num_classes == "sequential")
    diffusers_prefix = {"te": "text_encoder.", "te1": "text_encoder.", "te2": "text_encoder_2."}
    for role, (kind, prefix) in roles.items():
        for name, target in text_targets(kind, prefix, shapes).items():
            table[f"lora_{role}_" + name.replace(".", "_")] = target
            table[diffusers_prefix[role] + name] = target
    return table, set(roles)
