"""Run setup for `gm train`: options -> preset, run folder, device, DDP process group.

Replaces main.py's argument handling (docs/reference.md §4.1): the run folder
`runs/<YYYYmmdd-HHMMSS>-<preset>/` holds `config.toml` (the effective preset), `checkpoints/`,
`samples/` and `metrics.jsonl`. `--resume RUN|latest` reloads that folder's config.toml. Under
`torchrun` (WORLD_SIZE > 1) a process group is started (NCCL on GPUs, gloo on CPUs); rank 0 owns
the folder and the terminal.
"""

from __future__ import annotations

import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gm import presets
from gm.device import pick_device
from gm.errors import UsageError
from gm.presets import Preset
from gm.train import checkpoint


@dataclass(frozen=True)
class TrainOptions:
    """What `gm train` was asked (None = take the preset's value)."""

    preset: str = ""
    out: str | None = None
    resume: str | None = None
    max_steps: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    seed: int | None = None
    device: str = "auto"
    overrides: tuple[str, ...] = ()
    runs_root: str = "runs"


@dataclass(frozen=True)
class Dist:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0


def init_distributed(device_name: str) -> tuple[Dist, torch.device]:
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist(), pick_device(device_name)
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    device = pick_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    return Dist(rank, world, local), device


def find_run(resume: str, runs_root: str) -> Path:
    """A run folder, or `latest` = the newest folder under runs_root with a checkpoint."""
    if resume == "latest":
        root = Path(runs_root)
        runs = sorted((p for p in root.glob("*") if checkpoint.complete(p / "checkpoints")),
                      key=lambda p: p.stat().st_mtime) if root.is_dir() else []
        if not runs:
            raise UsageError(f"--resume latest: no run with a checkpoint under {root}/", "pass a run folder")
        return runs[-1]
    path = Path(resume).expanduser()
    if path.name.startswith(checkpoint.PREFIX) and path.parent.name == "checkpoints":
        path = path.parent.parent
    if not (path / "config.toml").is_file():
        raise UsageError(f"--resume {resume}: not a gm run folder (no config.toml)", "pass runs/<run> or latest")
    checkpoint.latest(path)  # raises a clear error when there is nothing to resume
    return path


def resolve_preset(opts: TrainOptions, run_dir: Path | None) -> Preset:
    overrides = list(opts.overrides)
    for key, value in (("train.max_steps", opts.max_steps), ("data.batch_size", opts.batch_size),
                       ("train.lr", opts.lr), ("train.seed", opts.seed)):
        if value is not None:
            overrides.append(f"{key}={value!r}")
    source = str(run_dir / "config.toml") if run_dir is not None else opts.preset
    preset = presets.load(source, overrides, check=check_train_tables)
    if preset.family != "train":
        raise UsageError(f"preset {preset.name} is a {preset.family} preset, not a training recipe",
                         f"pick one of: {', '.join(n for n in presets.available() if 'mnist' in n or 'digits' in n)}")
    if run_dir is not None and opts.out:  # nothing given is silently ignored
        raise UsageError("--out with --resume: a resumed run continues in its own folder", f"drop --out; the run is {run_dir}")
    if run_dir is not None and opts.preset and presets.load(opts.preset).name != preset.name:
        raise UsageError(f"--resume {run_dir} is a {preset.name} run, not {opts.preset}",
                         "drop the preset argument, or start a new run without --resume")
    return preset


def check_train_tables(preset: Preset) -> None:
    """[train] and [data] are checked while the preset loads, before anything runs."""
    from gm.train.config import data_config, train_config

    if preset.family == "train":
        train_config(preset), data_config(preset)


def out_dir(opts: TrainOptions) -> Path | None:
    """--out, checked early (before data and model are loaded): it must be new or empty."""
    if not opts.out:
        return None
    path = Path(opts.out).expanduser()
    if path.exists() and (not path.is_dir() or any(path.iterdir())):
        raise UsageError(f"--out {path} exists and is not an empty folder", "pick a new folder or --resume it")
    return path


def new_run_dir(opts: TrainOptions, name: str) -> Path:
    """Create the run folder. Called only once data and model are ready, so that a failed start
    (missing data, a bad preset) leaves no half run behind to block the same --out next time."""
    path = out_dir(opts)
    if path is None:
        stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
        path = Path(opts.runs_root) / f"{stamp}-{name}"
        k = 1
        while path.exists():
            path = Path(opts.runs_root) / f"{stamp}-{name}-{k}"
            k += 1
    path.mkdir(parents=True, exist_ok=True)
    return path


def share_path(path: Path | None, d: Dist) -> Path:
    """Rank 0's run folder, on every rank."""
    if d.world == 1:
        assert path is not None
        return path
    box = [str(path) if path is not None else ""]
    dist.broadcast_object_list(box, src=0)
    return Path(box[0])
