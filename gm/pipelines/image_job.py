"""The Job of the image commands (txt2img, refine, turbo): built once from the preset's defaults and
the user's options (command line or Python), with the options written into the effective preset
(what the outputs record). `gm.pipelines.image` checks the rest and runs it."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from gm import presets
from gm.addons import Addons, addons_from, check_tiling
from gm.diffusion.recipe import check_names
from gm.errors import UsageError
from gm.presets import Preset


@dataclass(frozen=True)
class RefinerPlan:
    """`gm txt2img --refiner`: which refiner, how much of the schedule it runs, and how."""

    preset: Preset
    strength: float = 0.15
    finish: bool = True  # hand over the still-noisy latent (demo default); False = SDEdit the clean one
    checkpoint: str | None = None


@dataclass(frozen=True)
class ImageJob:
    """One invocation of txt2img / refine / turbo, after option parsing."""

    command: Literal["txt2img", "refine", "turbo"]
    prompt: str
    negative: str
    seed: int
    count: int
    out_dir: Path | None  # None: nothing is written (the Python API without save)
    width: int | None = None  # None: the preset's (txt2img) or the input image's (img2img)
    height: int | None = None
    aspect: str | None = None
    init_images: tuple[Path, ...] = ()
    strength: float = 1.0  # img2img; 1.0 = the whole schedule
    refiner: RefinerPlan | None = None
    checkpoint: str | None = None
    unsafe_pickle: bool = False
    addons: Addons = Addons()  # --lora (then the prompt's <lora:…> tags) and --vae
    prompt_loras: tuple[tuple[str, float], ...] = ()  # the prompt's <lora:name:w> tags
    vae_tiling: str = "auto"

    @property
    def encoded_prompt(self) -> str:
        """The prompt the text encoders see: without its <lora:…> tags (the outputs keep them, as A1111's do)."""
        from gm.lora import extract_prompt_loras

        return extract_prompt_loras(self.prompt)[0]


def effective_preset(preset: Preset, steps: int | None = None, sampler: str | None = None, cfg: float | None = None,
                     scheduler: str | None = None) -> Preset:
    """The preset with the user's choices written in (that is what outputs record); sampler and
    scheduler names are checked against their registries."""
    check_names(sampler or preset.sampler.name, scheduler or preset.sampler.scheduler)
    if steps is not None:
        preset = presets.replace(preset, "sampler", steps=steps)
    if sampler is not None:
        preset = presets.replace(preset, "sampler", name=sampler)
    if scheduler is not None:
        preset = presets.replace(preset, "sampler", scheduler=scheduler)
    if cfg is not None:
        if not math.isfinite(cfg):
            raise UsageError(f"--cfg must be a finite number, got {cfg}", "e.g. --cfg 7")
        preset = presets.replace(preset, "guider", scale=cfg)
    return preset


def check_strength(value: float, option: str) -> None:
    if not 0.0 < value <= 1.0:
        raise UsageError(f"{option} must be in (0, 1], got {value}", f"e.g. {option} 0.5")




def image_preset(name: str | Preset, overrides: list[str] | tuple[str, ...] = ()) -> Preset:
    """An image-family preset (a name, a path, or one already read), or a UsageError."""
    preset = name if isinstance(name, Preset) else presets.load(name, list(overrides))
    if preset.family != "image":
        raise UsageError(f"preset '{preset.name}' is a {preset.family} model, not an image model",
                         "pick an image preset, e.g. --preset sdxl-base-1.0")
    return preset


def image_job(preset: Preset, command: Literal["txt2img", "refine", "turbo"], *, prompt: str = "",
              negative: str = "", seed: int | None = None, count: int = 1, out_dir: Path | None = None,
              steps: int | None = None, sampler: str | None = None, scheduler: str | None = None,
              cfg: float | None = None, width: int | None = None, height: int | None = None, aspect: str | None = None,
              init_images: tuple[Path, ...] = (), strength: float | None = None, refiner: str | Preset | None = None,
              refiner_strength: float | None = None, finish: bool | None = None,
              refiner_checkpoint: str | None = None, checkpoint: str | None = None,
              unsafe_pickle: bool = False, loras: tuple = (), vae: str | None = None,
              vae_tiling: str = "auto") -> tuple[Preset, ImageJob]:
    """(effective preset, job) from the preset's defaults and the user's options (None = default)."""
    from gm.lora import extract_prompt_loras

    tags = tuple(extract_prompt_loras(prompt)[1])
    given = addons_from(loras, vae)
    extra = Addons(given.loras + tags, given.vae)
    chosen = effective_preset(preset, steps, sampler, cfg, scheduler)
    plan = None
    if refiner is not None:  # the same steps / sampler / scheduler / CFG as the base
        plan = RefinerPlan(effective_preset(image_preset(refiner), steps, sampler, cfg, scheduler),
                           0.15 if refiner_strength is None else refiner_strength, finish is not False,
                           refiner_checkpoint)
    default_strength = 0.3 if command == "refine" else 0.75
    job = ImageJob(command=command, prompt=prompt, negative=negative,
                   seed=chosen.defaults.seed if seed is None else seed, count=count, out_dir=out_dir,
                   width=width, height=height, aspect=aspect, init_images=tuple(Path(p) for p in init_images),
                   strength=default_strength if strength is None else strength, refiner=plan,
                   checkpoint=checkpoint, unsafe_pickle=unsafe_pickle, addons=extra, prompt_loras=tags,
                   vae_tiling=check_tiling(vae_tiling))
    return chosen, job
