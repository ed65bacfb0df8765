"""`gm detect-watermark`: Check images and videos for the invisible watermark."""

from __future__ import annotations

import typer

from commands._common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command("detect-watermark", help="Check images and videos for the invisible watermark.")
    def command() -> None:
        not_implemented("detect-watermark")
