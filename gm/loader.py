"""Preset + file -> loaded engine: finding the checkpoint, checking it against the preset, loading.

This is where files meet modules: gm/models builds modules from architecture tables and knows
nothing of files or presets; gm/checkpoint reads files and knows nothing of presets. A stage that
runs later (a refiner, SV4D after its SV3D stage) is checked here from the safetensors header alone,
before minutes of work instead of after.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gm import addons as addon_files
from gm import device as dev
from gm.addons import Addons
from gm.checkpoint import PICKLE_SUFFIXES, find_checkpoint, load_into, matched_keys, read_header
from gm.console import console
from gm.device import Runtime
from gm.errors import CheckpointError
from gm.models.build import Engine, build_engine, precision_map
from gm.presets import Preset
from gm.provenance import engine_record


def _meta_engine(preset: Preset, checkpoint: str | Path | None) -> tuple[Path, Engine]:
    path = find_checkpoint(preset, checkpoint)
    with torch.device("meta"):
        return path, build_engine(preset)


def check_file(preset: Preset, checkpoint: str | Path | None = None, unsafe_pickle: bool = False,
               option: str = "--checkpoint") -> Path:
    """Find `preset`'s checkpoint and match its tensor names and shapes with the model from the
    safetensors header alone (nothing is read or built for real). Pickle files are only found.
    `option` is the command-line option that names this file (the hint says which one to use)."""
    try:
        path, engine = _meta_engine(preset, checkpoint)
    except CheckpointError as err:
        if option == "--checkpoint":
            raise
        raise CheckpointError(err.message, err.hint.replace("--checkpoint", option)) from None
    if not (unsafe_pickle and path.suffix in PICKLE_SUFFIXES):
        assert preset.checkpoint is not None
        matched_keys(engine, read_header(path), layout=preset.checkpoint.layout,
                     optional=preset.checkpoint.optional, label=f"preset {preset.name}: {path.name}")
    return path


def load_engine(preset: Preset, checkpoint: str | Path | None = None, *, device: torch.device | str = "cpu",
                dtype: torch.dtype = torch.float32, vae_dtype: torch.dtype = torch.float32,
                unsafe_pickle: bool = False) -> Engine:
    """Build `preset` on the meta device and strictly load its checkpoint onto `device`."""
    path, engine = _meta_engine(preset, checkpoint)
    assert preset.checkpoint is not None
    load_into(engine, path, layout=preset.checkpoint.layout, optional=preset.checkpoint.optional,
              device=device, dtype_for=precision_map(dtype, vae_dtype), label=f"preset {preset.name}",
              unsafe_pickle=unsafe_pickle)
    engine.checkpoint_file = path  # what outputs record as the file used (gm.provenance.engine_record)
    return engine.eval().requires_grad_(False)


# Engines kept loaded across commands run in one process (None: off, the CLI's case). The pipeline
# benchmark turns it on, so that its repeated runs time sampling with the weights resident (and
# compiled), as a long-lived process would. The Python API keeps its Model instead.
_kept: dict[tuple[Any, ...], Engine] | None = None


def keep_loaded(on: bool) -> None:
    global _kept
    _kept = {} if on else None


def load(preset: Preset, runtime: Runtime, checkpoint: str | Path | None = None,
         unsafe_pickle: bool = False, addons: Addons = Addons()) -> Engine:
    """Strictly load the preset's checkpoint onto the runtime's home device (with progress), merge
    `addons` (LoRAs, an external VAE; checked from their headers before the checkpoint loads), then
    apply the runtime's memory layout and --compile."""
    if _kept is None:
        return _load(preset, runtime, checkpoint, unsafe_pickle, addons)
    # Keyed by what builds the engine: sampling tables (steps, sampler, CFG, default seed and size)
    # differ between the jobs of a batch but never change the weights.
    tables = {k: v for k, v in preset.to_dict().items() if k not in ("sampler", "guider", "defaults")}
    key = (json.dumps(tables, sort_keys=True, default=str), runtime, str(checkpoint), unsafe_pickle,
           _addons_key(addons))
    if key not in _kept:
        _kept[key] = _load(preset, runtime, checkpoint, unsafe_pickle, addons)
    return _kept[key]


def check_addons(preset: Preset, addons: Addons) -> addon_files.Resolved | None:
    """Read the LoRA files and match them and the VAE's header with the meta-built model, before any
    checkpoint tensor is read (None: no add-ons)."""
    if not addons:
        return None
    resolved = addon_files.resolve(addons)
    with torch.device("meta"):
        addon_files.check(resolved, build_engine(preset), preset.name)
    return resolved


def _addons_key(addons: Addons) -> tuple[Any, ...]:
    """LoRAs and VAE by resolved file, scale and modification time: a different (or edited) file
    never reuses a merged engine."""
    def stamp(path: Path) -> tuple[str, int]:
        return str(path.resolve()), path.stat().st_mtime_ns if path.is_file() else 0

    if not addons:
        return ()
    resolved = addon_files.resolve(addons)
    vae = stamp(resolved.vae) if resolved.vae is not None else None
    return tuple((stamp(lora.path), scale) for lora, scale in resolved.loras), vae


def _load(preset: Preset, runtime: Runtime, checkpoint: str | Path | None, unsafe_pickle: bool,
          addons: Addons = Addons()) -> Engine:
    resolved = check_addons(preset, addons)
    with console.task(f"load {preset.name}", total=1):
        engine = load_engine(preset, checkpoint, device=runtime.home, dtype=runtime.dtype,
                             vae_dtype=runtime.vae_dtype, unsafe_pickle=unsafe_pickle)
    engine_record(engine)  # the file's Model hash, once per load (cached by path, size and mtime)
    if resolved is not None:  # before channels_last / compile: the VAE's tensors are replaced
        addon_files.apply(resolved, engine, runtime.home, runtime.vae_dtype, preset.name)
    if preset.perf.channels_last:  # NHWC convolutions: faster with cuDNN in fp16/bf16
        engine.to(memory_format=torch.channels_last)
    if runtime.compile:
        _compile(engine, runtime)
    return engine


def _compile(engine: Engine, runtime: Runtime) -> None:
    """--compile: the network's forward and the VAE decode (methods, not modules, so that .to() and
    state_dict() keep working). On the CPU the frozen weights are a second, packed copy (one per
    compiled shape), so it is skipped with a warning when RAM cannot hold them."""
    network = engine.model.diffusion_model
    if runtime.device.type == "cpu":
        weights = weight_bytes(network)
        available = dev.available_ram()
        if available is not None and available < 1.25 * weights:
            console.warn(f"--compile skipped: on the CPU it keeps a second, packed copy of the "
                         f"{weights / 2**30:.1f} GiB of denoiser weights and only {available / 2**30:.1f} GiB of "
                         "RAM is available (running uncompiled)")
            return
        console.warn_once(f"--compile on the CPU: the first step compiles for minutes (cached on disk for later "
                          f"runs), later steps run about 1.7x faster, and RAM holds a second, packed copy of the "
                          f"{weights / 2**30:.1f} GiB of denoiser weights")
    network.forward = dev.compiled(network.forward, runtime.device)
    if engine.vae is not None:
        engine.vae.decode = dev.compiled(engine.vae.decode, runtime.device)


def weight_bytes(module: nn.Module) -> int:
    """Bytes of a module's parameters (what moving it or copying its weights costs)."""
    return sum(p.numel() * p.element_size() for p in module.parameters())
