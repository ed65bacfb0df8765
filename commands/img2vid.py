"""`gm img2vid`: Animate an image into a short video (SVD, SVD-XT)."""

from __future__ import annotations

import typer

from commands._common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command("img2vid", help="Animate an image into a short video (SVD, SVD-XT).")
    def command() -> None:
        not_implemented("img2vid")
