"""`gm orbit`: a 21-view orbit of an object from one image with SV3D (the reference's simple_video_sample.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import SAMPLING, Common, command
from ._plan import plan_video
from ._video import (
    DecodingTOpt,
    FormatOpt,
    FpsOpt,
    SeedOpt,
    StepsOpt,
    VideoOutOpt,
    camera_options,
    output_spec,
    run_clips,
)

HELP = """Render a 21-view orbit around the object in each image (SV3D_u, SV3D_p).

The background is removed with rembg (for images without alpha, as the reference; its model is downloaded on first use), the object is centred on a square white canvas and resized to 576x576. SV3D_p follows the camera you give: one --elevation or 21 --elevations (degrees, -90..90) and 21 --azimuths (degrees, 0..360); the last azimuth is the input view. Writes NNNNNN.mp4 (10 fps by default, as the reference) and the prepared view as NNNNNN.png; the paths go to stdout.
"""


def register(app: typer.Typer) -> None:
    @command(app, "orbit", help=HELP, short_help="Render a 21-view orbit of an object from one image (SV3D).",
             preset="sv3d-u", preset_help="sv3d-u, sv3d-p, or a .toml path.")
    def body(
        common: Common,
        images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image files, folders, or - (stdin).",
                                                    show_default=False)],
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
        decoding_t: DecodingTOpt = None,
        out: VideoOutOpt = None,
        fmt: FormatOpt = "mp4",
        fps: FpsOpt = None,
    ) -> None:
        from gm.pipelines.video import request_from_preset

        preset = common.load_preset("orbit", "an orbit model", "use sv3d-u or sv3d-p")
        elevations_deg, azimuths_deg = camera_options(elevation, elevations, azimuths)
        request = request_from_preset(preset, steps=steps, seed=seed, decoding_t=decoding_t)
        request, common = plan_video(common, preset, request)  # --plan prints and exits
        output = output_spec("orbit", preset.name, out, fmt, fps, default_fps=10.0, input_suffix=".png")
        run_clips(common, "orbit", preset, images, output, request, elevations_deg=elevations_deg,
                  azimuths_deg=azimuths_deg, frame_ratio=image_frame_ratio, remove_bg=remove_bg)
