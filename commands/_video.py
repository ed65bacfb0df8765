"""Options shared by `gm img2vid` and `gm orbit`, and their common job -> run -> print step."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._common import OUTPUT, PERF, SAMPLING, Common

SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed; input k uses seed + k (default: the "
                                             "preset's).", rich_help_panel=SAMPLING)]
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
    from gm.io.files import ensure_dir
    from gm.outputs import FORMATS, OutputSpec

    if fmt not in FORMATS:
        raise UsageError(f"--format {fmt!r} is not one of {', '.join(FORMATS)}")
    rate = default_fps if fps is None else fps
    if not 0 < rate <= 240:
        raise UsageError(f"--fps must be in (0, 240], got {rate:g}")
    folder = Path(out) if out else Path("outputs") / command / preset_name
    ensure_dir(folder)  # an --out that cannot be made fails now, not after sampling (a failed run removes it)
    return OutputSpec(out_dir=folder, format=fmt, fps=rate, input_suffix=input_suffix)  # type: ignore[arg-type]


def run_clips(common: Common, command: str, preset: Any, images: list[str], output: Any, request: Any,
              **options: Any) -> None:
    """Inputs -> the pipeline (img2vid or orbit) -> one line per written clip on stdout."""
    from gm.console import console
    from gm.io.files import expand_inputs
    from gm.io.media import IMAGE_SUFFIXES
    from gm.pipelines.img2vid import run_img2vid
    from gm.pipelines.orbit import orbit_files

    paths = expand_inputs(images, (*IMAGE_SUFFIXES, ".gif"), "image")
    run = run_img2vid if command == "img2vid" else orbit_files
    for result in run(paths, preset, common.runtime(preset), request, output, checkpoint=common.checkpoint,
                      unsafe_pickle=common.unsafe_pickle, **options):
        record = result.record
        console.result(result.path, input=record["input"], seed=record["seed"], frames=record["frames"],
                       fps=record["fps"])


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


def camera_options(elevation: float | None, elevations: str | None,
                   azimuths: str | None) -> tuple[float | list[float] | None, list[float] | None]:
    """(--elevation or the --elevations list, the --azimuths list); both elevation forms is an error."""
    from gm.errors import UsageError

    if elevation is not None and elevations is not None:
        raise UsageError("give --elevation or --elevations, not both")
    listed = parse_list(elevations, "--elevations")
    return (listed if listed is not None else elevation), parse_list(azimuths, "--azimuths")
