"""`gm refine`: img2img of existing images with the SDXL refiner or any image preset (the reference's
refiner / image_to_image and its strength semantics)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import MAIN, Common, command
from ._image import (
    CfgOpt,
    LoraOpt,
    NegativeOpt,
    OutOpt,
    SamplerOpt,
    SchedulerOpt,
    SeedOpt,
    StepsOpt,
    VaeDtypeOpt,
    VaeOpt,
    VaeTilingOpt,
    run_images,
)

HELP = (
    "Refine existing images (img2img) with the SDXL refiner or another image preset.\n\n"
    "Each image is encoded by the VAE (posterior sample), noised to the start of the last --strength of "
    "the schedule and denoised again, at its own size floored to multiples of 64. The refiner is "
    "conditioned on size = (height, width), crop (0, 0) and aesthetic score 6.0 (uc 2.5). IMAGE may be "
    "files, folders, or - to read paths from stdin: `gm txt2img \"a fox\" | gm refine - --prompt \"a fox\"`."
)


def register(app: typer.Typer) -> None:
    @command(app, "refine", help=HELP, preset="sdxl-refiner-1.0", preset_help="Preset name or .toml path.")
    def body(
        common: Common,
        images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Images, folders, or - (paths on stdin).")],
        prompt: Annotated[str, typer.Option("--prompt", help="Prompt the refiner is conditioned on.",
                                            rich_help_panel=MAIN)] = "",
        negative: NegativeOpt = "",
        strength: Annotated[float, typer.Option("--strength", help="How much of the schedule to run, in (0, 1].",
                                                rich_help_panel=MAIN)] = 0.3,
        steps: StepsOpt = None,
        sampler: SamplerOpt = None,
        scheduler: SchedulerOpt = None,
        cfg: CfgOpt = None,
        seed: SeedOpt = None,
        lora: LoraOpt = None,
        vae: VaeOpt = None,
        vae_tiling: VaeTilingOpt = "auto",
        vae_dtype: VaeDtypeOpt = None,
        out: OutOpt = "outputs/refine",
    ) -> None:
        from gm.io.files import expand_inputs
        from gm.io.media import IMAGE_SUFFIXES

        run_images(common, "refine", out, prompt=prompt, negative=negative, strength=strength, steps=steps,
                   sampler=sampler, scheduler=scheduler, cfg=cfg, seed=seed,
                   init_images=tuple(expand_inputs(images, IMAGE_SUFFIXES, "image")),
                   lora=lora, vae=vae, vae_tiling=vae_tiling, vae_dtype=vae_dtype)
