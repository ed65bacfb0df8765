"""Files of `gm video4d`: `NNNNNN_<tag>.mp4` at 10 fps (the reference's writer), one shared number
per run (claimed by the run's first file), written under a temporary name and never over an
existing file; every frame watermarked; the run's parameters in the container's `comment` tag.
"""

from __future__ import annotations

import json
from dataclasses import asdict
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gm.io.files import ensure_dir, write_atomic, write_numbered
from gm.io.media import write_mp4
from gm.outputs import run_record
from gm.pipelines.video4d_camera import diagonal_views
from gm.presets import Preset

FPS = 10.0


class Writer:
    """Writes the videos of one run under one number."""

    def __init__(self, out_dir: Path, preset: Preset, request: Any) -> None:
        self.out_dir = ensure_dir(out_dir)
        self.number: int | None = None  # claimed by the first file
        fields = {k: v for k, v in asdict(request).items() if k != "seed"}
        self.record = run_record("video4d", preset, request.seed, **fields)

    def video(self, tag: str, pixels: np.ndarray) -> Path:
        """Watermarked uint8 frames (N, H, W, 3) -> `NNNNNN_<tag>.mp4`."""
        comment = json.dumps({**self.record, "file": tag}, sort_keys=True, default=str, separators=(",", ":"))

        def write(tmp: Path) -> None:
            write_mp4(tmp, list(pixels), FPS, {"comment": comment})

        if self.number is None:  # the next free number, even if another run takes one meanwhile
            path = write_numbered(self.out_dir, ".mp4", write, tag=f"_{tag}")
            self.number = int(path.name.split("_")[0])
            return path
        return write_atomic(self.out_dir / f"{self.number:06d}_{tag}.mp4", write)

    @staticmethod
    def diagonal(img: torch.Tensor) -> torch.Tensor:
        """(N, 1+V, 3, H, W) -> (N, 3, H, W): frame t shows view (t // (N // (1+V))) % (1+V)."""
        picks = diagonal_views(img.shape[0], img.shape[1])
        return torch.stack([img[t, v] for t, v in enumerate(picks)])

    @staticmethod
    def grid(img: torch.Tensor, columns: int) -> torch.Tensor:
        """(N, 1+V, 3, H, W) -> (N, 3, rows*H, columns*W), views row by row, white padding."""
        n, views, c, h, w = img.shape
        rows = -(-views // columns)
        pad = torch.ones(n, rows * columns - views, c, h, w, dtype=img.dtype)
        tiles = torch.cat([img, pad], dim=1).view(n, rows, columns, c, h, w)
        return tiles.permute(0, 3, 1, 4, 2, 5).reshape(n, c, rows * h, columns * w)  # (N, 3, rows*H, cols*W)
