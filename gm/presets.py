"""Presets: one TOML file describes one model (or training recipe) completely.

A preset replaces the reference's YAML trees (configs/inference/*.yaml,
scripts/sampling/configs/*.yaml, configs/example_training/**). The file is read with
tomllib into frozen dataclasses; every table is checked by `gm.config.from_dict`, so an
unknown key, a wrong type or a missing field is an error naming the file, the key and the
valid keys. The architecture tables (`[network]`, `[vae]`, `[[conditioner]]`) and the
training tables (`[train]`, `[data]`) are checked against their builders' own config classes
by `validate_preset` (that needs torch, so `gm --help` and `gm download --list` skip it).
"""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from gm.config import convert, from_dict, to_dict
from gm.errors import OverrideError, PresetError
from gm.preset_numbers import MAX_SIDE, check_numbers  # noqa: F401 - MAX_SIDE: part of this module's API
from gm.resources import preset_dir

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised only on Python 3.10
    import tomli as tomllib

PRESET_DIR = preset_dir()  # presets/ in a clone, gm/_presets when installed
Family = Literal["image", "video", "orbit", "video4d", "train"]


@dataclass(frozen=True)
class CheckpointSpec:
    file: str  # file name of the released checkpoint (as on the Hub)
    repo: str = ""  # Hugging Face repository it is downloaded from
    sha256: str = ""  # published file hash ("" when none is published)
    layout: Literal["sgm", "ldm"] = "sgm"  # ldm = SD 2.x files with cond_stage_model.* keys
    optional: tuple[str, ...] = ()  # tensors a file may carry that the model does not use
    gated: bool = False  # the repository asks users to accept a licence first
    license: str = ""
    size_gb: float = 0.0


@dataclass(frozen=True)
class DenoiserSpec:
    kind: Literal["discrete", "continuous"] = "discrete"
    scaling: Literal["eps", "v", "v_edm", "edm"] = "eps"
    sigma_data: float = 0.5  # only for scaling = "edm"
    num_idx: int = 1000  # only for kind = "discrete"


@dataclass(frozen=True)
class SamplerSpec:
    name: str = "euler"  # a key of gm.diffusion.samplers.SAMPLERS
    steps: int = 50
    scheduler: str = "normal"  # a key of gm.diffusion.schedulers.SCHEDULERS ("normal" = the discretization below)
    discretization: str = "legacy_ddpm"  # a key of gm.diffusion.schedules.DISCRETIZATIONS
    sigma_min: float = 0.002  # edm only
    sigma_max: float = 80.0  # edm only
    rho: float = 7.0  # edm only
    s_churn: float = 0.0
    s_tmin: float = 0.0
    s_tmax: float = 999.0
    s_noise: float = 1.0
    eta: float | None = None  # ancestral / SDE / DDIM samplers; None = the sampler's own default
    order: int | None = None  # lms, uni_pc; None = the sampler's own default


@dataclass(frozen=True)
class GuiderSpec:
    kind: str = "vanilla"  # a key of gm.diffusion.guiders.GUIDERS
    scale: float = 5.0  # CFG scale; the maximum for the per-frame guiders
    min_scale: float = 1.0  # per-frame guiders
    num_views: int = 0  # spatiotemporal guider: views per time step
    additional_keys: tuple[str, ...] = ()  # extra cond keys CFG-concatenated (SV4D: cond_view, cond_motion)


# Per-family defaults the commands start from (each has a command-line option or `--set defaults.KEY`);
# a key the family does not have is an error, in the file and in --set alike.
@dataclass(frozen=True)
class ImageDefaults:
    height: int = 1024
    width: int = 1024
    aesthetic_score: float = 6.0  # the refiner's micro-conditioning (c)
    negative_aesthetic_score: float = 2.5  # ... and uc
    zero_uc_text: bool = False  # SDXL base: uc zeroes the text embeddings (negative prompt unused)
    seed: int = 42


@dataclass(frozen=True)
class VideoDefaults:
    height: int = 576
    width: int = 1024
    frames: int = 14
    fps_id: int = 6
    motion_bucket_id: int = 127
    cond_aug: float = 0.02
    seed: int = 23


@dataclass(frozen=True)
class OrbitDefaults:
    height: int = 576
    width: int = 576
    frames: int = 21
    cond_aug: float = 1e-5
    elevation_deg: float = 10.0
    image_frame_ratio: float = 0.0  # 0 = none
    seed: int = 23


@dataclass(frozen=True)
class Video4DDefaults:
    mode: Literal["sv4d", "sv4d2"]  # SV4D: SV3D reference views + anchor/dense passes; SV4D 2.0: windows
    views: int  # novel views per time step
    window_frames: int  # frames per sampling window
    height: int = 576
    width: int = 576
    frames: int = 21
    image_frame_ratio: float = 0.9
    elevation_deg: float = 0.0
    seed: int = 23


@dataclass(frozen=True)
class TrainDefaults:
    """Training presets take their settings from [train] / [data]; no generation defaults."""


Defaults = ImageDefaults | VideoDefaults | OrbitDefaults | Video4DDefaults | TrainDefaults
DEFAULTS: dict[str, type] = {"image": ImageDefaults, "video": VideoDefaults, "orbit": OrbitDefaults,
                             "video4d": Video4DDefaults, "train": TrainDefaults}


@dataclass(frozen=True)
class PerfSpec:
    dtype: Literal["auto", "fp16", "bf16", "fp32"] = "auto"  # UNet + text encoders on a GPU
    vae_dtype: Literal["auto", "fp16", "bf16", "fp32"] = "fp32"
    low_vram: bool = False
    encoding_t: int = 0  # frames per VAE encode call (0 = all)
    decoding_t: int = 0  # frames per VAE decode call (0 = pick from free memory)
    compile: bool = False
    channels_last: bool = False


@dataclass(frozen=True)
class Preset:
    name: str
    family: Family
    description: str = ""
    checkpoint: CheckpointSpec | None = None
    network: dict[str, Any] = field(default_factory=dict)
    vae: dict[str, Any] | None = None
    conditioner: tuple[dict[str, Any], ...] = ()
    denoiser: DenoiserSpec = DenoiserSpec()
    sampler: SamplerSpec = SamplerSpec()
    guider: GuiderSpec = GuiderSpec()
    defaults: Defaults = field(default_factory=ImageDefaults, metadata={"internal": True})  # by family
    perf: PerfSpec = PerfSpec()
    train: dict[str, Any] | None = None
    data: dict[str, Any] | None = None
    source: str = field(default="", metadata={"internal": True})  # the file it was read from (not a TOML key)

    def to_dict(self) -> dict[str, Any]:
        out = to_dict(self)
        out.pop("source", None)
        return out


# Tables a user may change from the command line with --set table.key=value.
OVERRIDABLE = ("sampler", "guider", "defaults", "perf", "train", "data")


def search_dirs() -> list[Path]:
    extra = [Path(p) for p in os.environ.get("GM_PRESETS", "").split(os.pathsep) if p]
    return [*extra, PRESET_DIR]


def available() -> list[str]:
    """Names of the presets that ship with gm (and any in $GM_PRESETS)."""
    names = {p.stem for d in search_dirs() if d.is_dir() for p in d.glob("*.toml")}
    return sorted(names)


def find(name_or_path: str) -> Path:
    """A preset NAME (looked up in the preset folders) or a PATH to a .toml file."""
    path = Path(name_or_path).expanduser()
    if path.suffix == ".toml" or os.sep in name_or_path:
        if not path.is_file():
            raise PresetError(f"preset file not found: {name_or_path}", "check the path")
        return path
    for d in search_dirs():
        candidate = d / f"{name_or_path}.toml"
        if candidate.is_file():
            return candidate
    names = ", ".join(available())
    raise PresetError(f"unknown preset '{name_or_path}'", f"known presets: {names}")


def parse(data: dict[str, Any], source: str) -> Preset:
    data = dict(data)
    defaults = data.pop("defaults", {})
    preset = from_dict(Preset, data, source)
    if not isinstance(defaults, dict):
        raise PresetError(f"{source}: [defaults] is not a table")
    typed = from_dict(DEFAULTS[preset.family], defaults, f"{source}.defaults")
    preset = dataclasses.replace(preset, source=source, defaults=typed)
    if not preset.network and preset.family != "train":
        raise PresetError(f"{source}: missing table [network]")
    check_names(preset)
    check_numbers(preset)  # finite and in range (gm.preset_numbers)
    return preset


def check_names(preset: Preset) -> None:
    """Sampler, discretization and guider names against the registries that define them (once)."""
    from gm.diffusion.guiders import GUIDERS
    from gm.diffusion.recipe import scheduler_names
    from gm.diffusion.samplers import SAMPLERS
    from gm.diffusion.schedules import DISCRETIZATIONS

    for table, key, value, registry in (("sampler", "name", preset.sampler.name, SAMPLERS),
                                        ("sampler", "discretization", preset.sampler.discretization, DISCRETIZATIONS),
                                        ("sampler", "scheduler", preset.sampler.scheduler, scheduler_names()),
                                        ("guider", "kind", preset.guider.kind, GUIDERS)):
        if value not in registry:
            raise PresetError(f"{preset.source}.{table}.{key}: {value!r} is not one of {', '.join(registry)}")


def load(name_or_path: str, overrides: list[str] | tuple[str, ...] = (),
         check: Callable[[Preset], object] | None = None) -> Preset:
    """Read a preset, apply `table.key=value` overrides and run `check` (a caller's own validation,
    e.g. of the [train] table). A mistake that only the overrides make is an OverrideError that
    names `--set table.key` (exit 2); a mistake in the file itself names the file (exit 1)."""
    path = find(name_or_path)
    try:
        with path.open("rb") as f:
            data = tomllib.load(f)
    except tomllib.TOMLDecodeError as err:
        raise PresetError(f"{path}: not valid TOML: {err}") from None

    def build(values: dict[str, Any]) -> Preset:
        preset = parse(values, str(path))
        if check is not None:
            check(preset)
        return preset

    try:
        return build(apply_overrides(data, overrides, str(path)))
    except PresetError as err:
        if not overrides:
            raise
        build(data)  # a mistake in the file itself is reported as the file's
        # "<file>.sampler.steps: ..." and "<file> [train].lr: ..." both become "--set <table>.<key>: ..."
        message = err.message.replace(f"{path}.", "--set ", 1)
        if message.startswith(f"{path} ["):
            message = message.replace(f"{path} [", "--set ", 1).replace("]", "", 1)
        raise OverrideError(message, err.hint) from None


def parse_value(text: str) -> Any:
    """A TOML literal (`30`, `7.5`, `true`, `[1, 2]`, `"x"`), else the bare string."""
    try:
        return tomllib.loads(f"v = {text}")["v"]
    except tomllib.TOMLDecodeError:
        return text


def apply_overrides(data: dict[str, Any], overrides: list[str] | tuple[str, ...], source: str) -> dict[str, Any]:
    data = {k: (dict(v) if isinstance(v, dict) else v) for k, v in data.items()}
    for item in overrides:
        key, sep, value = item.partition("=")
        table, dot, name = key.strip().partition(".")
        if not sep or not dot or not name:
            raise PresetError(f"--set {item!r}: expected table.key=value", "e.g. --set sampler.steps=30")
        if table not in OVERRIDABLE:
            raise PresetError(
                f"--set {item!r}: table '{table}' cannot be overridden",
                f"overridable tables: {', '.join(OVERRIDABLE)}",
            )
        section = data.setdefault(table, {})
        if not isinstance(section, dict):
            raise PresetError(f"{source}: [{table}] is not a table")
        section[name] = parse_value(value.strip())
    return data


def replace(preset: Preset, table: str, **changes: Any) -> Preset:
    """A copy of `preset` with fields of one dataclass table changed (values are type-checked)."""
    section = getattr(preset, table)
    hints = {f.name: f.type for f in dataclasses.fields(section)}
    for key in changes:
        if key not in hints:
            raise PresetError(f"{preset.source} [{table}]: unknown key '{key}'")
    merged = {**to_dict(section), **changes}
    new = from_dict(type(section), merged, f"{preset.source} [{table}]")
    return dataclasses.replace(preset, **{table: new})


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value)
    if isinstance(value, str):
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")
        return f'"{escaped}"'
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(_toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        return "{ " + ", ".join(f"{k} = {_toml_value(v)}" for k, v in value.items()) + " }"
    raise TypeError(f"cannot write {type(value).__name__} to TOML")


def to_toml(preset: Preset) -> str:
    """The effective preset as TOML (what `gm ... --show-preset` prints and runs record)."""
    data = preset.to_dict()
    lines: list[str] = []
    tables: list[tuple[str, dict[str, Any]]] = []
    arrays: list[tuple[str, list[dict[str, Any]]]] = []
    for key, value in data.items():
        if isinstance(value, dict):
            tables.append((key, value))
        elif isinstance(value, list) and value and all(isinstance(v, dict) for v in value):
            arrays.append((key, value))
        else:
            lines.append(f"{key} = {_toml_value(value)}")
    for key, table in tables:
        lines += ["", f"[{key}]"] + [f"{k} = {_toml_value(v)}" for k, v in table.items()]
    for key, items in arrays:
        for item in items:
            lines += ["", f"[[{key}]]"] + [f"{k} = {_toml_value(v)}" for k, v in item.items()]
    return "\n".join(lines) + "\n"


def check_value(value: Any, tp: Any, where: str) -> Any:
    """Type-check one value (used by commands that map CLI options onto preset fields)."""
    return convert(value, tp, where)
