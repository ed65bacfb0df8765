"""`gm video4d`: Novel-view videos of a moving object from one video (SV4D, SV4D 2.0)."""

from __future__ import annotations

import typer

from commands._common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command("video4d", help="Novel-view videos of a moving object from one video (SV4D, SV4D 2.0).")
    def command() -> None:
        not_implemented("video4d")
