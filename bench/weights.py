"""Random weights for the benchmark: a fast seeded fill of real modules, and big random checkpoints.

PyTorch's default init costs ~45 M values/s on a 2-core CPU (SDXL's UNet: 113 s), which would eat
the whole bench budget. `random_module` instead builds the module on the meta device and attaches
a state dict filled from one seeded uniform pool: weights (and the biases of their layers) are
U(-1/sqrt(fan_in), 1/sqrt(fan_in)) like nn.Linear/nn.Conv's defaults, norm layers get weight 1 and
bias 0, so activations keep their scale through 70 transformer blocks. The values are real
(nothing stays on meta) and identical for gm and the peer, which share the storages.

`write_random_checkpoint` streams a released-layout `.safetensors` file tensor by tensor from a
manifest (tests/manifests/*.json), never holding more than one tensor in RAM.
"""

from __future__ import annotations

import json
import math
import struct
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn

POOL = 1 << 22  # values in the random pool; tensors read it from seeded offsets
_NORMS = (nn.GroupNorm, nn.LayerNorm)


def _pool(seed: int) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    return torch.rand(POOL + 1, generator=gen).mul_(2).sub_(1)  # U(-1, 1)


def _fill(out: torch.Tensor, pool: torch.Tensor, gen: torch.Generator, scale: float) -> torch.Tensor:
    """Copy pool values (from a random offset, wrapping) into `out` and scale them."""
    flat = out.view(-1)
    n, done = flat.numel(), 0
    offset = int(torch.randint(0, POOL, (1,), generator=gen))
    while done < n:
        take = min(n - done, POOL - offset)
        flat[done:done + take].copy_(pool[offset:offset + take])
        done, offset = done + take, 0
    return out.mul_(scale)


def _fan_in_scale(shape: tuple[int, ...]) -> float:
    fan_in = math.prod(shape[1:]) if len(shape) > 1 else shape[0] if shape else 1
    return 1.0 / math.sqrt(max(fan_in, 1))


def random_module(build: Callable[[], nn.Module], seed: int = 0) -> nn.Module:
    """`build()` on meta, then a random state dict attached with assign=True (see module doc)."""
    from gm.checkpoint import materialize_buffers

    with torch.device("meta"):
        module = build()
    pool, gen = _pool(seed), torch.Generator().manual_seed(seed + 1)
    state: dict[str, torch.Tensor] = {}
    for mod_name, mod in module.named_modules():
        prefix = f"{mod_name}." if mod_name else ""
        weight = getattr(mod, "weight", None)
        scale = _fan_in_scale(tuple(weight.shape)) if isinstance(weight, torch.Tensor) else 0.02
        tensors = [*mod.named_parameters(recurse=False), *mod.named_buffers(recurse=False)]
        for name, meta in tensors:
            out = torch.empty(meta.shape, dtype=meta.dtype)
            if isinstance(mod, _NORMS):
                out.fill_(1.0 if name == "weight" else 0.0)
            elif out.is_floating_point():
                _fill(out, pool, gen, scale if weight is not None else _fan_in_scale(tuple(meta.shape)))
            else:
                out.zero_()
            state[prefix + name] = out
    keys = set(module.state_dict(keep_vars=True))
    module.load_state_dict({k: v for k, v in state.items() if k in keys}, strict=True, assign=True)
    materialize_buffers(module, torch.device("cpu"))
    return module.eval().requires_grad_(False)


_ST_DTYPES = {"float16": ("F16", torch.float16), "float32": ("F32", torch.float32),
              "bfloat16": ("BF16", torch.bfloat16), "int64": ("I64", torch.int64)}
_BY_CODE = {code: tdtype for code, tdtype in _ST_DTYPES.values()}


def write_random_checkpoint(manifest: Path, path: Path, dtype: str = "float16", seed: int = 0) -> int:
    """Stream a random `.safetensors` with every tensor of `manifest` (floats in `dtype`,
    persistent float32 buffers kept float32); returns the file size in bytes."""
    spec = json.loads(manifest.read_text())
    buffers = spec.get("persistent_buffers", {})
    entries, offset = {}, 0
    for key, shape in spec["tensors"].items():
        dt = buffers.get(key, {}).get("dtype", dtype)
        code, tdtype = _ST_DTYPES[dt]
        nbytes = math.prod(shape) * torch.empty((), dtype=tdtype).element_size()
        entries[key] = {"dtype": code, "shape": shape, "data_offsets": [offset, offset + nbytes]}
        offset += nbytes
    header = json.dumps(entries, separators=(",", ":")).encode()
    header += b" " * (-len(header) % 8)  # data starts 8-byte aligned
    pool, gen = _pool(seed), torch.Generator().manual_seed(seed + 1)
    with path.open("wb") as f:
        f.write(struct.pack("<Q", len(header)))
        f.write(header)
        for key, shape in spec["tensors"].items():
            tdtype = _BY_CODE[entries[key]["dtype"]]
            tensor = _fill(torch.empty(shape, dtype=torch.float32), pool, gen, _fan_in_scale(tuple(shape)))
            # bytes of the tensor as stored (bf16 has no numpy dtype: write its bits as int16)
            raw = tensor.to(tdtype)
            f.write((raw.view(torch.int16) if tdtype == torch.bfloat16 else raw).numpy().tobytes())
    return path.stat().st_size
