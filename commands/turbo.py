"""`gm turbo`: 1-4 step images with SDXL-Turbo / SD-Turbo (the reference's turbo demo)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import MAIN, SAMPLING, Common, command
from ._image import (
    BatchSizeOpt,
    CountOpt,
    InitImageOpt,
    LoraOpt,
    OutOpt,
    SeedOpt,
    VaeDtypeOpt,
    VaeOpt,
    VaeTilingOpt,
    requires,
    run_images,
)
from ._jobs import JobsOpt, batch_mode, image_jobs

HELP = (
    "Generate images in 1-4 steps with SDXL-Turbo or SD-Turbo (512x512).\n\n"
    "Ancestral Euler on the sub-schedule sigma(t = 999, 899, 799, 699)[:steps] -> 0, no guidance (uc = c, "
    "one batch), so there is no negative prompt or CFG scale. With --init-image the image is noised to "
    "the last --strength of the 4-step turbo schedule (unless --steps) and denoised from there (img2img)."
)


def register(app: typer.Typer) -> None:
    @command(app, "turbo", help=HELP, preset="sdxl-turbo", preset_help="sdxl-turbo, sd-turbo, or a .toml path.")
    def body(
        common: Common,
        prompt: Annotated[str | None, typer.Argument(help="What to draw. Not with --jobs.",
                                                     show_default=False)] = None,
        steps: Annotated[int | None, typer.Option("--steps", help="1 to 4 (default: the preset's, 1; 4 with --init-image).",
                                                  rich_help_panel=SAMPLING)] = None,
        width: Annotated[int | None, typer.Option("--width", "-W", help="Width in pixels (default 512).",
                                                  rich_help_panel=MAIN)] = None,
        height: Annotated[int | None, typer.Option("--height", "-H", help="Height in pixels (default 512).",
                                                   rich_help_panel=MAIN)] = None,
        init_image: InitImageOpt = None,
        strength: Annotated[float | None, typer.Option("--strength", help="img2img: how much of the schedule to run, "
                                                       "in (0, 1] (default 0.5: one step of the 4-step schedule).",
                                                       rich_help_panel=MAIN)] = None,
        seed: SeedOpt = None,
        num: CountOpt = 1,
        batch_size: BatchSizeOpt = 1,
        lora: LoraOpt = None,
        vae: VaeOpt = None,
        vae_tiling: VaeTilingOpt = "auto",
        vae_dtype: VaeDtypeOpt = None,
        out: OutOpt = "outputs/turbo",
        jobs: JobsOpt = None,
    ) -> None:
        if batch_mode(jobs, prompt is not None, "a PROMPT"):
            return image_jobs(common, "turbo", jobs, out, locals())
        requires("--init-image", init_image is not None, {"--strength": strength is not None})
        run_images(common, "turbo", out, prompt=prompt, steps=steps, width=width, height=height, seed=seed, count=num,
                   batch_size=batch_size, init_images=(init_image,) if init_image is not None else (),
                   strength=strength, lora=lora, vae=vae, vae_tiling=vae_tiling, vae_dtype=vae_dtype)
