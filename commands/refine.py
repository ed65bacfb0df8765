"""`gm refine`: Refine existing images with the SDXL refiner (img2img)."""

from __future__ import annotations

import typer

from commands._common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command("refine", help="Refine existing images with the SDXL refiner (img2img).")
    def command() -> None:
        not_implemented("refine")
