"""Options shared by `gm img2vid` and `gm orbit` (and their common output step)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import OUTPUT, PERF, SAMPLING

StepsOpt = Annotated[int | None, typer.Option("--steps", help="Sampler steps (default: the preset's).",
                                              rich_help_panel=SAMPLING)]
DecodingTOpt = Annotated[
    int | None,
    typer.Option("--decoding-t", metavar="N",
                 help="Frames per VAE decode call; fewer use less memory. Default: as many as fit 8 GiB of "
                      "decoder activations and the free GPU memory (3 at 576x1024, 6 at 576x576, the same on "
                      "the CPU). The reference script uses 14. With the temporal decoder the result depends "
                      "on it slightly.", rich_help_panel=PERF),
]
FpsOpt = Annotated[
    float | None,
    typer.Option("--fps", help="Frame rate of the written video. Default: fps-id + 1 for SVD (the rate the model "
                               "was conditioned on, as the reference's gradio app), 10 for SV3D. "
                               "The reference script always writes 10 fps.", rich_help_panel=OUTPUT),
]
FormatOpt = Annotated[
    str,
    typer.Option("--format", "-f", metavar="mp4|gif|frames",
                 help="mp4 (H.264), gif, or frames (a folder of PNGs).", rich_help_panel=OUTPUT),
]
VideoOutOpt = Annotated[
    str | None,
    typer.Option("--out", "-o", help="Output folder (default: outputs/<command>/<preset>).", rich_help_panel=OUTPUT),
]


def output_spec(command: str, preset_name: str, out: str | None, fmt: str, fps: float | None,
                default_fps: float, input_suffix: str = ".jpg"):
    """Checked OutputSpec (UsageError on a bad --format or --fps)."""
    from pathlib import Path

    from gm.errors import UsageError
    from gm.pipelines.video_output import FORMATS, OutputSpec

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    rate = default_fps if fps is None else fps
    if not 0 < rate <= 240:
        raise UsageError(f"--fps must be in (0, 240], got {rate:g}")
    folder = Path(out) if out else Path("outputs") / command / preset_name
    return OutputSpec(out_dir=folder, format=fmt, fps=rate, input_suffix=input_suffix)  # type: ignore[arg-type]
