"""`gm refine`: img2img of existing images with the SDXL refiner or any image preset (REFERENCE §3.1
api.refiner / image_to_image, §3.4 strength semantics)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from ._common import (
    MAIN,
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
from ._image import CfgOpt, NegativeOpt, SamplerOpt, StepsOpt, emit, prepare

HELP = (
    "Refine existing images (img2img) with the SDXL refiner or another image preset.\n\n"
    "Each image is encoded by the VAE (posterior sample), noised to the start of the last --strength of "
    "the schedule and denoised again, at its own size floored to multiples of 64. The refiner is "
    "conditioned on size = (height, width), crop (0, 0) and aesthetic score 6.0 (uc 2.5). IMAGE may be "
    "files, folders, or - to read paths from stdin: `gm txt2img \"a fox\" | gm refine - --prompt \"a fox\"`."
)


def register(app: typer.Typer) -> None:
    @app.command("refine", help=HELP)
    def command(
        images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Images, folders, or - (paths on stdin).")],
        prompt: Annotated[str, typer.Option("--prompt", help="Prompt the refiner is conditioned on.",
                                            rich_help_panel=MAIN)] = "",
        negative: NegativeOpt = "",
        preset: Annotated[str, typer.Option("--preset", "-p", help="Preset name or .toml path.",
                                            rich_help_panel=MAIN)] = "sdxl-refiner-1.0",
        strength: Annotated[float, typer.Option("--strength", help="How much of the schedule to run, in (0, 1].",
                                                rich_help_panel=MAIN)] = 0.3,
        steps: StepsOpt = None,
        sampler: SamplerOpt = None,
        cfg: CfgOpt = None,
        seed: SeedOpt = None,
        overrides: SetOpt = None,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = "auto",
        low_vram: LowVramOpt = False,
        compile_: CompileOpt = False,
        checkpoint: CheckpointOpt = None,
        unsafe_pickle: UnsafePickleOpt = False,
        out: OutOpt = "outputs/refine",
        show_preset: ShowPresetOpt = False,
        json_mode: JsonOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        def body() -> None:
            from gm.io.files import expand_inputs
            from gm.io.media import IMAGE_SUFFIXES
            from gm.pipelines.image import ImageJob, refine

            chosen = prepare(preset, overrides, show_preset, steps, sampler, cfg)
            paths = expand_inputs(images, IMAGE_SUFFIXES, "image")
            job = ImageJob(
                command="refine", prompt=prompt, negative=negative,
                seed=chosen.defaults.seed if seed is None else seed, count=1, out_dir=Path(out),
                init_images=tuple(paths), strength=strength, checkpoint=checkpoint, unsafe_pickle=unsafe_pickle,
            )
            emit(refine(chosen, runtime(chosen, device, dtype, low_vram, compile_), job))

        run(body, quiet=quiet, debug=debug, json_mode=json_mode)
