"""`gm img2vid`: animate images into short videos with SVD / SVD-XT (scripts/sampling/simple_video_sample.py)."""

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

HELP = """Animate images into short videos (SVD, SVD-XT, SVD-XT 1.1).

Each IMAGE (a file, a folder of images, or - to read paths from stdin) becomes NNNNNN.mp4 in the output folder, with the conditioning image beside it as NNNNNN.jpg; the paths go to stdout. Images not at the preset size (576x1024) are resized to cover it and centre-cropped. Every frame carries the invisible watermark; the generation parameters are in the mp4's comment tag.

The video plays at --fps, by default fps-id + 1 (the rate the model was told); the reference script writes every video at 10 fps whatever fps-id says.
"""


def register(app: typer.Typer) -> None:
    @app.command("img2vid", help=HELP, short_help="Animate an image into a short video (SVD, SVD-XT).")
    def command(
        images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image files, folders, or - (stdin).",
                                                    show_default=False)],
        preset: Annotated[str, typer.Option("--preset", "-p", help="svd, svd-xt, svd-xt-1.1, svd-image-decoder, "
                                            "svd-xt-image-decoder, or a .toml path.", rich_help_panel=MAIN)] = "svd",
        checkpoint: CheckpointOpt = None,
        unsafe_pickle: UnsafePickleOpt = False,
        frames: Annotated[int | None, typer.Option("--frames", "-n", help="Frames to generate (default: 14, XT 25).",
                                                   rich_help_panel=SAMPLING)] = None,
        steps: StepsOpt = None,
        fps_id: Annotated[int | None, typer.Option("--fps-id", help="Frame-rate conditioning (default 6).",
                                                   rich_help_panel=SAMPLING)] = None,
        motion_bucket_id: Annotated[int | None, typer.Option(
            "--motion-bucket-id", help="Amount of motion, 0-255 (default 127).", rich_help_panel=SAMPLING)] = None,
        cond_aug: Annotated[float | None, typer.Option(
            "--cond-aug", help="Noise added to the conditioning image (default 0.02).", rich_help_panel=SAMPLING)] = None,
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
            from gm.pipelines.img2vid import run_img2vid
            from gm.pipelines.video import request_from_preset

            spec = load_preset(preset, overrides, show_preset)
            if spec.family != "video":
                raise UsageError(f"preset {spec.name} is not an image-to-video model (family {spec.family})",
                                 "use svd, svd-xt or svd-xt-1.1; gm orbit runs sv3d-u/p")
            request = request_from_preset(spec, frames=frames, steps=steps, seed=seed, cond_aug=cond_aug,
                                          decoding_t=decoding_t, fps_id=fps_id, motion_bucket_id=motion_bucket_id)
            output = output_spec("img2vid", spec.name, out, fmt, fps, default_fps=request.fps_id + 1)
            paths = expand_inputs(images, (*IMAGE_SUFFIXES, ".gif"), "image")
            chosen = runtime(spec, device, dtype, low_vram, compile_)
            for result in run_img2vid(paths, spec, chosen, request, output, checkpoint, unsafe_pickle):
                console.result(result.path, input=result.record["input"], seed=result.record["seed"],
                               frames=result.record["frames"], fps=result.record["fps"])

        run(body, quiet=quiet, debug=debug, json_mode=as_json)
