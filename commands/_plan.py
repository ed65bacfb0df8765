"""`--plan` and `--max-vram`: the memory plan of a command's Job, before anything loads.

Each generating command calls one of `plan_images` / `plan_video` / `plan_video4d` after building
its Job. With `--plan` the plan is printed (a table on stdout, or one JSON object per model with
--json) and the command ends with exit 0, without reading any checkpoint. Otherwise, when there is
a budget (--max-vram GB, else the free memory of a CUDA device), the fitter chooses the least costly
settings that fit, says so on stderr, and the run goes on with them; if nothing fits, one line names
the smallest budget that would, and nothing has been loaded or written.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from typing import Any

import typer

from ._common import Common

GB = 1e9  # --max-vram is in GB (10^9 bytes), as the plan's figures


def _budget(common: Common, kind: str) -> int | None:
    """--max-vram in bytes; by default the free memory of a present CUDA device, else none."""
    from gm.errors import UsageError

    if common.max_vram is not None:
        if not common.max_vram > 0:
            raise UsageError(f"--max-vram must be a positive number of GB, got {common.max_vram:g}", "e.g. --max-vram 12")
        return int(common.max_vram * GB)
    if kind != "cuda" or common.plan:
        return None
    import torch

    from gm.device import free_memory, pick_device

    if not torch.cuda.is_available():
        return None  # the run itself will say that there is no GPU
    return free_memory(pick_device(common.device))


def _plans(common: Common, targets: list[Any], kind: str, budget: int | None,
           tiles: tuple[int, ...] = ()) -> list[Any]:
    """One plan per target: the run's own settings, or with a budget the fitter's choice."""
    from gm.pipelines.plan_job import plan_dtypes
    from gm.plan import Planner, fit, meta_engine

    out = []
    for t in targets:
        dtype, vae_dtype = plan_dtypes(t.preset, kind, common.dtype)
        engine = meta_engine(t.preset, dtype, vae_dtype)  # planning mutates it: its own engine
        planner = Planner(engine, t.preset, t.work, dtype=dtype, vae_dtype=vae_dtype, device=kind)
        plan = planner.plan(t.base, budget)  # the run's own settings: one plan of each phase
        out.append(plan if budget is None or plan.peak <= budget else fit(planner, budget, t.base, tiles=tiles))
    return out


def _print(plans: list[Any], json_mode: bool) -> None:
    from rich.console import Console

    from gm.plan.report import render, to_dict

    if json_mode:
        for plan in plans:
            sys.stdout.write(json.dumps(to_dict(plan)) + "\n")
        return
    con = Console(file=sys.stdout, width=None if sys.stdout.isatty() else 200)
    for plan in plans:
        render(plan, con)


def planned(common: Common, targets: list[Any], tiles: tuple[int, ...] = ()) -> tuple[Common, Any]:
    """--plan: print and exit 0. With a budget: (the Common with --low-vram if staging was chosen,
    the settings of the first target); else (common, None): the run goes on as it was."""
    from gm.pipelines.plan_job import plan_device

    kind = plan_device(common.device)
    budget = _budget(common, kind)
    if common.plan:
        _print(_plans(common, targets, kind, budget, tiles), common.json_mode)
        raise typer.Exit(0)
    if budget is None:
        return common, None
    from gm.console import console
    from gm.diffusion.guiders import use_two_pass_cfg

    plans = _plans(common, targets, kind, budget, tiles)
    for plan in plans:
        for note in plan.notes:
            console.log(f"memory plan ({budget / GB:.3g} GB): {note}")
    console.log(f"memory plan: peak {max(p.peak for p in plans) / GB:.3g} GB of {budget / GB:.3g} GB")
    if any(p.settings.two_pass_cfg for p in plans):
        use_two_pass_cfg()  # this command run's context only (commands._common.command)
    if any(p.settings.staging for p in plans) and not common.low_vram:
        common = dataclasses.replace(common, low_vram=True)
    return common, plans[0].settings


def plan_images(common: Common, preset: Any, job: Any) -> tuple[Common, Any]:
    """txt2img / refine / turbo: CFG passes, staging and (unless --vae-tiling off) tiled decode in
    gm's own tile size; a chosen tiling turns --vae-tiling on for the run."""
    from gm.diffusion.tiling import DEFAULT_TILE
    from gm.pipelines.plan_job import image_targets

    staging = common.low_vram or bool(preset.perf.low_vram)
    tiles = () if job.vae_tiling == "off" else (DEFAULT_TILE,)
    common, chosen = planned(common, image_targets(preset, job, staging), tiles)
    if chosen is not None and chosen.decode_tile and job.vae_tiling != "on":
        job = dataclasses.replace(job, vae_tiling="on")
    return common, job


def plan_video(common: Common, preset: Any, request: Any) -> tuple[Any, Common]:
    """img2vid / orbit: the fitter's decode chunk replaces --decoding-t where it had to change it."""
    from gm.pipelines.plan_job import video_target

    target = video_target(preset, request, common.low_vram or bool(preset.perf.low_vram))
    common, chosen = planned(common, [target])
    if chosen is not None and chosen.decode_chunk != target.base.decode_chunk:
        request = dataclasses.replace(request, decoding_t=chosen.decode_chunk)
    return request, common


def plan_video4d(common: Common, preset: Any, request: Any) -> tuple[Any, Common]:
    """video4d: the fitter's decode and VAE-encode chunks replace --decoding-t / --encoding-t."""
    from gm.pipelines.plan_job import video4d_target

    target = video4d_target(preset, request, common.low_vram or bool(preset.perf.low_vram))
    common, chosen = planned(common, [target])
    if chosen is not None:
        if chosen.decode_chunk != target.base.decode_chunk:
            request = dataclasses.replace(request, decoding_t=chosen.decode_chunk)
        if chosen.encode_chunk is not None:
            request = dataclasses.replace(request, encoding_t=chosen.encode_chunk)
    return request, common
