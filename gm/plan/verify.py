"""Plan vs measurement: run a phase for real (CPU or CUDA) and compare with its plan.

The real engine has the same architecture as the planner's meta engine (random or loaded weights);
the phase code is the very function the planner traced, only on a real device, so the figures
compare the tracker's accounting with the allocator's.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch

from gm.models.build import Engine
from gm.plan import workload as wl
from gm.plan.measure import cpu_allocator_peak, cuda_peak
from gm.plan.planner import Planner


@dataclass(frozen=True)
class Comparison:
    phase: str
    planned: int  # bytes: the phase's activations + workspace in the plan
    measured: int  # bytes: allocator peak of the same call above what was allocated before

    @property
    def ratio(self) -> float:
        return self.planned / max(self.measured, 1)


def real_conditioning(planner: Planner, device: torch.device) -> dict[str, Any]:
    """Zero tensors on `device` with the shapes the planner's conditioning has."""
    return {k: torch.zeros(v.shape, dtype=v.dtype, device=device) for k, v in planner.conditioning().items()}


def _measure(fn: Callable[[], Any], device: torch.device, warmup: bool) -> int:
    if warmup:
        with torch.inference_mode():
            fn()
    return cuda_peak(fn, device) if device.type == "cuda" else cpu_allocator_peak(fn)


def compare_sample(planner: Planner, engine: Engine, device: torch.device, two_pass: bool = False,
                   warmup: bool = True) -> Comparison:
    cond = real_conditioning(planner, device)
    fn = lambda: wl.sample_step(engine, planner.work, cond, planner.preset, two_pass,  # noqa: E731
                                planner.dtype, dev=device)
    planned = planner.sample(two_pass)[0].peak.bytes
    return Comparison("sample" + (" (two-pass CFG)" if two_pass else ""), planned, _measure(fn, device, warmup))


def compare_decode(planner: Planner, engine: Engine, device: torch.device, frames: int,
                   warmup: bool = True) -> Comparison:
    fn = lambda: wl.decode_call(engine, planner.work, frames, None, planner.vae_dtype, dev=device)  # noqa: E731
    planned = planner.decode(frames)[0].peak.bytes
    return Comparison(f"decode {frames} frame(s)", planned, _measure(fn, device, warmup))
