"""`gm video4d`: novel-view videos of a moving object with SV4D / SV4D 2.0 (the reference's
simple_video_sample_4d.py and simple_video_sample_4d2.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import MAIN, OUTPUT, PERF, SAMPLING, Common, command
from ._plan import plan_video4d
from ._video import SeedOpt, camera_options

HELP = """Make novel-view videos of the object in a video (SV4D 2.0 4-view or 8-view, SV4D).

INPUT is a .gif/.mp4, a folder of .png/.jpg frames or a quoted glob pattern; its first --frames
frames are used. The object is centred on a square white canvas (--image-frame-ratio). SV4D first
renders reference views of frame 0 with SV3D (--sv3d-preset). Writes NNNNNN_process_input.mp4,
one NNNNNN_vNNN.mp4 per novel view, NNNNNN_grid.mp4 (SV4D also _t000 and _diag) at 10 fps; the
paths go to stdout.
"""


def register(app: typer.Typer) -> None:
    @command(app, "video4d", help=HELP, short_help="Novel-view videos of a moving object from one video (SV4D, "
             "SV4D 2.0).", preset="sv4d2", preset_help="sv4d2, sv4d2-8views, sv4d, or a .toml path.")
    def body(
        common: Common,
        source: Annotated[str, typer.Argument(metavar="INPUT", help="Video, frame folder or quoted pattern.",
                                              show_default=False)],
        sv3d_preset: Annotated[str, typer.Option("--sv3d-preset", help="SV4D only: sv3d-u or sv3d-p for the "
                                                 "reference views.", rich_help_panel=MAIN)] = "sv3d-u",
        sv3d_checkpoint: Annotated[str | None, typer.Option("--sv3d-checkpoint", metavar="FILE",
                                   help="SV4D only: the SV3D checkpoint file.", rich_help_panel=MAIN)] = None,
        frames: Annotated[int | None, typer.Option("--frames", help="Input/output frames (SV4D: 21).",
                                                   rich_help_panel=SAMPLING)] = None,
        img_size: Annotated[int | None, typer.Option("--img-size", help="Square size, a multiple of 64 "
                                                     "(default 576; 512 saves memory).", rich_help_panel=SAMPLING)] = None,
        elevation: Annotated[float | None, typer.Option("--elevation", metavar="DEG", help="One elevation for "
                             "every view (SV4D: absolute, default 10; SV4D 2.0: relative to the input, default 0).",
                             rich_help_panel=SAMPLING)] = None,
        elevations: Annotated[str | None, typer.Option("--elevations", metavar="DEG,...", help="SV4D: 21 orbit "
                              "elevations; SV4D 2.0: V+1 (input view first).", rich_help_panel=SAMPLING)] = None,
        azimuths: Annotated[str | None, typer.Option("--azimuths", metavar="DEG,...", help="SV4D: 21 orbit "
                            "azimuths (last = input); SV4D 2.0: V+1 (input view first).",
                            rich_help_panel=SAMPLING)] = None,
        image_frame_ratio: Annotated[float | None, typer.Option("--image-frame-ratio", help="Fraction of the "
                                     "frame the object fills (default: the preset's).", rich_help_panel=SAMPLING)] = None,
        remove_bg: Annotated[bool, typer.Option("--remove-bg", help="Remove the background of frames without "
                                                "alpha (rembg).", rich_help_panel=SAMPLING)] = False,
        pad: Annotated[bool, typer.Option("--pad", help="Ping-pong pad a too-short input.",
                                          rich_help_panel=SAMPLING)] = False,
        steps: Annotated[int | None, typer.Option("--steps", help="Sampler steps (also SV3D's for SV4D).",
                                                  rich_help_panel=SAMPLING)] = None,
        seed: SeedOpt = None,
        encoding_t: Annotated[int | None, typer.Option("--encoding-t", help="Frames per VAE encode call "
                              "(0 = all; default 8).", rich_help_panel=PERF)] = None,
        decoding_t: Annotated[int | None, typer.Option("--decoding-t", help="Frames per VAE decode call "
                              "(0 = all; default 4).", rich_help_panel=PERF)] = None,
        out: Annotated[str | None, typer.Option("--out", "-o", help="Output folder (default "
                       "outputs/video4d/<preset>).", rich_help_panel=OUTPUT)] = None,
    ) -> None:
        from pathlib import Path

        from gm.console import console
        from gm.pipelines.video4d import video4d
        from gm.pipelines.video4d_job import video4d_request

        preset = common.load_preset("video4d", "a 4D model", "use sv4d2, sv4d2-8views or sv4d")
        elevations_deg, azimuths_deg = camera_options(elevation, elevations, azimuths)
        request = video4d_request(preset, source, frames=frames, steps=steps, seed=seed, size=img_size,
                                  frame_ratio=image_frame_ratio, elevations=elevations_deg, azimuths=azimuths_deg,
                                  encoding_t=encoding_t, decoding_t=decoding_t, remove_bg=remove_bg, pad=pad,
                                  sv3d=sv3d_preset)
        request, common = plan_video4d(common, preset, request)  # --plan prints and exits
        folder = Path(out) if out else Path("outputs") / "video4d" / preset.name
        for path in video4d(preset, common.runtime, request, folder, common.checkpoint, sv3d_checkpoint,
                            unsafe_pickle=common.unsafe_pickle):
            console.result(path, seed=request.seed, preset=preset.name)
