"""The `gm` command: one Typer app, one module per subcommand (imported without torch)."""

from __future__ import annotations

from typing import Annotated

import typer

from . import (
    detect_watermark,
    download,
    img2vid,
    orbit,
    refine,
    train,
    turbo,
    txt2img,
    video4d,
)

app = typer.Typer(
    name="gm",
    help="Run Stability AI's generative models (SDXL, SD 2.1, Turbo, SVD, SV3D, SV4D) and train small "
    "diffusion models. Results go to stdout (one path per line), progress to stderr.",
    no_args_is_help=True,
    rich_markup_mode="rich",
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        from importlib.metadata import version

        typer.echo(f"gm {version('gm')}")
        raise typer.Exit(0)


@app.callback()
def main_callback(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
) -> None:
    """gm: Stability AI's generative models in one command."""


for module in (txt2img, refine, turbo, img2vid, orbit, video4d, train, detect_watermark, download):
    module.register(app)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
