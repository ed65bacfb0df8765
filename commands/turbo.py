"""`gm turbo`: 1-4 step images with SDXL-Turbo / SD-Turbo (REFERENCE §3.6, scripts/demo/turbo.py)."""

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
from ._image import CountOpt, emit, prepare

HELP = (
    "Generate images in 1-4 steps with SDXL-Turbo or SD-Turbo (512x512).\n\n"
    "Ancestral Euler on the sub-schedule sigma(t = 999, 899, 799, 699)[:steps] -> 0, no guidance (uc = c, "
    "one batch), so there is no negative prompt or CFG scale."
)


def register(app: typer.Typer) -> None:
    @app.command("turbo", help=HELP)
    def command(
        prompt: Annotated[str, typer.Argument(help="What to draw (77 CLIP tokens at most).")],
        preset: Annotated[str, typer.Option("--preset", "-p", help="sdxl-turbo, sd-turbo, or a .toml path.",
                                            rich_help_panel=MAIN)] = "sdxl-turbo",
        steps: Annotated[int | None, typer.Option("--steps", help="1 to 4 (default: the preset's, 1).",
                                                  rich_help_panel=SAMPLING)] = None,
        width: Annotated[int | None, typer.Option("--width", "-W", help="Width in pixels (default 512).",
                                                  rich_help_panel=MAIN)] = None,
        height: Annotated[int | None, typer.Option("--height", "-H", help="Height in pixels (default 512).",
                                                   rich_help_panel=MAIN)] = None,
        seed: SeedOpt = None,
        num: CountOpt = 1,
        overrides: SetOpt = None,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = "auto",
        low_vram: LowVramOpt = False,
        compile_: CompileOpt = False,
        checkpoint: CheckpointOpt = None,
        unsafe_pickle: UnsafePickleOpt = False,
        out: OutOpt = "outputs/turbo",
        show_preset: ShowPresetOpt = False,
        json_mode: JsonOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        def body() -> None:
            from gm.pipelines.image import ImageJob, txt2img

            chosen = prepare(preset, overrides, show_preset, steps, None, None)
            job = ImageJob(
                command="turbo", prompt=prompt, negative="",
                seed=chosen.defaults.seed if seed is None else seed, count=num, out_dir=Path(out),
                width=width, height=height, checkpoint=checkpoint, unsafe_pickle=unsafe_pickle,
            )
            emit(txt2img(chosen, runtime(chosen, device, dtype, low_vram, compile_), job))

        run(body, quiet=quiet, debug=debug, json_mode=json_mode)
