"""`gm download`: Fetch checkpoints and datasets; --list shows what is known."""

from __future__ import annotations

import typer

from commands._common import not_implemented


def register(app: typer.Typer) -> None:
    @app.command("download", help="Fetch checkpoints and datasets; --list shows what is known.")
    def command() -> None:
        not_implemented("download")
