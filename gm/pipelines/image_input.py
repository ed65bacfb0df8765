"""Input images for img2img and `gm refine`: read, size on the 64 grid, resize, map to [-1, 1].

Mirrors `get_input_image_tensor` / `load_img` of the reference (`sgm/inference/helpers.py`,
`scripts/demo/streamlit_helpers.py`): width and height are floored to multiples of 64 and the
image is resized with PIL's default filter (bicubic), then x * 2 - 1. `gm refine` without --prompt
reads each input's prompt from the metadata gm, A1111 or Forge wrote into it.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from gm.console import console
from gm.errors import InputError
from gm.io.media import open_image, to_rgb
from gm.pipelines.image_job import ImageJob

GRID = 64


def native_size(path: Path) -> tuple[int, int]:
    """(width, height) an input image is processed at: its size floored to multiples of 64."""
    if not path.is_file():
        raise InputError(f"{path}: no such file", "give an existing .png/.jpg image")
    img = open_image(path)
    w, h = img.size[0] // GRID * GRID, img.size[1] // GRID * GRID
    if w == 0 or h == 0:
        raise InputError(f"{path}: {img.size[0]}x{img.size[1]} is too small (needs at least 64x64 pixels)")
    return w, h


def load_image(path: Path, width: int, height: int) -> torch.Tensor:
    """(1, 3, height, width) float32 in [-1, 1]; alpha is composited on white."""
    img = to_rgb(open_image(path))
    if img.size != (width, height):
        img = img.resize((width, height))
    arr = np.asarray(img, dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] * 2.0 - 1.0  # (1, 3, H, W)


def parse_parameters(text: str) -> tuple[str, str]:
    """(prompt, negative) of an A1111 `parameters` text: the prompt lines, then optional
    `Negative prompt: ...` lines, then one line of `Key: value, ...` fields (Steps first)."""
    lines = text.split("\n")
    if len(lines) > 1 and lines[-1].startswith("Steps: "):
        lines = lines[:-1]
    for i, line in enumerate(lines):
        if line.startswith("Negative prompt:"):
            negative = "\n".join([line[len("Negative prompt:"):].lstrip(), *lines[i + 1:]])
            return "\n".join(lines[:i]), negative
    return "\n".join(lines), ""


def prompt_from_metadata(path: Path) -> tuple[str, str] | None:
    """(prompt, negative) an image's PNG text records: gm's `gm` JSON chunk, else the A1111
    `parameters` chunk (A1111, Forge, ComfyUI's A1111 export, gm); None when it records neither."""
    with Image.open(path) as img:
        text = dict(getattr(img, "text", None) or {k: v for k, v in img.info.items() if isinstance(v, str)})
    try:
        record = json.loads(text["gm"]) if "gm" in text else None
    except json.JSONDecodeError:
        record = None
    if isinstance(record, dict):  # gm's own record is authoritative (a video still has no prompt)
        if not isinstance(record.get("prompt"), str):
            return None
        return record["prompt"], str(record.get("negative_prompt") or "")
    if "parameters" in text:
        return parse_parameters(text["parameters"])
    return None


def input_prompt(path: Path, job: ImageJob) -> tuple[str, str]:
    """(prompt, negative) for one input of gm refine: the options', or (job.prompt_from_inputs) what
    the file records, said on stderr; a given --negative wins over the recorded one."""
    if not job.prompt_from_inputs:
        return job.prompt, job.negative
    found = prompt_from_metadata(path)
    if found is None:
        console.warn(f"{path.name}: no prompt in its metadata and no --prompt given; refining with an empty prompt")
        return "", job.negative
    prompt, negative = found if job.negative_from_inputs else (found[0], job.negative)
    console.log(f"{path.name}: prompt from its metadata: {prompt!r}" + (f" (negative {negative!r})" if negative else ""))
    return _without_lora_tags(path, prompt), negative


def _without_lora_tags(path: Path, prompt: str) -> str:
    """A recorded prompt's `<lora:…>` tags name LoRAs of the run that made the image: they are not
    loaded for the refine (that takes --lora), so they are dropped from the prompt, with a warning."""
    from gm.errors import UsageError
    from gm.lora import extract_prompt_loras

    try:
        text, tags = extract_prompt_loras(prompt)
    except UsageError:
        return prompt
    if tags:
        console.warn(f"{path.name}: its prompt names LoRAs ({', '.join(n for n, _ in tags)}) that this refine does "
                     "not load; dropped from the prompt (add --lora NAME to use one)")
    return text if tags else prompt
