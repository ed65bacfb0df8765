"""`gm turbo`: One-to-four-step images with SDXL-Turbo or SD-Turbo."""

from __future__ import annotations

import typer

from commands._common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command("turbo", help="One-to-four-step images with SDXL-Turbo or SD-Turbo.")
    def command() -> None:
        not_implemented("turbo")
