"""`gm orbit`: a 21-view orbit of an object from one image with SV3D (scripts/sampling/simple_video_sample.py)."""

from __future__ import annotations

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
    QuietOpt,
    SeedOpt,
    SetOpt,
    ShowPresetOpt,
    UnsafePickleOpt,
    load_preset,
    run,
    runtime,
)
from ._video import DecodingTOpt, FormatOpt, FpsOpt, StepsOpt, VideoOutOpt, output_spec

HELP = """Render a 21-view orbit around the object in each image (SV3D_u, SV3D_p).

The background is removed with rembg (for images without alpha, as the reference; its model is downloaded on first use), the object is centred on a square white canvas and resized to 576x576. SV3D_p follows the camera you give: one --elevation or 21 --elevations (degrees, -90..90) and 21 --azimuths (degrees, 0..360); the last azimuth is the input view. Writes NNNNNN.mp4 (10 fps by default, as the reference) and the prepared view as NNNNNN.png; the paths go to stdout.
"""


def parse_list(text: str | None, option: str) -> list[float] | None:
    """'10,20,30' or '10 20 30' (or a [..] list) -> floats; UsageError on anything else."""
    from gm.errors import UsageError

    if text is None:
        return None
    items = text.strip().strip("[]").replace(",", " ").split()
    try:
        return [float(v) for v in items]
    except ValueError:
        raise UsageError(f"{option} expects numbers separated by commas, got {text!r}",
                         f"e.g. {option} 0,17.1,34.3,...") from None


def register(app: typer.Typer) -> None:
    @app.command("orbit", help=HELP, short_help="Render a 21-view orbit of an object from one image (SV3D).")
    def command(
        images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image files, folders, or - (stdin).",
                                                    show_default=False)],
        preset: Annotated[str, typer.Option("--preset", "-p", help="sv3d-u, sv3d-p, or a .toml path.",
                                            rich_help_panel=MAIN)] = "sv3d-u",
        checkpoint: CheckpointOpt = None,
        unsafe_pickle: UnsafePickleOpt = False,
        elevation: Annotated[float | None, typer.Option("--elevation", metavar="DEG",
                             help="SV3D_p: one elevation for the whole orbit (default 10).",
                             rich_help_panel=SAMPLING)] = None,
        elevations: Annotated[str | None, typer.Option("--elevations", metavar="DEG,...",
                              help="SV3D_p: 21 elevations, comma-separated.", rich_help_panel=SAMPLING)] = None,
        azimuths: Annotated[str | None, typer.Option("--azimuths", metavar="DEG,...",
                            help="SV3D_p: 21 azimuths in [0, 360), comma-separated; the last is the input view "
                                 "(default: 360/21 apart, ending at 0).", rich_help_panel=SAMPLING)] = None,
        image_frame_ratio: Annotated[float | None, typer.Option(
            "--image-frame-ratio", help="Fraction of the frame the object's longer side fills, in (0, 1] "
                                        "(default: keep the object's size in the image).",
            rich_help_panel=SAMPLING)] = None,
        remove_bg: Annotated[bool | None, typer.Option(
            "--remove-bg/--no-remove-bg", help="Remove the background with rembg (default: only for images "
                                               "without alpha).", show_default=False, rich_help_panel=SAMPLING)] = None,
        steps: StepsOpt = None,
        seed: SeedOpt = None,
        overrides: SetOpt = None,
        device: DeviceOpt = "auto",
        dtype: DtypeOpt = "auto",
        low_vram: LowVramOpt = False,
        compile_: CompileOpt = False,
        decoding_t: DecodingTOpt = None,
        out: VideoOutOpt = None,
        fmt: FormatOpt = "mp4",
        fps: FpsOpt = None,
        show_preset: ShowPresetOpt = False,
        as_json: JsonOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        def body() -> None:
            from gm.console import console
            from gm.errors import UsageError
            from gm.io.files import expand_inputs
            from gm.io.media import IMAGE_SUFFIXES
            from gm.pipelines.orbit import orbit_files
            from gm.pipelines.video import request_from_preset

            spec = load_preset(preset, overrides, show_preset)
            if spec.family != "orbit":
                raise UsageError(f"preset {spec.name} is a {spec.family} model, not an orbit one", "use sv3d-u or sv3d-p")
            if elevation is not None and elevations is not None:
                raise UsageError("give --elevation or --elevations, not both")
            elevation_list = parse_list(elevations, "--elevations")
            azimuth_list = parse_list(azimuths, "--azimuths")
            request = request_from_preset(spec, steps=steps, seed=seed, decoding_t=decoding_t)
            output = output_spec("orbit", spec.name, out, fmt, fps, default_fps=10.0, input_suffix=".png")
            paths = expand_inputs(images, (*IMAGE_SUFFIXES, ".gif"), "image")
            chosen = runtime(spec, device, dtype, low_vram, compile_)
            results = orbit_files(paths, spec, chosen, request, output,
                                  elevations_deg=elevation_list if elevation_list is not None else elevation,
                                  azimuths_deg=azimuth_list, frame_ratio=image_frame_ratio, remove_bg=remove_bg,
                                  checkpoint=checkpoint, unsafe_pickle=unsafe_pickle)
            for result in results:
                console.result(result.path, input=result.record["input"], seed=result.record["seed"],
                               frames=result.record["frames"], fps=result.record["fps"])

        run(body, quiet=quiet, debug=debug, json_mode=as_json)
