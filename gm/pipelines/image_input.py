"""Input images for img2img and `gm refine`: read, size on the 64 grid, resize, map to [-1, 1].

Mirrors `get_input_image_tensor` / `load_img` of the reference (`sgm/inference/helpers.py`,
`scripts/demo/streamlit_helpers.py`): width and height are floored to multiples of 64 and the
image is resized with PIL's default filter (bicubic), then x * 2 - 1.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from gm.errors import InputError
from gm.io.media import open_image, to_rgb

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
