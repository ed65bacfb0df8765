"""Options and glue shared by the image commands (`txt2img`, `refine`, `turbo`).

No torch here: the engine is imported inside the command bodies. Sampler and scheduler names are
checked against gm.diffusion's registries when the job is built, not listed here.
"""

from __future__ import annotations

from typing import Annotated, Any

import typer

from ._common import MAIN, OUTPUT, PERF, SAMPLING, Common
from ._plan import plan_images

PRESET_HELP = "Preset name or .toml path."
NegativeOpt = Annotated[str, typer.Option(
    "--negative", help="Negative prompt (uc). Ignored by SDXL base / Turbo, whose uc zeroes the text embeddings.",
    rich_help_panel=MAIN)]
StepsOpt = Annotated[int | None, typer.Option("--steps", help="Sampling steps (default: the preset's).",
                                              rich_help_panel=SAMPLING)]
SamplerOpt = Annotated[str | None, typer.Option("--sampler", metavar="NAME",
                                                help="euler, heun, euler_a, dpmpp_2m, ... (default: the preset's; "
                                                     "an unknown name lists them all).", rich_help_panel=SAMPLING)]
SchedulerOpt = Annotated[str | None, typer.Option("--scheduler", metavar="NAME",
                                                  help="Sigma spacing: normal (the preset's discretization) or a "
                                                       "registered scheduler (an unknown name lists them).",
                                                  rich_help_panel=SAMPLING)]
CfgOpt = Annotated[float | None, typer.Option("--cfg", help="Classifier-free guidance scale (default: the preset's).",
                                              rich_help_panel=SAMPLING)]
CountOpt = Annotated[int, typer.Option("-n", "--num", help="Number of images; image k uses seed + k.",
                                       rich_help_panel=SAMPLING)]
SeedOpt = Annotated[int | None, typer.Option("--seed", help="Random seed (default: the preset's).",
                                             rich_help_panel=SAMPLING)]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=OUTPUT)]
LoraOpt = Annotated[list[str] | None, typer.Option(
    "--lora", metavar="FILE[:SCALE]", help="Merge a LoRA (.safetensors, or a name found in $GM_CHECKPOINTS, "
    "./checkpoints or their loras/ folder) at SCALE (default 1); repeatable. <lora:NAME:W> in the prompt does "
    "the same.", rich_help_panel=MAIN)]
VaeOpt = Annotated[str | None, typer.Option("--vae", metavar="FILE", help="Use this VAE (.safetensors) in place of "
                                            "the checkpoint's, e.g. the fp16-fix SDXL VAE.", rich_help_panel=MAIN)]
VaeTilingOpt = Annotated[str, typer.Option("--vae-tiling", metavar="auto|on|off", help="Decode (and encode) the "
                                           "image in overlapping tiles: auto = when the estimated memory exceeds "
                                           "the free GPU memory.", rich_help_panel=PERF)]
VaeDtypeOpt = Annotated[str | None, typer.Option("--vae-dtype", metavar="fp16|bf16|fp32", help="VAE precision "
                                                 "(default: the preset's, fp32); fp16 needs an fp16-safe VAE such as "
                                                 "the fp16-fix SDXL VAE (--vae).", rich_help_panel=PERF)]


def requires(needed: str, present: bool, given: dict[str, bool]) -> None:
    """Options that only mean something with `needed` ({option: was it set}): an error when `needed`
    is absent, rather than silently ignoring them."""
    from gm.errors import UsageError

    used = [option for option, on in given.items() if on]
    if used and not present:
        raise UsageError(f"{' and '.join(used)} need{'s' * (len(used) == 1)} {needed}",
                         f"add {needed} or drop {' and '.join(used)}")


def run_images(common: Common, command: str, out: str, **options: Any) -> None:
    """Preset + options -> the image Job -> run -> one line per written image on stdout."""
    from pathlib import Path

    from gm import presets
    from gm.console import console
    from gm.pipelines.image import refine, txt2img
    from gm.pipelines.image_job import image_job, image_preset

    preset = with_vae_dtype(image_preset(common.preset, common.overrides or []), options.pop("vae_dtype", None),
                            options.get("vae"))
    options["loras"] = tuple(options.pop("lora", None) or ())
    preset, job = image_job(preset, command,  # type: ignore[arg-type]
                            out_dir=Path(out), checkpoint=common.checkpoint, unsafe_pickle=common.unsafe_pickle,
                            **options)
    if common.show_preset:
        import sys

        sys.stdout.write(presets.to_toml(preset))
        raise typer.Exit(0)
    common, job = plan_images(common, preset, job)  # --plan prints and exits; --max-vram fits
    run = refine if command == "refine" else txt2img
    for result in run(preset, common.runtime(preset), job):
        console.result(result.path, seed=result.seed, prompt=result.prompt)


def with_vae_dtype(preset: Any, vae_dtype: str | None, vae: str | None) -> Any:
    """--vae-dtype written into the preset's [perf] table (the outputs record it)."""
    from gm import presets
    from gm.console import console
    from gm.errors import UsageError

    if vae_dtype is None:
        return preset
    if vae_dtype not in ("fp16", "bf16", "fp32"):
        raise UsageError(f"--vae-dtype must be fp16, bf16 or fp32, got {vae_dtype!r}", "e.g. --vae-dtype fp16")
    if vae_dtype == "fp16" and vae is None:
        console.warn("--vae-dtype fp16 with the checkpoint's own VAE: the SDXL VAE overflows in fp16 (NaN); "
                     "use an fp16-safe VAE with --vae (e.g. the fp16-fix SDXL VAE)")
    return presets.replace(preset, "perf", vae_dtype=vae_dtype)
