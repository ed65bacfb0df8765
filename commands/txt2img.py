"""`gm txt2img`: Generate images from a prompt (SDXL, SD 2.1)."""

from __future__ import annotations

import typer

from commands._common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command("txt2img", help="Generate images from a prompt (SDXL, SD 2.1).")
    def command() -> None:
        not_implemented("txt2img")
