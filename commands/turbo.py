"""`gm turbo`: 1-4 step images with SDXL-Turbo / SD-Turbo (the reference's turbo demo)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import MAIN, SAMPLING, Common, command
from ._image import CountOpt, LoraOpt, OutOpt, SeedOpt, VaeDtypeOpt, VaeOpt, VaeTilingOpt, run_images

HELP = (
    "Generate images in 1-4 steps with SDXL-Turbo or SD-Turbo (512x512).\n\n"
    "Ancestral Euler on the sub-schedule sigma(t = 999, 899, 799, 699)[:steps] -> 0, no guidance (uc = c, "
    "one batch), so there is no negative prompt or CFG scale."
)


def register(app: typer.Typer) -> None:
    @command(app, "turbo", help=HELP, preset="sdxl-turbo", preset_help="sdxl-turbo, sd-turbo, or a .toml path.")
    def body(
        common: Common,
        prompt: Annotated[str, typer.Argument(help="What to draw (77 CLIP tokens at most).")],
        steps: Annotated[int | None, typer.Option("--steps", help="1 to 4 (default: the preset's, 1).",
                                                  rich_help_panel=SAMPLING)] = None,
        width: Annotated[int | None, typer.Option("--width", "-W", help="Width in pixels (default 512).",
                                                  rich_help_panel=MAIN)] = None,
        height: Annotated[int | None, typer.Option("--height", "-H", help="Height in pixels (default 512).",
                                                   rich_help_panel=MAIN)] = None,
        seed: SeedOpt = None,
        num: CountOpt = 1,
        lora: LoraOpt = None,
        vae: VaeOpt = None,
        vae_tiling: VaeTilingOpt = "auto",
        vae_dtype: VaeDtypeOpt = None,
        out: OutOpt = "outputs/turbo",
    ) -> None:
        run_images(common, "turbo", out, prompt=prompt, steps=steps, width=width, height=height, seed=seed, count=num,
                   lora=lora, vae=vae, vae_tiling=vae_tiling, vae_dtype=vae_dtype)
