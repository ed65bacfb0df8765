"""Run setup for `gm train`: options -> preset, run folder, device, DDP process group.

Replaces main.py's argument handling (docs/reference.md §4.1): the run folder
`runs/<YYYYmmdd-HHMMSS>-<preset>/` holds `config.toml` (the effective preset), `checkpoints/`,
`samples/` and `metrics.jsonl`. `--resume RUN|latest` reloads that folder's config.toml. Under
`torchrun` (WORLD_SIZE > 1) a process group is started (NCCL on GPUs, gloo on CPUs); rank 0 owns
the folder and the terminal.

A resume compares that config.toml with the preset and options given now: only SAFE_ON_RESUME
keys may differ (they are applied and recorded in metrics.jsonl); it also removes half checkpoints
of dead processes and cuts metrics.jsonl back to the resumed step.
"""

from __future__ import annotations

import dataclasses
import datetime
import os
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist

from gm import presets
from gm.console import console
from gm.device import pick_device
from gm.errors import GmError, UsageError
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


# What a resumed run may change: how long it runs, the lr and its schedule, the cadence of logs,
# grids and checkpoints, and how grids are sampled. Anything else (network, loss, data, batch,
# seed, EMA, precision) would make the checkpoint continue a different experiment.
SAFE_ON_RESUME = (
    "train.max_steps", "train.max_epochs", "train.lr", "train.lr_schedule", "train.warmup_steps",
    "train.cycle_lengths", "train.f_start", "train.f_max", "train.f_min", "train.log_every",
    "train.checkpoint_every", "train.keep_checkpoints", "train.sample_every", "train.increase_log_steps",
    "train.samples_per_class", "train.num_samples", "train.sample_prompts", "train.classifier_eval",
    "train.num_threads", "data.num_workers", "sampler.", "guider.", "description",
)


def _flat(value: object, prefix: str = "") -> dict[str, object]:
    if isinstance(value, dict):
        out: dict[str, object] = {}
        for key, item in value.items():
            out.update(_flat(item, f"{prefix}{key}."))
        return out
    return {prefix.rstrip("."): value}


def config_changes(stored: Preset, given: Preset) -> dict[str, tuple[object, object]]:
    """Keys whose value differs between two presets: key -> (stored, given)."""
    old, new = _flat(stored.to_dict()), _flat(given.to_dict())
    return {k: (old.get(k), new.get(k)) for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)}


def _safe(key: str) -> bool:
    return any(key == s or (s.endswith(".") and key.startswith(s)) for s in SAFE_ON_RESUME)


def _cli_overrides(opts: TrainOptions) -> list[str]:
    overrides = list(opts.overrides)
    for key, value in (("train.max_steps", opts.max_steps), ("data.batch_size", opts.batch_size),
                       ("train.lr", opts.lr), ("train.seed", opts.seed)):
        if value is not None:
            overrides.append(f"{key}={value!r}")
    return overrides


def resolve_resume(opts: TrainOptions, run_dir: Path | None) -> tuple[Preset, dict[str, tuple[object, object]]]:
    """(preset, changes): with --resume, the preset argument (or the run's config.toml) plus the
    options is compared with the run's config.toml; a change outside SAFE_ON_RESUME is refused,
    naming the keys, and the safe ones come back to be applied and recorded."""
    overrides = _cli_overrides(opts)
    if run_dir is None:
        return _load_train(opts.preset, overrides), {}
    if opts.out:  # nothing given is silently ignored
        raise UsageError("--out with --resume: a resumed run continues in its own folder", f"drop --out; the run is {run_dir}")
    stored = _load_train(str(run_dir / "config.toml"), [])
    given = _load_train(opts.preset or str(run_dir / "config.toml"), overrides)
    if opts.preset and given.name != stored.name:
        raise UsageError(f"--resume {run_dir} is a {stored.name} run, not {opts.preset}",
                         "drop the preset argument, or start a new run without --resume")
    changes = config_changes(stored, given)
    refused = [k for k in changes if not _safe(k)]
    if refused:
        shown = ", ".join(f"{k} ({changes[k][0]!r} -> {changes[k][1]!r})" for k in refused[:6])
        more = f" and {len(refused) - 6} more" if len(refused) > 6 else ""
        raise UsageError(f"--resume {run_dir}: the run was started with other settings: {shown}{more}",
                         "a resumed run may change only steps, the lr schedule and logging; "
                         "undo the change or start a new run without --resume")
    return dataclasses.replace(given, source=stored.source), changes


def _load_train(source: str, overrides: list[str]) -> Preset:
    preset = presets.load(source, overrides, check=check_train_tables)
    if preset.family != "train":
        raise UsageError(f"preset {preset.name} is a {preset.family} preset, not a training recipe",
                         f"pick one of: {', '.join(n for n in presets.available() if 'mnist' in n or 'digits' in n)}")
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


def resumed(run_dir: Path, step: int, preset: Preset, changes: dict[str, tuple[object, object]]) -> None:
    """Tidy a run folder for a resume at `step`: remove half checkpoints of dead processes, cut
    metrics.jsonl back to `step` (the steps after the checkpoint will be logged again) and record
    the resume (with the settings it changed; config.toml then holds the new ones)."""
    import json

    from gm.io.files import write_text_atomic

    for stale in checkpoint.remove_stale(run_dir / "checkpoints"):
        console.log(f"removed {stale.name}, a checkpoint a killed process left unfinished")
    metrics = run_dir / "metrics.jsonl"
    kept: list[str] = []
    if metrics.is_file():
        for line in metrics.read_text(encoding="utf-8", errors="replace").splitlines():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:  # a line cut by the kill
                continue
            if isinstance(record, dict) and int(record.get("step", 0)) <= step:
                kept.append(line)
    record = {"resume": True, "step": step,
              "changed": {k: [old, new] for k, (old, new) in changes.items()}}
    write_text_atomic(metrics, "".join(f"{line}\n" for line in [*kept, json.dumps(record, default=str)]), replace=True)
    if changes:
        console.log("resume changes " + ", ".join(f"{k} {old!r} -> {new!r}" for k, (old, new) in changes.items()))
        write_text_atomic(run_dir / "config.toml", presets.to_toml(preset), replace=True)


def diverged(step: int, run_dir: Path | None) -> None:
    """The training loss is NaN/Inf: stop without saving (the last checkpoint is the last good one)."""
    last = checkpoint.complete(run_dir / "checkpoints") if run_dir is not None else []
    kept = f"; the last good checkpoint is {last[-1]}" if last else ""
    raise GmError(f"training diverged: the loss is not finite (NaN/Inf) by step {step}{kept}",
                  f"resume with a lower lr (gm train --resume {run_dir} --lr ...), set train.grad_clip, "
                  "or train in fp32" if run_dir is not None else "lower --lr, set train.grad_clip, or train in fp32")
