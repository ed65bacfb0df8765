"""`gm img2vid`: animate images with Stable Video Diffusion (the reference's simple_video_sample.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import SAMPLING, Common, command
from ._plan import plan_video
from ._video import DecodingTOpt, FormatOpt, FpsOpt, SeedOpt, StepsOpt, VideoOutOpt, output_spec, run_clips

HELP = """Animate images into short videos (SVD, SVD-XT, SVD-XT 1.1).

Each IMAGE (a file, a folder of images, or - to read paths from stdin) becomes NNNNNN.mp4 in the output folder, with the conditioning image beside it as NNNNNN.jpg; the paths go to stdout. Images not at the preset size (576x1024) are resized to cover it and centre-cropped. Every frame carries the invisible watermark; the generation parameters are in the mp4's comment tag.

The video plays at --fps, by default fps-id + 1 (the rate the model was told); the reference script writes every video at 10 fps whatever fps-id says.
"""


def register(app: typer.Typer) -> None:
    @command(app, "img2vid", help=HELP, short_help="Animate an image into a short video (SVD, SVD-XT).",
             preset="svd", preset_help="svd, svd-xt, svd-xt-1.1, svd-image-decoder, svd-xt-image-decoder, or a "
                                       ".toml path.")
    def body(
        common: Common,
        images: Annotated[list[str], typer.Argument(metavar="IMAGE...", help="Image files, folders, or - (stdin).",
                                                    show_default=False)],
        frames: Annotated[int | None, typer.Option("--frames", "-n", help="Frames to generate (default: 14, XT 25).",
                                                   rich_help_panel=SAMPLING)] = None,
        steps: StepsOpt = None,
        fps_id: Annotated[int | None, typer.Option("--fps-id", help="Frame-rate conditioning, 0-239 (default 6).",
                                                   rich_help_panel=SAMPLING)] = None,
        motion_bucket_id: Annotated[int | None, typer.Option(
            "--motion-bucket-id", help="Amount of motion, 0-255 (default 127).", rich_help_panel=SAMPLING)] = None,
        cond_aug: Annotated[float | None, typer.Option(
            "--cond-aug", help="Noise added to the conditioning image (default 0.02).", rich_help_panel=SAMPLING)] = None,
        seed: SeedOpt = None,
        decoding_t: DecodingTOpt = None,
        out: VideoOutOpt = None,
        fmt: FormatOpt = "mp4",
        fps: FpsOpt = None,
    ) -> None:
        from gm.pipelines.video import request_from_preset

        preset = common.load_preset("video", "an image-to-video model",
                                    "use svd, svd-xt or svd-xt-1.1; gm orbit runs sv3d-u/p")
        request = request_from_preset(preset, frames=frames, steps=steps, seed=seed, cond_aug=cond_aug,
                                      decoding_t=decoding_t, fps_id=fps_id, motion_bucket_id=motion_bucket_id)
        request, common = plan_video(common, preset, request)  # --plan prints and exits
        output = output_spec("img2vid", preset.name, out, fmt, fps, default_fps=request.fps_id + 1)
        run_clips(common, "img2vid", preset, images, output, request)
