"""`gm txt2img`: images from a prompt with SDXL / SD 2.1 (REFERENCE §3.1-§3.5: api.text_to_image,
image_to_image, the demo's base -> refiner hand-off)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    MAIN,
    SAMPLING,
    CheckpointOpt,
    CompileOpt,
    DebugOpt,
    DeviceOpt,
    DtypeOpt,
    JsonOpt,
    LowVramOpt,
    OutOpt,
    QuietOpt,
    SeedOpt,
    SetOpt,
    ShowPresetOpt,
    UnsafePickleOpt,
    run,
    runtime,
)
from ._image import CfgOpt, CountOpt, NegativeOpt, SamplerOpt, StepsOpt, emit, prepare, requires

HELP = (
    "Generate images from a prompt (SDXL base 0.9/1.0, SD 2.1 512/768).\n\n"
    "SDXL micro-conditioning: original size = target size = (height, width), crop (0, 0). With --refiner "
    "the base stops early at a noisy latent and the refiner finishes the last --refiner-strength of the "
    "same schedule (the reference demo's hand-off). Paths of the written PNGs go to stdout, so `gm "
    "txt2img \"a fox\" | gm refine - --prompt \"a fox\"` works."
)


def register(app: typer.Typer) -> None:
    @app.command("txt2img", help=HELP)
    def command(
        prompt: Annotated[str, typer.Argument(help="What to draw (77 CLIP tokens at most; longer is cut, with a warning).")],
        negative: NegativeOpt = "",
        preset: Annotated[str, typer.Option("--preset", "-p", help="Preset name or .toml path.",
                                            rich_help_panel=MAIN)] = "sdxl-base-1.0",
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
        overrides: SetOpt = None,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = "auto",
        low_vram: LowVramOpt = False,
        compile_: CompileOpt = False,
        checkpoint: CheckpointOpt = None,
        unsafe_pickle: UnsafePickleOpt = False,
        out: OutOpt = "outputs/txt2img",
        show_preset: ShowPresetOpt = False,
        json_mode: JsonOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        def body() -> None:
            from gm.pipelines.image import ImageJob, RefinerPlan, txt2img

            requires("--init-image", init_image is not None, {"--strength": strength is not None})
            requires("--refiner", refiner is not None, {"--refiner-strength": refiner_strength is not None,
                                                        "--finish/--no-finish": finish is not None,
                                                        "--refiner-checkpoint": refiner_checkpoint is not None})
            chosen = prepare(preset, overrides, show_preset, steps, sampler, cfg)
            plan = None
            if refiner is not None:
                refiner_preset = prepare(refiner, None, False, steps, sampler, cfg)
                plan = RefinerPlan(refiner_preset, 0.15 if refiner_strength is None else refiner_strength,
                                   finish is not False, refiner_checkpoint)
            job = ImageJob(
                command="txt2img", prompt=prompt, negative=negative,
                seed=chosen.defaults.seed if seed is None else seed, count=num, out_dir=Path(out),
                width=width, height=height, aspect=aspect, init_images=(init_image,) if init_image is not None else (),
                strength=0.75 if strength is None else strength,
                refiner=plan, checkpoint=checkpoint, unsafe_pickle=unsafe_pickle,
            )
            emit(txt2img(chosen, runtime(chosen, device, dtype, low_vram, compile_), job))

        run(body, quiet=quiet, debug=debug, json_mode=json_mode)

