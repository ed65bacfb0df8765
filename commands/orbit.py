"""`gm orbit`: Render a 21-view orbit of an object from one image (SV3D)."""

from __future__ import annotations

import typer

from commands._common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command("orbit", help="Render a 21-view orbit of an object from one image (SV3D).")
    def command() -> None:
        not_implemented("orbit")
