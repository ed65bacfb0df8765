"""Training checkpoints: safetensors for tensors, JSON for everything else; no pickle anywhere.

Replaces Lightning's `last.ckpt` (a pickle). One checkpoint is a folder
`checkpoints/step-NNNNNNNN/` holding

* `model.safetensors`     the engine's weights in the released key layout (`model.diffusion_model.*`,
                          `conditioner.embedders.N.*`); the frozen first stage is not repeated
* `ema.safetensors`       the same keys with the EMA weights (when EMA is on): load it for inference
* `optimizer.safetensors` AdamW state flattened to `state.<param index>.<name>`
* `state.json`            step, epoch, batch position, RNG states (training generator, torch CPU/CUDA,
                          numpy, python), EMA update count, optimizer param groups, the preset

It is written to a hidden temporary folder and renamed into place only when complete, so a kill
or a full disk never leaves a half checkpoint; older ones are pruned only after that.
"""

from __future__ import annotations

import base64
import errno
import json
import os
import random
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_file, save_file

from gm.errors import CheckpointError, disk_full

FORMAT = 1
PREFIX = "step-"


def _b64(t: torch.Tensor) -> str:
    return base64.b64encode(t.cpu().numpy().tobytes()).decode()


def _unb64(text: str) -> torch.Tensor:
    return torch.frombuffer(bytearray(base64.b64decode(text)), dtype=torch.uint8).clone()


def rng_state(generator: torch.Generator) -> dict[str, Any]:
    np_state = np.random.get_state()
    py_state = random.getstate()
    return {
        "generator": _b64(generator.get_state()),
        "torch_cpu": _b64(torch.get_rng_state()),
        "torch_cuda": [_b64(s) for s in torch.cuda.get_rng_state_all()] if torch.cuda.is_available() else [],
        "numpy": [np_state[0], np_state[1].tolist(), int(np_state[2]), int(np_state[3]), float(np_state[4])],
        "python": [py_state[0], list(py_state[1]), py_state[2]],
    }


def set_rng_state(state: dict[str, Any], generator: torch.Generator) -> None:
    generator.set_state(_unb64(state["generator"]))
    torch.set_rng_state(_unb64(state["torch_cpu"]))
    if state["torch_cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all([_unb64(s) for s in state["torch_cuda"]])
    n = state["numpy"]
    np.random.set_state((n[0], np.asarray(n[1], dtype=np.uint32), n[2], n[3], n[4]))
    p = state["python"]
    random.setstate((p[0], tuple(p[1]), p[2]))


def optimizer_tensors(opt: torch.optim.Optimizer) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """AdamW state_dict -> (flat tensors, JSON-able rest)."""
    sd = opt.state_dict()
    tensors: dict[str, torch.Tensor] = {}
    scalars: dict[str, Any] = {}
    for idx, entry in sd["state"].items():
        for name, value in entry.items():
            if isinstance(value, torch.Tensor):
                tensors[f"state.{idx}.{name}"] = value.detach().cpu().contiguous()
            else:
                scalars[f"{idx}.{name}"] = value
    return tensors, {"param_groups": sd["param_groups"], "scalars": scalars}


def load_optimizer(opt: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    state: dict[int, dict[str, Any]] = {}
    for key, value in tensors.items():
        _, idx, name = key.split(".", 2)
        state.setdefault(int(idx), {})[name] = value
    for key, value in meta["scalars"].items():
        idx, name = key.split(".", 1)
        state.setdefault(int(idx), {})[name] = value
    opt.load_state_dict({"state": state, "param_groups": meta["param_groups"]})


@dataclass
class Saved:
    """What `save` needs besides the tensors."""

    step: int
    epoch: int
    batch: int  # next batch index within `epoch`
    extra: dict[str, Any]


def model_tensors(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """Weights to save: everything but the frozen first stage (it comes from its own file)."""
    return {k: v.detach().cpu().contiguous() for k, v in module.state_dict().items()
            if not k.startswith("first_stage_model.")}


def _nbytes(*groups: dict[str, torch.Tensor] | None) -> int:
    return sum(t.numel() * t.element_size() for g in groups if g for t in g.values())


def save(folder: Path, saved: Saved, model: dict[str, torch.Tensor], ema: dict[str, torch.Tensor] | None,
         opt: torch.optim.Optimizer, keep: int) -> Path:
    """Write checkpoint `step-<step>` atomically; keep the newest `keep` (>= 1) afterwards.

    The hidden `.step-N.tmp-<pid>` folder is removed on any failure (Ctrl-C and SIGTERM too); a
    full disk is a DiskFullError with the bytes a checkpoint needs."""
    folder.mkdir(parents=True, exist_ok=True)
    final = folder / f"{PREFIX}{saved.step:08d}"
    tmp = folder / f".{final.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    opt_tensors, opt_meta = optimizer_tensors(opt)
    try:
        tmp.mkdir()
        save_file(model, str(tmp / "model.safetensors"))
        if ema is not None:
            save_file(ema, str(tmp / "ema.safetensors"))
        save_file(opt_tensors, str(tmp / "optimizer.safetensors"))
        state = {"format": FORMAT, "step": saved.step, "epoch": saved.epoch, "batch": saved.batch,
                 "optimizer": opt_meta, **saved.extra}
        (tmp / "state.json").write_text(json.dumps(state, indent=1))
        for f in tmp.iterdir():
            with f.open("rb") as fh:
                os.fsync(fh.fileno())
        if final.exists():  # the same step saved again (e.g. signal right after a periodic save)
            shutil.rmtree(final)
        os.replace(tmp, final)
    except BaseException as err:
        shutil.rmtree(tmp, ignore_errors=True)
        if not isinstance(err, Exception):
            raise
        text = f"{err.strerror or err}" if isinstance(err, OSError) else str(err)
        if (isinstance(err, OSError) and err.errno in (errno.ENOSPC, errno.EDQUOT)) or "No space left" in text \
                or "code: 28" in text:
            full = disk_full(folder, _nbytes(model, ema, opt_tensors))
            raise CheckpointError(f"cannot write checkpoint {final.name}: {full.message}",
                                  "free disk space; the previous checkpoint is intact") from None
        if isinstance(err, OSError) or type(err).__name__ == "SafetensorError":
            raise CheckpointError(f"cannot write checkpoint {final}: {text.splitlines()[0]}",
                                  "free disk space; the previous checkpoint is intact") from None
        raise
    for old in complete(folder)[:-max(1, keep)]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's live process
        return True
    return True


def remove_stale(folder: Path) -> list[Path]:
    """Remove `.step-N.tmp-<pid>` folders left by a process that no longer runs (kill -9, power
    loss): a half checkpoint that nothing will finish. A live writer's folder is kept."""
    removed: list[Path] = []
    if not folder.is_dir():
        return removed
    for p in folder.iterdir():
        if not (p.name.startswith(f".{PREFIX}") and ".tmp-" in p.name):
            continue
        pid = p.name.rsplit(".tmp-", 1)[1]
        if pid.isdigit() and (int(pid) == os.getpid() or not _alive(int(pid))):
            shutil.rmtree(p, ignore_errors=True)
            removed.append(p)
    return removed


def complete(folder: Path) -> list[Path]:
    """Finished checkpoints in `folder`, oldest first (a folder counts once its state.json exists)."""
    if not folder.is_dir():
        return []
    found = [p for p in folder.iterdir() if p.name.startswith(PREFIX) and (p / "state.json").is_file()]
    return sorted(found, key=lambda p: int(p.name[len(PREFIX):]))


def latest(run_dir: Path) -> Path:
    found = complete(run_dir / "checkpoints")
    if not found:
        raise CheckpointError(f"{run_dir}: no checkpoint to resume from (checkpoints/step-* is empty)",
                              "start a new run without --resume")
    return found[-1]


def load(path: Path) -> tuple[dict[str, Any], dict[str, torch.Tensor], dict[str, torch.Tensor] | None,
                              dict[str, torch.Tensor]]:
    """(state, model tensors, EMA tensors or None, optimizer tensors) of one checkpoint folder."""
    try:
        state = json.loads((path / "state.json").read_text())
        model = load_file(str(path / "model.safetensors"))
        ema = load_file(str(path / "ema.safetensors")) if (path / "ema.safetensors").is_file() else None
        opt = load_file(str(path / "optimizer.safetensors"))
    except (OSError, ValueError) as err:
        raise CheckpointError(f"{path}: unreadable checkpoint ({err})") from None
    if state.get("format") != FORMAT:
        raise CheckpointError(f"{path}: checkpoint format {state.get('format')} (expected {FORMAT})")
    return state, model, ema, opt
