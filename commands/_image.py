"""Options and glue shared by the image commands (`txt2img`, `refine`, `turbo`).

Kept apart from `_common.py` because only these three commands take prompts and samplers. No
torch here: the engine is imported inside the command bodies.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._common import MAIN, SAMPLING

SAMPLERS = ("euler", "heun", "euler_a", "dpmpp_2s_a", "dpmpp_2m", "lms")

NegativeOpt = Annotated[str, typer.Option(
    "--negative", help="Negative prompt (uc). Ignored by SDXL base / Turbo, whose uc zeroes the text embeddings.",
    rich_help_panel=MAIN)]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Sampling steps (default: the preset's).",
                                              rich_help_panel=SAMPLING)]
SamplerOpt = Annotated[str | None, typer.Option("--sampler", metavar="NAME",
                                                help=f"One of {', '.join(SAMPLERS)} (default: the preset's).",
                                                rich_help_panel=SAMPLING)]
CfgOpt = Annotated[float | None, typer.Option("--cfg", help="Classifier-free guidance scale (default: the preset's).",
                                              rich_help_panel=SAMPLING)]
CountOpt = Annotated[int, typer.Option("-n", "--num", help="Number of images; image k uses seed + k.",
                                       rich_help_panel=SAMPLING)]


def check_sampler(name: str | None) -> None:
    from gm.errors import UsageError

    if name is not None and name not in SAMPLERS:
        raise UsageError(f"unknown sampler {name!r}", f"use one of {', '.join(SAMPLERS)}")


def requires(needed: str, present: bool, given: dict[str, bool]) -> None:
    """Options that only mean something with `needed` ({option: was it set}): an error when `needed`
    is absent, rather than silently ignoring them."""
    from gm.errors import UsageError

    used = [option for option, on in given.items() if on]
    if used and not present:
        raise UsageError(f"{' and '.join(used)} need{'s' * (len(used) == 1)} {needed}",
                         f"add {needed} or drop {' and '.join(used)}")


def prepare(preset_name: str, overrides: list[str] | None, show: bool, steps: int | None, sampler: str | None,
            cfg: float | None) -> Any:
    """Load the preset, write the command-line choices into it, and with --show-preset print it."""
    import sys

    from gm import presets
    from gm.pipelines.image import effective_preset

    check_sampler(sampler)
    preset = effective_preset(presets.load(preset_name, overrides or []), steps, sampler, cfg)
    if preset.family != "image":
        from gm.errors import UsageError

        raise UsageError(f"preset '{preset.name}' is a {preset.family} model, not an image model",
                         "pick an image preset, e.g. --preset sdxl-base-1.0")
    if show:
        sys.stdout.write(presets.to_toml(preset))
        raise typer.Exit(0)
    return preset


def emit(results: Any) -> int:
    """Print each written image (path, or JSON with --json) as soon as it exists."""
    from gm.console import console

    count = 0
    for result in results:
        console.result(result.path, seed=result.seed, prompt=result.prompt)
        count += 1
    return count

