"""LoRA support: read kohya/A1111 and diffusers/PEFT LoRA files strictly and merge them into gm's
weights at load. Entry points: `parse_lora_arg`, `extract_prompt_loras`, `find_lora`, `load_lora`,
`check_loras` (meta engine), `apply_loras` (or `plan_loras` + `merge` on a state dict), `lora_hash`, `lora_hashes_text`."""

from __future__ import annotations

from gm.lora.files import (
    LoraFile,
    LoraModule,
    extract_prompt_loras,
    find_lora,
    load_lora,
    lora_dirs,
    lora_hash,
    lora_hashes_text,
    parse_lora_arg,
)
from gm.lora.merge import Applied, apply_loras, check_loras, lora_signature, merge, plan_loras

__all__ = [
    "Applied", "LoraFile", "LoraModule", "apply_loras", "check_loras", "extract_prompt_loras", "find_lora", "load_lora",
    "lora_dirs", "lora_hash", "lora_hashes_text", "lora_signature", "merge", "parse_lora_arg", "plan_loras",
]
