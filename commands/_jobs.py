"""`--jobs FILE` for every generating command: the shared option, the checks, and the glue from a
command's options to gm.batch.run_jobs (the image family here, the video families in _jobs_video).

A job line holds the command's own option names; the command line gives the defaults. A line can
change what is sampled (prompt, seed, steps, sampler, CFG, size, inputs, camera, ...), never what is
loaded (preset, checkpoint, device, precision), so one model per process serves every job.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any

import typer

from ._common import MAIN, Common

JobsOpt = Annotated[str | None, typer.Option(
    "--jobs", metavar="FILE", help="Run every job of FILE with one model load: JSON Lines of this command's "
    "options (a plain line is a prompt), - for stdin. Job k writes OUT/job-00000k/ (or OUT/<id>/) and "
    "OUT/manifest.jsonl; a re-run resumes; torchrun shards the jobs.", rich_help_panel=MAIN)]

# Line options (name -> JSON type) per command; the rest of the command line applies to every job.
_PROMPT = {"prompt": str, "seed": (int, str), "steps": int, "width": int, "height": int, "num": int, "n": int}
_SAMPLING = {"negative": str, "sampler": str, "scheduler": str, "cfg": float}
IMAGE_OPTIONS: dict[str, dict[str, Any]] = {
    "txt2img": {**_PROMPT, **_SAMPLING, "aspect": str, "init_image": Path, "strength": float,
                "refiner_strength": float, "finish": bool},
    "turbo": _PROMPT,
    "refine": {"input": (Path, list), "prompt": str, "seed": (int, str), "steps": int, "strength": float, **_SAMPLING},
}


def batch_mode(jobs: str | None, given: bool, what: str) -> bool:
    """True for `--jobs FILE`; a UsageError when neither or both of `what` and --jobs are given."""
    from gm.errors import UsageError

    if jobs is None and not given:
        raise UsageError(f"missing {what}", f"give {what}, or --jobs FILE for many jobs")
    if jobs is not None and given:
        raise UsageError(f"give {what} or --jobs FILE, not both", f"put the {what.split()[-1].lower()} in the job lines")
    return jobs is not None


def merge(defaults: Mapping[str, Any], line: Mapping[str, Any], renames: Mapping[str, str]) -> dict[str, Any]:
    """The command-line values overridden by a line's options (line names renamed to the command's).

    A job with no seed (neither on its line nor --seed) gets one derived from its line, so a re-run
    of the file makes the same job (and resumes it) instead of drawing a fresh seed each time."""
    import hashlib
    import json

    from gm.errors import UsageError

    renamed: dict[str, Any] = {}
    for key, value in line.items():
        name = renames.get(key, key)
        if name in renamed:
            raise UsageError(f"'{key}' and another name of the same option are both given")
        renamed[name] = value
    merged = {**defaults, **renamed}
    if "seed" in merged and merged["seed"] is None:
        text = json.dumps(line, sort_keys=True, default=str).encode()
        merged["seed"] = int.from_bytes(hashlib.sha256(text).digest()[:4], "big") % 2**31
    return merged


def runtime_of(common: Common, device: str | None) -> Callable[[Any], Any]:
    """preset -> its Runtime with the command's precision options, on this rank's device."""
    from gm.device import runtime_for

    def runtime(preset: Any) -> Any:
        return runtime_for(preset.perf, device or common.device, None if common.dtype == "auto" else common.dtype,
                           common.low_vram or None, common.compile_ or None)

    return runtime


def load_model(common: Common, preset: Any, ranks: Any, addons: Any = None) -> Any:
    """One gm.api.Model of `preset` for this process (the command's loader and runtime; `addons`:
    the LoRAs / VAE of the command line, merged once for every job)."""
    from gm.addons import Addons
    from gm.api import Model
    from gm.loader import load

    runtime = runtime_of(common, ranks.device)(preset)
    path, addons = common.checkpoint, addons or Addons()
    return Model(preset, load(preset, runtime, path, common.unsafe_pickle, addons), runtime, path,
                 common.unsafe_pickle, addons)


def serve(common: Common, jobs: str, out: str | Path, options: Mapping[str, Any], validate: Callable[[dict], Any],
          load: Callable[[Any], Any], run_one: Callable[[Any, Any, Path], dict[str, Any]], label: str,
          prompt_key: str | None = None) -> None:
    """gm.batch.run_jobs with the command's device; the summary line goes to stderr."""
    from gm.batch import run_jobs

    run_jobs(jobs, validate=validate, options=options, load_model=load, run_one=run_one, out_dir=out,
             prompt_key=prompt_key, device=common.device, label=label)


class _Checked(Exception):
    """Raised by _Probe when a pipeline reaches for its model: every check before loading passed."""


class _Probe:
    @property
    def engine(self) -> Any:
        raise _Checked


def precheck(run: Callable[..., Any], preset: Any, job: Any) -> None:
    """Run an image pipeline up to the point where it needs the model, so that a line's bad values
    (size, aspect with width, strength, unreadable init image, ...) fail while the file is checked."""
    try:
        next(iter(run(preset, None, job, model=_Probe())))
    except _Checked:
        return


def image_jobs(common: Common, command: str, jobs: str, out: str, cli: dict[str, Any]) -> None:
    """`gm txt2img|refine|turbo --jobs FILE`; `cli` is the command body's options by name."""
    import dataclasses
    import sys

    from gm import presets
    from gm.addons import addons_from
    from gm.errors import UsageError
    from gm.io.files import expand_inputs
    from gm.io.media import IMAGE_SUFFIXES
    from gm.loader import keep_loaded
    from gm.pipelines.image import refine, txt2img
    from gm.pipelines.image_job import image_job, image_preset

    from ._image import requires, with_vae_dtype

    base = with_vae_dtype(image_preset(common.preset, common.overrides or []), cli.get("vae_dtype"), cli.get("vae"))
    if common.show_preset:
        sys.stdout.write(presets.to_toml(base))
        raise typer.Exit(0)
    run = refine if command == "refine" else txt2img
    fixed = {k: cli[k] for k in ("refiner", "refiner_checkpoint") if cli.get(k) is not None}
    refiner = bool(fixed)
    fixed.update(loras=tuple(cli.get("lora") or ()), vae=cli.get("vae"), vae_tiling=cli.get("vae_tiling") or "auto")
    extra = addons_from(fixed["loras"], fixed["vae"])
    defaults = {k: v for k, v in cli.items() if k in IMAGE_OPTIONS[command] or k == "images"}

    def validate(line: dict[str, Any]) -> tuple[Any, Any]:
        o = merge(defaults, line, {"n": "num", "input": "images"})
        if o.get("prompt", "") is None or o.get("images", "") is None:
            raise UsageError(f"no '{'input' if command == 'refine' else 'prompt'}' in this job")
        if command == "txt2img":
            requires("--init-image", o["init_image"] is not None, {"--strength": o["strength"] is not None})
            requires("--refiner", refiner, {"--refiner-strength": o["refiner_strength"] is not None,
                                                       "--finish/--no-finish": o["finish"] is not None})
            init = o.pop("init_image")
            o["init_images"] = () if init is None else (Path(init),)
        if command == "refine":
            images = o.pop("images")
            o["init_images"] = tuple(expand_inputs([images] if isinstance(images, str) else images,
                                                   IMAGE_SUFFIXES, "image"))
        if "num" in o:
            o["count"] = o.pop("num")
        preset, job = image_job(base, command, checkpoint=common.checkpoint,  # type: ignore[arg-type]
                                unsafe_pickle=common.unsafe_pickle, **fixed, **o)
        precheck(run, preset, job)
        return preset, job

    def load(ranks: Any) -> Any:
        if refiner:  # the refiner: loaded at the first job, kept for the others
            keep_loaded(True)
        return load_model(common, base, ranks, extra)

    def run_one(model: Any, value: tuple[Any, Any], folder: Path) -> dict[str, Any]:
        preset, job = value
        written = list(run(preset, model.runtime, dataclasses.replace(job, out_dir=folder), model=model))
        return {"seed": job.seed, "seeds": [r.seed for r in written]}

    try:
        serve(common, jobs, out, IMAGE_OPTIONS[command], validate, load, run_one, command,
              prompt_key=None if command == "refine" else "prompt")
    finally:
        if refiner:
            keep_loaded(False)
