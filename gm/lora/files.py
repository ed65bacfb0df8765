"""LoRA files: the `FILE[:SCALE]` argument, finding a file by name, `<lora:name:w>` prompt tags,
strict reading of the kohya/A1111 and diffusers/PEFT key formats, and A1111's `Lora hashes`."""

from __future__ import annotations

import hashlib
import math
import os
import re
import struct
from dataclasses import dataclass, field
from pathlib import Path

import torch

from gm.checkpoint import PICKLE_SUFFIXES, read_header
from gm.errors import CheckpointError, UsageError

# key suffix -> which factor it holds. `down` (A) is (rank, in[, kh, kw]); `up` (B) is (out, rank[, 1, 1]).
_SUFFIXES = (
    (".lora_down.weight", "down"), (".lora_up.weight", "up"), (".alpha", "alpha"),  # kohya / A1111
    (".lora_A.weight", "down"), (".lora_B.weight", "up"),  # PEFT (diffusers >= 0.22)
    (".lora.down.weight", "down"), (".lora.up.weight", "up"),  # diffusers 0.2x LoRACompatible layers
    (".lora_linear_layer.down.weight", "down"), (".lora_linear_layer.up.weight", "up"),  # its text encoder
)
_PROCESSOR = re.compile(r"^(.*)\.processor\.(to_q|to_k|to_v|to_out)_lora\.(down|up)\.weight$")  # diffusers < 0.20
# LyCORIS and other adapter types that are not a plain low-rank product: refused by name.
_UNSUPPORTED = {"hada_": "LoHa", "lokr_": "LoKr", "lora_mid": "LoCon with a Tucker core", "dora_scale": "DoRA",
                "lora_magnitude_vector": "DoRA", "diff": "full-weight difference", "diff_b": "bias difference",
                "w_norm": "norm-layer", "b_norm": "norm-layer", "lora_B.bias": "LoRA bias", "oft_": "OFT",
                "on_input": "LyCORIS IA3"}
_UNET_ROOTS = ("down_blocks.", "mid_block.", "up_blocks.")  # old diffusers files without the `unet.` prefix
_TAG = re.compile(r"<lora:([^<>]*)>")


@dataclass(eq=False)
class LoraModule:
    """One adapted layer: W' = W + scale * alpha / rank * (up @ down)."""

    down: torch.Tensor
    up: torch.Tensor
    alpha: float | None = None  # None: alpha = rank (diffusers/PEFT files carry no alpha)

    @property
    def rank(self) -> int:
        return self.down.shape[0]


@dataclass
class LoraFile:
    path: Path
    format: str  # "kohya" or "diffusers"
    modules: dict[str, LoraModule]  # LoRA module name (`lora_unet_…`, `unet.…`) -> factors
    metadata: dict[str, str] = field(default_factory=dict)

    @property
    def name(self) -> str:
        """The name A1111 records (the file name without its extension)."""
        return self.path.stem


def parse_lora_arg(text: str) -> tuple[str, float]:
    """`FILE[:SCALE]` -> (file or name, scale); SCALE defaults to 1. A Windows drive letter or a
    colon inside a path is not taken for a scale."""
    head, sep, tail = text.rpartition(":")
    if not sep or "/" in tail or "\\" in tail or (len(head) == 1 and head.isalpha()):
        path, scale = text, 1.0
    else:
        try:
            path, scale = head, float(tail)
        except ValueError:
            raise UsageError(f"--lora {text}: the scale {tail!r} is not a number",
                             "write FILE[:SCALE], e.g. --lora style.safetensors:0.8") from None
    if not math.isfinite(scale):
        raise UsageError(f"--lora {text}: the scale must be a finite number", "e.g. --lora style.safetensors:0.8")
    if not path:
        raise UsageError(f"--lora {text}: no file named", "write FILE[:SCALE], e.g. --lora style.safetensors:0.8")
    return path, scale


def extract_prompt_loras(prompt: str) -> tuple[str, list[tuple[str, float]]]:
    """A1111's `<lora:name:w>` tags: (prompt without the tags, [(name, w)]); w defaults to 1."""
    found = []
    for body in _TAG.findall(prompt):
        parts = body.split(":")
        if len(parts) > 2 or not parts[0].strip():
            raise UsageError(f"prompt tag <lora:{body}>: expected <lora:NAME> or <lora:NAME:WEIGHT>",
                             "gm takes one weight for both the UNet and the text encoders")
        name, weight = parts[0].strip(), parts[1].strip() if len(parts) == 2 else "1"
        try:
            scale = float(weight)
        except ValueError:
            raise UsageError(f"prompt tag <lora:{body}>: the weight {weight!r} is not a number",
                             "e.g. <lora:style:0.8>") from None
        found.append((name, scale))
    return _TAG.sub("", prompt).strip(), found


def lora_dirs() -> list[Path]:
    """Folders a LoRA given by name is looked for in: $GM_CHECKPOINTS and ./checkpoints, each also
    with a `loras/` subfolder."""
    roots = [Path(os.environ["GM_CHECKPOINTS"]).expanduser()] if os.environ.get("GM_CHECKPOINTS") else []
    roots.append(Path.cwd() / "checkpoints")
    return [d for root in roots for d in (root, root / "loras")]


def find_lora(name: str, dirs: list[Path] | None = None) -> Path:
    """A LoRA file from a path, or from a bare name (with or without `.safetensors`) in `lora_dirs()`."""
    given = Path(name).expanduser()
    if given.is_file():
        return given
    places = []
    if not given.is_absolute() and len(given.parts) == 1:
        for folder in lora_dirs() if dirs is None else dirs:
            for candidate in (folder / name, folder / f"{name}.safetensors"):
                if candidate.is_file():
                    return candidate
            places.append(str(folder))
    looked = f" (looked in {', '.join(places)})" if places else ""
    raise CheckpointError(f"LoRA {name} not found{looked}",
                          "give the path of its .safetensors file, or put it in $GM_CHECKPOINTS/loras")


def _split(key: str) -> tuple[str, str]:
    """File key -> (module name, part); raises for adapter kinds gm cannot merge and unknown keys."""
    m = _PROCESSOR.match(key)
    if m:
        proj = "to_out.0" if m.group(2) == "to_out" else m.group(2)
        return f"{m.group(1)}.{proj}", m.group(3)
    for suffix, part in _SUFFIXES:
        if key.endswith(suffix):
            return key[: -len(suffix)], part
    tail = key.rsplit(".", 2)
    for marker, kind in _UNSUPPORTED.items():
        if any(piece.startswith(marker) for piece in tail[1:]) or key.endswith("." + marker):
            raise CheckpointError(f"LoRA tensor {key} is a {kind} adapter, which gm cannot merge",
                                  "use a plain LoRA / LoCon file (lora_down/lora_up or lora_A/lora_B)")
    raise CheckpointError(f"LoRA tensor {key} is not a LoRA factor (lora_down/lora_up/alpha or lora_A/lora_B)",
                          "is this a LoRA file? checkpoints go to --checkpoint, VAEs to --vae")


def load_lora(path: str | Path) -> LoraFile:
    """Read a LoRA .safetensors strictly: pickle files refused, every tensor a known LoRA factor,
    every module with both factors of matching rank."""
    path = Path(path)
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise CheckpointError(f"LoRA {path.name} is a pickle file; gm reads LoRAs from .safetensors only",
                              "use the .safetensors version of this LoRA, or convert it with a tool you trust")
    if not path.is_file():
        raise CheckpointError(f"LoRA file not found: {path}", "check the --lora path")
    header = read_header(path)
    if not header:
        raise CheckpointError(f"LoRA {path.name} holds no tensors", "download it again")
    parts: dict[str, dict[str, str]] = {}
    for key in header:
        module, part = _split(key)
        if module.startswith(_UNET_ROOTS):
            module = "unet." + module
        parts.setdefault(module, {})[part] = key
    from safetensors import safe_open

    modules: dict[str, LoraModule] = {}
    with safe_open(str(path), framework="pt", device="cpu") as f:
        metadata = f.metadata() or {}
        for module, keys in parts.items():
            if "down" not in keys or "up" not in keys:
                have = ", ".join(keys.values())
                raise CheckpointError(f"LoRA {path.name}: {module} has {have} but not both the down and up factors",
                                      "the file is incomplete; download it again")
            down, up = f.get_tensor(keys["down"]), f.get_tensor(keys["up"])
            alpha = float(f.get_tensor(keys["alpha"]).float()) if "alpha" in keys else None
            if down.dim() < 2 or up.dim() < 2 or up.shape[1] != down.shape[0] or any(s != 1 for s in up.shape[2:]):
                raise CheckpointError(f"LoRA {path.name}: {module} has factors of shapes {list(down.shape)} (down) "
                                      f"and {list(up.shape)} (up), which do not multiply", "download it again")
            if not (torch.isfinite(down).all() and torch.isfinite(up).all() and math.isfinite(alpha or 0.0)):
                raise CheckpointError(f"LoRA {path.name}: {module} holds non-finite values", "download it again")
            modules[module] = LoraModule(down, up, alpha)
    fmt = "kohya" if all(m.startswith("lora_") for m in modules) else "diffusers"
    return LoraFile(path, fmt, modules, dict(metadata))


def lora_hash(path: str | Path) -> str:
    """A1111's LoRA short hash: the first 12 hex digits of the sha256 of the file after its
    safetensors header (the "addnet" hash, unchanged when only the metadata is edited)."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        (n,) = struct.unpack("<Q", f.read(8))
        f.seek(8 + n)
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def lora_hashes_text(entries: list[tuple[str, str]]) -> str:
    """The value A1111 writes after `Lora hashes: ` (quoted there): `name: hash, name2: hash2`."""
    return ", ".join(f"{name}: {short}" for name, short in entries)
