"""`gm train`: Train a small diffusion model from a preset (plain PyTorch, DDP-ready)."""

from __future__ import annotations

import typer

from commands._common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command("train", help="Train a small diffusion model from a preset (plain PyTorch, DDP-ready).")
    def command() -> None:
        not_implemented("train")
