"""Shared test set-up: offline, deterministic, small thread count."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
GOLDEN = Path(__file__).resolve().parent / "golden"
MANIFESTS = Path(__file__).resolve().parent / "manifests"

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Tiny test models run faster on one thread (and 2-core CI machines have no spare core anyway);
# results are deterministic either way. Subprocesses inherit it through the environment.
os.environ.setdefault("OMP_NUM_THREADS", "1")
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No test sees the user's checkpoints, presets or Hub cache."""
    monkeypatch.delenv("GM_CHECKPOINTS", raising=False)
    monkeypatch.delenv("GM_PRESETS", raising=False)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))  # gm's hash cache (Model hash)
