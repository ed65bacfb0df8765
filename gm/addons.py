"""LoRAs and an external VAE for a loaded model: what the user asked for (`Addons`), reading and
checking the files against the meta-built engine before the checkpoint loads, merging them after,
and what the outputs record (A1111's `Lora hashes`, `VAE`, `VAE hash`; the gm JSON's `loras`, `vae`).

The loader calls `resolve` + `check` before any checkpoint tensor is read, so that a wrong LoRA or
VAE fails in a second, then `apply` on the loaded engine. What was applied is remembered per engine
(`info`), so the pipelines record it whether the engine was loaded by a command or by `gm.load`.
"""

from __future__ import annotations

import hashlib
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from gm.console import console
from gm.errors import CheckpointError, UsageError


@dataclass(frozen=True)
class Addons:
    """LoRAs ((file or name, scale), in merge order) and an external VAE file, as the user gave them."""

    loras: tuple[tuple[str, float], ...] = ()
    vae: str | None = None

    def __bool__(self) -> bool:
        return bool(self.loras) or self.vae is not None


def addons_from(loras: Iterable[Any] = (), vae: str | Path | None = None) -> Addons:
    """From `--lora FILE[:SCALE]` strings or (file, scale) pairs (the Python API), and `--vae`."""
    from gm.lora import parse_lora_arg

    pairs = []
    for item in loras or ():
        if isinstance(item, (str, Path)):
            pairs.append(parse_lora_arg(str(item)))
        else:
            name, scale = item
            try:
                value = float(scale)
            except (TypeError, ValueError):
                raise UsageError(f"LoRA {name}: the scale {scale!r} is not a number", "e.g. ('style', 0.8)") from None
            pairs.append((str(name), value))
    return Addons(tuple(pairs), None if vae is None else str(vae))


TILING_MODES = ("auto", "on", "off")


def check_tiling(mode: str) -> str:
    """`--vae-tiling` / `vae_tiling=`: auto, on or off, else a UsageError."""
    if mode not in TILING_MODES:
        raise UsageError(f"--vae-tiling must be auto, on or off, got {mode!r}", "e.g. --vae-tiling on")
    return mode


@dataclass
class Resolved:
    """The files behind `Addons`: LoRAs read (factors in memory, small) and the VAE path."""

    loras: list[tuple[Any, float]]  # (gm.lora.LoraFile, scale)
    vae: Path | None


def resolve(addons: Addons) -> Resolved:
    """Find and strictly read every LoRA (missing file, pickle, not a LoRA: one error) and find the VAE."""
    from gm.lora import find_lora, load_lora

    loras = [(load_lora(find_lora(name)), scale) for name, scale in addons.loras]
    vae = None
    if addons.vae is not None:
        vae = Path(addons.vae).expanduser()
        if not vae.is_file():
            raise CheckpointError(f"VAE file not found: {vae}", "check the --vae path")
    return Resolved(loras, vae)


def check(resolved: Resolved, engine: nn.Module, label: str) -> None:
    """Every LoRA and the VAE against `engine` (meta-built is fine), from the headers alone."""
    from gm.lora import check_loras
    from gm.vae_file import check_vae_file

    if resolved.loras:
        check_loras(engine, resolved.loras, label)
    if resolved.vae is not None:
        vae = getattr(engine, "vae", None)
        if vae is None:
            raise UsageError(f"--vae: preset {label} has no autoencoder", "drop --vae")
        check_vae_file(resolved.vae, vae)


@dataclass
class Info:
    """What was applied to an engine, for the outputs."""

    loras: list[dict[str, Any]] = field(default_factory=list)  # {name, path, scale, hash}
    vae: dict[str, Any] | None = None  # {path, hash, layout}


_INFO: weakref.WeakKeyDictionary[nn.Module, Info] = weakref.WeakKeyDictionary()


def apply(resolved: Resolved, engine: nn.Module, device: torch.device, vae_dtype: torch.dtype, label: str) -> Info:
    """Merge the LoRAs into the loaded `engine` and load the VAE over its own (on `device` in
    `vae_dtype`); logs what was merged and how long it took."""
    from gm.lora import apply_loras, lora_hash
    from gm.vae_file import load_vae_override

    info = Info()
    if resolved.loras:
        start = time.perf_counter()
        applied = apply_loras(engine, resolved.loras, label)
        for a in applied:
            info.loras.append({"name": a.name, "path": a.path, "scale": a.scale, "hash": lora_hash(a.path)})
        console.log(f"merged {len(applied)} LoRA{'s' * (len(applied) != 1)} "
                    f"({', '.join(f'{a.name} x{a.scale:g}: {a.modules} layers' for a in applied)}) "
                    f"in {time.perf_counter() - start:.1f} s")
    if resolved.vae is not None:
        layout = load_vae_override(resolved.vae, engine.vae, device=device, dtype=vae_dtype)
        info.vae = {"path": str(resolved.vae), "hash": file_hash(resolved.vae), "layout": layout}
        console.log(f"VAE {resolved.vae.name} ({layout} layout) in place of the checkpoint's")
    _INFO[engine] = info
    return info


def info(engine: nn.Module | None) -> Info:
    """What `apply` did to `engine` (empty for a plain checkpoint)."""
    return _INFO.get(engine, Info()) if engine is not None else Info()


def file_hash(path: str | Path) -> str:
    """A1111's `VAE hash`: the first 10 hex digits of the whole file's sha256."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:10]


def a1111_fields(applied: Info) -> dict[str, str]:
    """Infotext fields as A1111 writes them (`Lora hashes` quoted, `VAE hash`, `VAE`)."""
    from gm.lora import lora_hashes_text

    fields = {}
    if applied.loras:
        fields["Lora hashes"] = '"' + lora_hashes_text([(x["name"], x["hash"]) for x in applied.loras]) + '"'
    if applied.vae is not None:
        fields["VAE hash"] = applied.vae["hash"]
        fields["VAE"] = Path(applied.vae["path"]).name
    return fields


def record_fields(applied: Info) -> dict[str, Any]:
    """The gm JSON chunk's `loras` and `vae` (only when used)."""
    out: dict[str, Any] = {}
    if applied.loras:
        out["loras"] = [dict(x) for x in applied.loras]
    if applied.vae is not None:
        out["vae"] = dict(applied.vae)
    return out


def check_prompt_loras(engine: nn.Module, wanted: Iterable[tuple[str, float]]) -> None:
    """A Model loaded once (the Python API) cannot merge new LoRAs per call: `<lora:…>` tags in its
    prompts must name LoRAs it was loaded with, at the same weight."""
    from gm.lora import find_lora

    have = {(Path(x["path"]).resolve(), float(x["scale"])) for x in info(engine).loras}
    for name, scale in wanted:
        if (find_lora(name).resolve(), float(scale)) not in have:
            raise UsageError(f"the prompt asks for <lora:{name}:{scale:g}>, which this model was not loaded with "
                             "(LoRAs are merged at load)", f"gm.load(..., loras=[('{name}', {scale:g})])")
