"""`gm train`: the plain PyTorch training loop that replaces main.py + Lightning's Trainer.

Per step (sgm DiffusionEngine.training_step): draw sigma/noise/ucg masks for the global batch,
loss = mean of the weighted per-sample denoising loss, AdamW step at lr * schedule(step),
optional grad clipping, EMA update. Every `log_every` steps one host sync (loss.item(), averaged
over ranks) feeds metrics.jsonl and the live display; grids and checkpoints at their cadence and
at the end; SIGINT/SIGTERM save a checkpoint and stop.
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from contextlib import nullcontext
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist

from gm import presets
from gm.console import console
from gm.device import DTYPES, apply_speed_settings, cpu_generator
from gm.errors import InputError
from gm.io.files import write_text_atomic
from gm.models.build import validate
from gm.threads import pick_threads
from gm.train import checkpoint, samples
from gm.train.classifier import per_class_accuracy, train_classifier
from gm.train.config import data_config, train_config
from gm.train.data import ArrayDataset, FolderDataset, MapBatches, open_dataset
from gm.train.ema import EMA
from gm.train.model import DiffusionObjective, build_train_engine, draw, latent_shape
from gm.train.run import (
    TrainOptions,
    diverged,
    find_run,
    init_distributed,
    new_run_dir,
    out_dir,
    resolve_resume,
    resumed,
    share_path,
)
from gm.train.schedules import lr_factor
from gm.train.tars import TarBatches, expand_urls


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    grid: Path | None
    metrics: dict[str, Any] = field(default_factory=dict)
    interrupted: bool = False
    signum: int = 0  # the signal that stopped the run (SIGINT or SIGTERM), 0 if none


class _StopFlag:
    """SIGINT/SIGTERM set a flag; the loop saves a checkpoint and stops at the end of the step."""

    def __init__(self) -> None:
        self.signum = 0
        self.previous: dict[int, Any] = {}

    def __enter__(self) -> _StopFlag:
        for s in (signal.SIGINT, signal.SIGTERM):
            self.previous[s] = signal.signal(s, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.signum = signum

    def __exit__(self, *exc: object) -> None:
        for s, h in self.previous.items():
            signal.signal(s, h)


def _to_device(batch: dict[str, Any], device: torch.device) -> dict[str, Any]:
    return {k: v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v for k, v in batch.items()}


def _log_steps(cfg_increase: bool) -> set[int]:
    return {2**k for k in range(10)} if cfg_increase else set()


def set_threads(requested: int, device: torch.device) -> None:
    """torch's CPU threads: [train].num_threads when set; for 0 on the CPU, OMP_NUM_THREADS when the
    user set it, else the cores that are free (extra threads on busy cores slow small models down)."""
    if requested == 0 and os.environ.get("OMP_NUM_THREADS"):
        console.log(f"training on {torch.get_num_threads()} CPU threads (OMP_NUM_THREADS)")
        return
    if requested or device.type == "cpu":
        threads, why = pick_threads(requested)
        torch.set_num_threads(threads)
        console.log(f"training on {why}")


def train(opts: TrainOptions) -> TrainResult:
    d, device = init_distributed(opts.device)
    if not d.main:
        console.configure(quiet=True)
    run_dir = find_run(opts.resume, opts.runs_root) if opts.resume else None
    preset, changes = resolve_resume(opts, run_dir)
    cfg, data_cfg = train_config(preset), data_config(preset)
    validate(preset)
    if data_cfg.batch_size % d.world:
        raise presets.PresetError(f"data.batch_size {data_cfg.batch_size} is not divisible by {d.world} processes")
    set_threads(cfg.num_threads, device)
    apply_speed_settings(device)
    if run_dir is None and d.main:
        out_dir(opts)  # a usage error now, not after loading the data

    # data
    if data_cfg.kind == "webdataset":
        source: MapBatches | TarBatches = TarBatches(
            expand_urls(data_cfg.urls), data_cfg.batch_size, cfg.seed, data_cfg.image_size,
            data_cfg.channels or 3, data_cfg.caption_key, data_cfg.shuffle_buffer, d.rank, d.world)
        with console.task("check data", total=1):
            source.check()  # every shard readable, at least one batch: before any folder is made
        channels, size, dataset = data_cfg.channels or 3, data_cfg.image_size, None
    else:
        with console.task("load data", total=1):
            dataset = open_dataset(data_cfg, cfg.seed)
            if isinstance(dataset, FolderDataset):
                dataset.check()  # every file an image (headers): a bad one is named now, not mid-run
        source = MapBatches(dataset, data_cfg.batch_size, cfg.seed, d.rank, d.world,
                            data_cfg.num_workers, device.type == "cuda")
        if source.batches_per_epoch == 0:
            raise InputError(f"data: {len(dataset)} examples are fewer than one batch of {data_cfg.batch_size}",
                             "add data or lower --batch-size")
        first = dataset.get(torch.arange(1)) if isinstance(dataset, ArrayDataset) else dataset[0]
        channels, size = first["jpg"].shape[-3], first["jpg"].shape[-1]

    # model
    torch.manual_seed(cfg.seed)
    engine = build_train_engine(preset, cfg).to(device)
    objective = DiffusionObjective(engine, preset, cfg)
    shape = latent_shape(preset, engine, channels, size)
    params = [p for p in engine.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=cfg.lr, betas=cfg.betas, weight_decay=cfg.weight_decay)
    ema = EMA(engine, cfg.ema_decay) if cfg.ema else None
    model: torch.nn.Module = objective
    if d.world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            objective, device_ids=[device.index] if device.type == "cuda" else None)
    generator = cpu_generator(cfg.seed + 1)
    step = epoch = batch_idx = 0
    if run_dir is not None:
        step, epoch, batch_idx = _restore(run_dir, engine, opt, ema, generator)
        if d.main:
            resumed(run_dir, step, preset, changes)
        console.log(f"resumed {run_dir} at step {step}")
    elif d.main:  # data and model are ready: only now does the run folder appear
        run_dir = new_run_dir(opts, preset.name)
        write_text_atomic(run_dir / "config.toml", presets.to_toml(preset))
    run_dir = share_path(run_dir, d)

    per_epoch = source.batches_per_epoch
    total = cfg.max_steps or (cfg.max_epochs * per_epoch if per_epoch else 0)
    factor = lr_factor(cfg)
    autocast = (torch.autocast(device.type, dtype=DTYPES[cfg.precision])
                if device.type == "cuda" and cfg.precision != "fp32" else nullcontext())
    scaler = torch.amp.GradScaler("cuda", enabled=device.type == "cuda" and cfg.precision == "fp16")
    metrics_path = run_dir / "metrics.jsonl"
    log_steps = _log_steps(cfg.increase_log_steps)
    num_idx = preset.denoiser.num_idx

    def save() -> None:
        if not math.isfinite(float(loss_sum.sum())):  # never a checkpoint of diverged weights
            diverged(step, run_dir)
        if d.main:
            extra = {"rng": checkpoint.rng_state(generator), "ema_updates": ema.num_updates if ema else 0,
                     "preset": preset.name, "world": d.world}
            model_t = checkpoint.model_tensors(engine)
            ema_t = None
            if ema is not None:
                ema_t = {**model_t, **{k: v.cpu() for k, v in ema.state_dict().items()}}
            checkpoint.save(run_dir / "checkpoints", checkpoint.Saved(step, epoch, batch_idx, extra),
                            model_t, ema_t, opt, cfg.keep_checkpoints)
        if d.world > 1:
            dist.barrier()

    def grid(name: str) -> tuple[Path | None, dict[str, float] | None]:
        if not d.main:
            return None, None
        return _write_grid(objective, ema, preset, cfg, dataset, shape, size, device, run_dir / "samples" / name)

    loss_sum = torch.zeros((), device=device)
    loss_n, last_loss, window_start, window_images = 0, float("nan"), time.perf_counter(), 0
    stopped = 0
    with _StopFlag() as stop, console.task(f"train {preset.name}", total=total or None, unit="step") as bar:
        bar.advance(step)
        while (not total or step < total) and (cfg.max_steps or epoch < cfg.max_epochs) and not stopped:
            progressed = batch_idx > 0  # resuming at an epoch's end may legitimately yield nothing
            for batch in source.iterate(epoch, batch_idx):
                progressed = True
                batch = _to_device(batch, device)
                draws = draw(cfg, engine, data_cfg.batch_size, shape, d.rank, d.world, generator, num_idx)
                with autocast:
                    loss = model(batch, draws).mean()
                opt.zero_grad(set_to_none=True)
                scaler.scale(loss).backward()
                if cfg.grad_clip > 0:
                    scaler.unscale_(opt)
                    torch.nn.utils.clip_grad_norm_(params, cfg.grad_clip)
                lr = cfg.lr * factor(step)
                for group in opt.param_groups:
                    group["lr"] = lr
                scaler.step(opt)
                scaler.update()
                if ema is not None:
                    ema.update(engine)
                step, batch_idx = step + 1, batch_idx + 1
                loss_sum += loss.detach()
                loss_n += 1
                window_images += data_cfg.batch_size
                bar.advance(1)
                if step % cfg.log_every == 0 or step == total:
                    if d.world > 1:
                        dist.all_reduce(loss_sum)
                        loss_sum /= d.world
                    last_loss = loss_sum.item() / loss_n  # the one host sync per log interval
                    if not math.isfinite(last_loss):
                        diverged(step, run_dir)
                    now = time.perf_counter()
                    rate = window_images / max(now - window_start, 1e-9)
                    record = {"step": step, "epoch": epoch, "loss": last_loss, "lr": lr, "images_per_s": round(rate, 2)}
                    if d.main:
                        with metrics_path.open("a") as f:
                            f.write(json.dumps(record) + "\n")
                    bar.update(description=f"train {preset.name} loss {last_loss:.4f} lr {lr:.2e} {rate:.0f} img/s")
                    loss_sum.zero_()
                    loss_n, window_start, window_images = 0, now, 0
                paused = time.perf_counter()  # sampling and saving do not count in images/s
                if (cfg.sample_every and step % cfg.sample_every == 0 or step in log_steps) and step != total:
                    grid(f"step-{step:08d}.png")
                if step % cfg.checkpoint_every == 0 and step != total:
                    save()
                window_start += time.perf_counter() - paused
                stopped = stop.signum
                if stopped or step == total:
                    break
            else:
                if not progressed:  # an epoch without one batch would loop here forever
                    raise InputError(f"data: epoch {epoch} yielded no batch of {data_cfg.batch_size}",
                                     "add data or lower --batch-size")
                epoch, batch_idx = epoch + 1, 0
        save()
    if stopped:
        console.warn(f"stopped by signal {stopped} at step {step}; resume with: gm train --resume {run_dir}")
        return TrainResult(run_dir, step, None, {"step": step}, interrupted=True, signum=stopped)
    path, acc = grid("final.png")
    final = {"final": True, "step": step, "loss": None if math.isnan(last_loss) else last_loss,
             "grid": str(path) if path else None}
    if acc is not None:
        final["classifier_accuracy"] = acc
    if d.main:
        with metrics_path.open("a") as f:
            f.write(json.dumps(final) + "\n")
    if d.world > 1:
        dist.barrier()
    return TrainResult(run_dir, step, path, final)


def _restore(run_dir: Path, engine: torch.nn.Module, opt: torch.optim.Optimizer, ema: EMA | None,
             generator: torch.Generator) -> tuple[int, int, int]:
    path = checkpoint.latest(run_dir)
    state, model_t, ema_t, opt_t = checkpoint.load(path)
    expected = set(checkpoint.model_tensors(engine))
    if set(model_t) != expected:
        diff = sorted(set(model_t) ^ expected)
        raise checkpoint.CheckpointError(f"{path}: weights do not match the preset (e.g. {diff[:3]})")
    for name, child in engine.named_children():  # strict per part; the frozen first stage has its own file
        if name != "first_stage_model":
            prefix = f"{name}."
            child.load_state_dict({k[len(prefix):]: v for k, v in model_t.items() if k.startswith(prefix)})
    checkpoint.load_optimizer(opt, opt_t, state["optimizer"])
    if ema is not None:
        if ema_t is None:
            raise checkpoint.CheckpointError(f"{path}: the preset uses EMA but the checkpoint has none")
        ema.load_state_dict({k: ema_t[k] for k in ema.shadow}, state["ema_updates"])
    checkpoint.set_rng_state(state["rng"], generator)
    return state["step"], state["epoch"], state["batch"]


def _write_grid(objective: DiffusionObjective, ema: EMA | None, preset: presets.Preset, cfg: Any,
                dataset: Any, shape: tuple[int, ...], size: int, device: torch.device,
                path: Path) -> tuple[Path, dict[str, float] | None]:
    engine = objective.engine
    num_classes = getattr(dataset, "num_classes", 0) or (len(dataset.classes) if hasattr(dataset, "classes") else 10)
    batch, rows, cols = samples.grid_inputs(engine, cfg, num_classes)
    backup = {k: v.detach().clone() for k, v in engine.state_dict().items()} if ema is not None else None
    try:
        if ema is not None:
            ema.copy_to(engine)
        images = samples.generate(objective, preset, batch, rows * cols, shape, size, device, seed=cfg.seed)
    finally:
        if backup is not None:
            engine.load_state_dict(backup)
    upscale = max(1, 256 // max(size, 1)) if size < 64 else 1
    out = samples.save_grid(samples.to_grid(images, rows, cols), path, upscale=min(upscale, 4))
    acc = None
    if cfg.classifier_eval and "cls" in batch and isinstance(dataset, ArrayDataset):
        with console.task("classifier", total=1):
            clf = train_classifier(dataset.images, dataset.labels, dataset.num_classes, seed=cfg.seed)
            acc = per_class_accuracy(clf, images, batch["cls"], dataset.num_classes)
    return out, acc
