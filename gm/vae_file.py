"""`--vae FILE`: a standalone VAE loaded strictly in place of the checkpoint's.

Accepted layouts: the single-file VAE releases (`sdxl_vae.safetensors`, the fp16-fix
`sdxl.vae.safetensors`, `vae-ft-mse-840000-ema-pruned.safetensors`: keys `encoder.…`, `decoder.…`,
`quant_conv.…`, `post_quant_conv.…` without prefix), a whole checkpoint (its `first_stage_model.`
tensors are used) and the diffusers layout (`encoder.down_blocks.…`, converted here). Like A1111,
the training-loss tensors some VAE files carry (`loss.…`) and the EMA counters are ignored. Names
and shapes are compared with the model's VAE from the header, before any tensor is read; a
decoder-only VAE module (SV3D/SV4D) takes only the decoder half of the file.
"""

from __future__ import annotations

import re
from pathlib import Path

import torch
from torch import nn

from gm.checkpoint import PICKLE_SUFFIXES, compare, mismatch_message, read_header
from gm.errors import CheckpointError

_IGNORED = re.compile(r"^(loss\.|model_ema\.(decay|num_updates)$)")
_DIFFUSERS = re.compile(r"^(encoder\.down_blocks|decoder\.up_blocks|encoder\.mid_block|decoder\.mid_block)\.")
_ATTN = {"group_norm": "norm", "to_q": "q", "query": "q", "to_k": "k", "key": "k", "to_v": "v", "value": "v",
         "to_out.0": "proj_out", "proj_attn": "proj_out"}


def diffusers_vae_key(key: str, levels: int) -> str:
    """A diffusers AutoencoderKL key -> the LDM/SGM key gm's VAE uses (unknown keys unchanged)."""
    key = key.replace("conv_norm_out.", "norm_out.").replace("conv_shortcut.", "nin_shortcut.")
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.resnets\.", r"encoder.down.\1.block.", key)
    key = re.sub(r"^encoder\.down_blocks\.(\d+)\.downsamplers\.0\.", r"encoder.down.\1.downsample.", key)
    up = re.match(r"^decoder\.up_blocks\.(\d+)\.(resnets|upsamplers\.0)\.(.*)$", key)
    if up:
        part = "block." if up.group(2) == "resnets" else "upsample."
        key = f"decoder.up.{levels - 1 - int(up.group(1))}.{part}{up.group(3)}"
    key = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.0\.", r"\1.mid.block_1.", key)
    key = re.sub(r"^(encoder|decoder)\.mid_block\.resnets\.1\.", r"\1.mid.block_2.", key)
    attn = re.match(r"^(encoder|decoder)\.mid_block\.attentions\.0\.(.*)\.(weight|bias)$", key)
    if attn and attn.group(2) in _ATTN:
        key = f"{attn.group(1)}.mid.attn_1.{_ATTN[attn.group(2)]}.{attn.group(3)}"
    return key


def vae_keys(header: dict[str, tuple[str, tuple[int, ...]]]) -> tuple[dict[str, str], str]:
    """(gm VAE key -> file key, layout name) for a VAE file's header."""
    keys = list(header)
    if any(k.startswith("first_stage_model.") for k in keys):
        return {k.removeprefix("first_stage_model."): k for k in keys if k.startswith("first_stage_model.")}, \
            "checkpoint"
    keys = [k for k in keys if not _IGNORED.match(k)]
    if any(_DIFFUSERS.match(k) for k in keys):
        ups = [int(m.group(1)) for k in keys if (m := re.match(r"^decoder\.up_blocks\.(\d+)\.", k))]
        downs = [int(m.group(1)) for k in keys if (m := re.match(r"^encoder\.down_blocks\.(\d+)\.", k))]
        levels = max(ups or downs) + 1
        return {diffusers_vae_key(k, levels): k for k in keys}, "diffusers"
    return {k: k for k in keys}, "single-file"


def _same(found: tuple[int, ...], want: tuple[int, ...]) -> bool:
    """Equal shapes, or a diffusers attention Linear (out, in) for an LDM 1x1 conv (out, in, 1, 1)."""
    return tuple(found) == tuple(want) or (len(want) == 4 and want[2:] == (1, 1) and tuple(found) == tuple(want[:2]))


def check_vae_file(path: str | Path, vae_module: nn.Module) -> tuple[dict[str, str], str]:
    """Match a VAE file's header with `vae_module` (meta-built is fine): (module key -> file key,
    layout). Any difference is one error naming the tensors."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"VAE {path.name} is a pickle file; gm reads VAEs from .safetensors only",
                              "use the .safetensors release of this VAE")
    if not path.is_file():
        raise CheckpointError(f"VAE file not found: {path}", "check the --vae path")
    header = read_header(path)
    mapping, layout = vae_keys(header)
    expected = {k: tuple(v.shape) for k, v in vae_module.state_dict(keep_vars=True).items()}
    if not any(k.startswith("encoder.") for k in expected):  # decoder-only module: the decoder half
        mapping = {k: v for k, v in mapping.items() if not k.startswith(("encoder.", "quant_conv."))}
    found = {k: header[src][1] for k, src in mapping.items()}
    same = {k: expected[k] for k in found if k in expected and _same(found[k], expected[k])}
    missing, unexpected, shapes = compare(expected, {**found, **same})
    if missing or unexpected or shapes:
        hint = ("is this a VAE file? a LoRA goes to --lora" if not any(k.startswith("decoder.") for k in found)
                else "use a VAE of the same architecture as the model's (SD/SDXL f8, 4 latent channels)")
        raise CheckpointError(mismatch_message(f"VAE {path.name} ({layout} layout)", missing, unexpected, shapes), hint)
    return {k: mapping[k] for k in expected}, layout


def load_vae_override(path: str | Path, vae_module: nn.Module, device: torch.device | str = "cpu",
                      dtype: torch.dtype = torch.float32) -> str:
    """Replace `vae_module`'s weights with the VAE file at `path` (checked first, see
    `check_vae_file`), read onto `device` in `dtype`. Returns the layout it was read as."""
    from safetensors import safe_open

    path = Path(path)
    keys, layout = check_vae_file(path, vae_module)
    expected = vae_module.state_dict(keep_vars=True)
    state = {}
    try:
        with safe_open(str(path), framework="pt", device="cpu") as f:
            for key, src in keys.items():
                tensor = f.get_tensor(src).reshape(expected[key].shape)
                state[key] = tensor.to(device, dtype if tensor.is_floating_point() else tensor.dtype)
    except (OSError, RuntimeError) as err:
        raise CheckpointError(f"VAE {path.name}: cannot read tensors ({err})", "download it again") from None
    bad = [k for k, t in state.items() if t.is_floating_point() and not torch.isfinite(t).all()]
    if bad:
        raise CheckpointError(f"VAE {path.name}: non-finite values in {', '.join(bad[:3])}", "download it again")
    vae_module.load_state_dict(state, strict=True, assign=True)
    return layout
