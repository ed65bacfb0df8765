"""Training recipe tables `[train]` and `[data]` of a `family = "train"` preset.

Mirrors the training half of sgm's YAML (`model.params.{loss_fn_config, scheduler_config,
use_ema, ...}`, `data.params`, `lightning.callbacks.image_logger`) and main.py's run options,
as two flat frozen dataclasses checked by `gm.config.from_dict` (unknown keys list the valid ones).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from gm.config import from_dict
from gm.errors import PresetError
from gm.presets import Preset

LrSchedule = Literal["constant", "warmup", "warmup_cosine", "cosine_cycles", "linear_cycles"]


@dataclass(frozen=True)
class TrainConfig:
    """How to optimise: loss, sigma sampling, optimiser, LR schedule, EMA, logging cadence."""

    lr: float = 1e-4  # the reference's `model.base_learning_rate` (no --scale_lr)
    max_steps: int = 0  # 0 = run for max_epochs
    max_epochs: int = 10
    seed: int = 23  # main.py's default seed
    weight_decay: float = 0.01  # torch AdamW default, as the reference
    betas: tuple[float, float] = (0.9, 0.999)
    grad_clip: float = 0.0  # max global grad norm; 0 = off
    precision: Literal["fp32", "bf16", "fp16"] = "fp32"  # autocast dtype on a GPU (CPU stays fp32)
    # Loss (StandardDiffusionLoss + sigma sampler + loss weighting)
    loss_type: Literal["l2", "l1"] = "l2"
    sigma_sampler: Literal["edm", "discrete"] = "edm"
    p_mean: float = -1.2  # EDMSampling ln(sigma) ~ N(p_mean, p_std^2)
    p_std: float = 1.2
    weighting: Literal["edm", "eps", "v", "unit"] = "edm"
    weighting_sigma_data: float = 1.0  # EDMWeighting sigma_data
    # LR schedule: a multiplier on lr (sgm lr_scheduler.py semantics; lists = one entry per cycle)
    lr_schedule: LrSchedule = "constant"
    warmup_steps: tuple[int, ...] = (0,)
    cycle_lengths: tuple[float, ...] = (1e13,)
    f_start: tuple[float, ...] = (1e-6,)
    f_max: tuple[float, ...] = (1.0,)
    f_min: tuple[float, ...] = (1.0,)
    # EMA (LitEma): decay = min(ema_decay, (1 + n) / (10 + n)); used for samples and saved
    ema: bool = False
    ema_decay: float = 0.9999
    # Cadence (steps)
    log_every: int = 50
    checkpoint_every: int = 1000
    keep_checkpoints: int = 2
    sample_every: int = 1000  # 0 = only the final grid
    increase_log_steps: bool = False  # also sample at steps 1, 2, 4, ..., 512 (ImageLogger)
    samples_per_class: int = 8  # class-conditional grids: one row per class
    num_samples: int = 64  # unconditional / text grids
    sample_prompts: tuple[str, ...] = ()  # text-conditioned grids
    classifier_eval: bool = False  # score the final samples with a classifier trained on the data
    vae_checkpoint: str = ""  # latent presets: the frozen first stage's safetensors file
    clip_checkpoint: str = ""  # clip_l_text presets: openai/clip-vit-large-patch14 model.safetensors
    num_threads: int = 0  # CPU threads for torch (0 = the free cores, gm.threads.pick_threads)


DataKind = Literal["mnist", "cifar10", "folder", "webdataset", "digits"]


@dataclass(frozen=True)
class DataConfig:
    """Where the images come from and how they are batched (sgm `data.params`)."""

    kind: DataKind = "digits"
    batch_size: int = 64  # global batch (split across DDP ranks)
    root: str = ""  # mnist/cifar10: default $GM_DATA or ./.data; folder: the image folder
    urls: tuple[str, ...] = ()  # webdataset: tar files or globs
    image_size: int = 0  # 0 = the dataset's own size; folder/webdataset: resize + centre-crop
    channels: int = 0  # 0 = the dataset's own (1 for mnist/digits, 3 otherwise)
    num_workers: int = 2  # folder data only (in-memory sets need none)
    shuffle_buffer: int = 1000  # webdataset sample shuffle
    caption_key: str = "txt"  # webdataset: member extension holding the caption
    num_examples: int = 20000  # digits: how many to render
    val_fraction: float = 0.0


def _check_numbers(cfg: object, where: str) -> None:
    """Every float finite, counts and rates not negative: a NaN lr would train NaN weights silently."""
    import dataclasses
    import math

    for f in dataclasses.fields(cfg):  # type: ignore[arg-type]
        value = getattr(cfg, f.name)
        for v in value if isinstance(value, tuple) else (value,):
            if isinstance(v, float) and not math.isfinite(v):
                raise PresetError(f"{where}.{f.name}: expected a finite number, got {v}")
            if isinstance(v, (int, float)) and not isinstance(v, bool) and v < 0 and f.name not in ("p_mean",):
                raise PresetError(f"{where}.{f.name}: expected a number >= 0, got {v}")


def train_config(preset: Preset) -> TrainConfig:
    cfg = from_dict(TrainConfig, preset.train or {}, f"{preset.source} [train]")
    if not 0.0 <= cfg.ema_decay <= 1.0 or not all(0.0 <= b < 1.0 for b in cfg.betas):
        raise PresetError(f"{preset.source} [train]: ema_decay must be in [0, 1] and betas in [0, 1)")
    if cfg.max_steps <= 0 and cfg.max_epochs <= 0:
        raise PresetError(f"{preset.source} [train]: set max_steps or max_epochs above 0")
    if cfg.lr <= 0:
        raise PresetError(f"{preset.source} [train].lr: expected a positive number, got {cfg.lr}")
    _check_numbers(cfg, f"{preset.source} [train]")
    n = len(cfg.cycle_lengths)
    for name in ("warmup_steps", "f_start", "f_max", "f_min"):
        if cfg.lr_schedule in ("cosine_cycles", "linear_cycles") and len(getattr(cfg, name)) != n:
            raise PresetError(f"{preset.source} [train].{name}: expected {n} values (one per cycle_lengths entry)")
    return cfg


def data_config(preset: Preset) -> DataConfig:
    cfg = from_dict(DataConfig, preset.data or {}, f"{preset.source} [data]")
    if cfg.batch_size < 1:
        raise PresetError(f"{preset.source} [data].batch_size: expected at least 1, got {cfg.batch_size}")
    _check_numbers(cfg, f"{preset.source} [data]")
    if cfg.kind == "webdataset" and not cfg.urls:
        raise PresetError(f"{preset.source} [data].urls: webdataset needs tar files",
                          "e.g. --set data.urls='[\"shards/*.tar\"]'")
    if cfg.kind == "folder" and not cfg.root:
        raise PresetError(f"{preset.source} [data].root: folder data needs a folder", "--set data.root=PATH")
    return cfg
