"""Tiny random checkpoints in the released key layout, made from a preset, for end-to-end tests."""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors.torch import save_file

from gm import presets
from gm.models.build import build_engine


def make_checkpoint(preset: presets.Preset, folder: Path, seed: int = 0, extra: dict | None = None) -> Path:
    """Randomly initialised engine of `preset` saved as `folder/<checkpoint.file>` (fp32)."""
    torch.manual_seed(seed)
    engine = build_engine(preset)
    state = {k: v.detach().contiguous().clone() for k, v in engine.state_dict().items()}
    state.update(extra or {})
    assert preset.checkpoint is not None
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / preset.checkpoint.file
    save_file(state, str(path))
    return path
