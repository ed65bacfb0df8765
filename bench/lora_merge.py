"""Time to read and merge an SDXL-sized LoRA on the CPU: `python bench/lora_merge.py [--rank 32]`.

The LoRA covers what kohya's SDXL LoRA trainer adapts by default: every linear layer of the UNet's
transformers (attn1/attn2 q/k/v/out, ff, proj_in/out) and the attention and MLP layers of both text
encoders, in kohya's key format, random fp16 factors. The weights it merges into are the SDXL base
shapes from tests/manifests/sdxl-base.json, fp32 and random (only the adapted tensors are allocated).
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402
from safetensors.torch import save_file  # noqa: E402

from gm import presets  # noqa: E402
from gm.lora import load_lora, merge, plan_loras  # noqa: E402
from gm.models.build import network_config  # noqa: E402

MANIFEST = Path(__file__).resolve().parent.parent / "tests" / "manifests" / "sdxl-base.json"
UNET = "model.diffusion_model."
TE1 = "conditioner.embedders.0.transformer."
TE2 = "conditioner.embedders.1.model."


def kohya_modules(shapes: dict[str, tuple[int, ...]]) -> dict[str, tuple[int, int]]:
    """kohya module name -> (out, in) of every layer the default SDXL LoRA adapts."""
    out = {}
    for key, shape in shapes.items():
        if key.startswith(UNET) and key.endswith(".weight") and len(shape) == 2 and (
                ".transformer_blocks." in key or key.endswith((".proj_in.weight", ".proj_out.weight"))):
            out["lora_unet_" + key[len(UNET):-7].replace(".", "_")] = shape
        elif key.startswith(TE1 + "text_model.encoder.layers.") and key.endswith(".weight") and len(shape) == 2:
            out["lora_te1_" + key[len(TE1):-7].replace(".", "_")] = shape
        elif key.startswith(TE2 + "transformer.resblocks.") and key.endswith("in_proj_weight"):
            i, width = key.split(".")[6], shape[1]
            layer = f"lora_te2_text_model_encoder_layers_{i}_"
            for proj in ("q", "k", "v", "out"):
                out[f"{layer}self_attn_{proj}_proj"] = (width, width)
            out[f"{layer}mlp_fc1"], out[f"{layer}mlp_fc2"] = (4 * width, width), (width, 4 * width)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rank", type=int, default=32)
    args = parser.parse_args()
    shapes = {k: tuple(v) for k, v in json.loads(MANIFEST.read_text())["tensors"].items()}
    modules = kohya_modules(shapes)
    g = torch.Generator().manual_seed(0)
    state = {}
    for name, (o, i) in modules.items():
        state[f"{name}.lora_down.weight"] = (torch.randn(args.rank, i, generator=g) * 0.01).half()
        state[f"{name}.lora_up.weight"] = (torch.randn(o, args.rank, generator=g) * 0.01).half()
        state[f"{name}.alpha"] = torch.tensor(float(args.rank) / 2).half()
    cfg, _ = network_config(presets.load("sdxl-base-1.0"))
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "sdxl_rank.safetensors"
        save_file(state, str(path))
        size = path.stat().st_size
        t0 = time.perf_counter()
        lora = load_lora(path)
        t1 = time.perf_counter()
        steps = plan_loras(shapes, cfg, [(lora, 0.8)], "sdxl-base-1.0")
        t2 = time.perf_counter()
    params = {s.target.key: torch.randn(shapes[s.target.key], generator=g) for s in steps}
    n_weights = sum(p.numel() for p in params.values())
    t3 = time.perf_counter()
    merge(params, steps)
    t4 = time.perf_counter()
    print(f"rank {args.rank}: {len(modules)} modules, file {size / 2**20:.0f} MiB; read {t1 - t0:.2f} s, "
          f"check {t2 - t1:.2f} s, merge into {n_weights / 1e6:.0f} M fp32 weights {t4 - t3:.2f} s "
          f"({torch.get_num_threads()} threads)")


if __name__ == "__main__":
    main()
