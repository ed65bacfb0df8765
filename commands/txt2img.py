"""`gm txt2img`: images from a prompt with SDXL / SD 2.1 (the reference's text_to_image and
image_to_image, and its demo's base -> refiner hand-off)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import MAIN, SAMPLING, Common, command
from ._image import (
    CfgOpt,
    CountOpt,
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
    requires,
    run_images,
)

HELP = (
    "Generate images from a prompt (SDXL base 0.9/1.0, SD 2.1 512/768).\n\n"
    "SDXL micro-conditioning: original size = target size = (height, width), crop (0, 0). With --refiner "
    "the base stops early at a noisy latent and the refiner finishes the last --refiner-strength of the "
    "same schedule (the reference demo's hand-off). Paths of the written PNGs go to stdout, so `gm "
    "txt2img \"a fox\" | gm refine - --prompt \"a fox\"` works."
)


def register(app: typer.Typer) -> None:
    @command(app, "txt2img", help=HELP, preset="sdxl-base-1.0", preset_help="Preset name or .toml path.")
    def body(
        common: Common,
        prompt: Annotated[str, typer.Argument(help="What to draw (77 CLIP tokens at most; longer is cut, with a warning).")],
        negative: NegativeOpt = "",
        width: Annotated[int | None, typer.Option("--width", "-W", help="Width in pixels, a multiple of 8 "
                                                  "(64 recommended; default: the preset's).", rich_help_panel=MAIN)] = None,
        height: Annotated[int | None, typer.Option("--height", "-H", help="Height in pixels, a multiple of 8.",
                                                   rich_help_panel=MAIN)] = None,
        aspect: Annotated[str | None, typer.Option("--aspect", metavar="W:H", help="Pick the nearest size of the SDXL "
                                                   "resolution table, e.g. 16:9 -> 1344x768 (scaled for 512/768 models).",
                                                   rich_help_panel=MAIN)] = None,
        init_image: Annotated[Path | None, typer.Option("--init-image", help="Start from this image (img2img); its "
                                                        "size floored to 64 unless --width/--height/--aspect.",
                                                        rich_help_panel=MAIN)] = None,
        strength: Annotated[float | None, typer.Option("--strength", help="img2img: how much of the schedule to run, "
                                                       "in (0, 1]; 1 = from pure noise (default 0.75).",
                                                       rich_help_panel=MAIN)] = None,
        steps: StepsOpt = None,
        sampler: SamplerOpt = None,
        scheduler: SchedulerOpt = None,
        cfg: CfgOpt = None,
        seed: SeedOpt = None,
        num: CountOpt = 1,
        refiner: Annotated[str | None, typer.Option("--refiner", metavar="PRESET", help="Finish with a refiner, e.g. "
                                                    "sdxl-refiner-1.0 (same steps/sampler/CFG).",
                                                    rich_help_panel=SAMPLING)] = None,
        refiner_strength: Annotated[float | None, typer.Option("--refiner-strength", help="Share of the schedule "
                                                               "the refiner runs (default 0.15).",
                                                               rich_help_panel=SAMPLING)] = None,
        finish: Annotated[bool | None, typer.Option("--finish/--no-finish", help="Hand the still-noisy latent to the "
                                                    "refiner (default), or let the base finish and refine the clean "
                                                    "latent with fresh noise.", rich_help_panel=SAMPLING)] = None,
        refiner_checkpoint: Annotated[str | None, typer.Option("--refiner-checkpoint", metavar="FILE",
                                                               help="Checkpoint file of the refiner.",
                                                               rich_help_panel=MAIN)] = None,
        lora: LoraOpt = None,
        vae: VaeOpt = None,
        vae_tiling: VaeTilingOpt = "auto",
        vae_dtype: VaeDtypeOpt = None,
        out: OutOpt = "outputs/txt2img",
    ) -> None:
        requires("--init-image", init_image is not None, {"--strength": strength is not None})
        requires("--refiner", refiner is not None, {"--refiner-strength": refiner_strength is not None,
                                                    "--finish/--no-finish": finish is not None,
                                                    "--refiner-checkpoint": refiner_checkpoint is not None})
        run_images(common, "txt2img", out, prompt=prompt, negative=negative, width=width, height=height,
                   aspect=aspect, init_images=(init_image,) if init_image is not None else (), strength=strength,
                   steps=steps, sampler=sampler, scheduler=scheduler, cfg=cfg, seed=seed, count=num, refiner=refiner,
                   refiner_strength=refiner_strength, finish=finish, refiner_checkpoint=refiner_checkpoint,
                   lora=lora, vae=vae, vae_tiling=vae_tiling, vae_dtype=vae_dtype)
