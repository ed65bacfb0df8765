"""gm vs diffusers per call: equivalence check, then median time and peak memory of each.

Both models of a case share their weight tensors (bench/peers.py), so one copy of a full-size
model is resident at a time; gm and the peer are timed one after the other in the same process
on the same inputs, and the case is freed before the next one is built.
"""

from __future__ import annotations

import gc
import time
from dataclasses import asdict, dataclass

import torch

from bench.cases import CASES, Sizes
from bench.measure import Timing, peak_call, runs_for, time_calls, timing
from bench.peers import max_abs_diff
from gm.device import compiled


@dataclass
class CaseResult:
    name: str
    shape: str
    params_m: float
    build_s: float
    gm: Timing
    peer: Timing | None
    max_abs_diff: float | None
    rel_diff: float | None  # max abs diff / max |gm output|
    skip_reason: str
    compiled: bool = False
    first_call_s: float = 0.0  # gm's first (warm-up) call: includes torch.compile's work when compiled

    def to_dict(self) -> dict:
        return asdict(self)


def run_case(name: str, sizes: Sizes, dtype: torch.dtype, device: torch.device, budget_s: float,
             tolerance: float, compile: bool = False) -> CaseResult:
    """Build the case, check gm == peer on a first (warm-up) call of each, then measure each one's
    peak on a second call (the first call of a shape also pays one-time allocations, e.g. the
    oneDNN primitive cache, which would fall on whichever model ran first), then time both.

    `compile`: gm's call is compiled as `gm --compile` compiles (gm.device.compiled) and the
    peer stays eager; the first call then also pays the compilation."""
    t0 = time.perf_counter()
    prep = CASES[name](sizes, dtype, device)
    build_s = time.perf_counter() - t0
    if compile:
        prep.gm = compiled(prep.gm, device)
    ref, gm_first, _ = peak_call(prep.gm, device)
    ref = ref.float().cpu()
    diff = rel = None
    peer_second, peer_peak = 0.0, 0.0
    if prep.peer is not None:
        out, _, _ = peak_call(prep.peer, device)
        diff = max_abs_diff(ref, out.float().cpu())
        rel = diff / max(float(ref.abs().max()), 1e-12)
        del out
        if not rel <= tolerance:
            raise AssertionError(f"{name}: gm and peer differ (max abs {diff:.3g}, rel {rel:.3g})")
    _, gm_second, gm_peak = peak_call(prep.gm, device)
    if prep.peer is not None:
        _, peer_second, peer_peak = peak_call(prep.peer, device)
    runs = runs_for(max(gm_second, peer_second), budget_s)  # warmed-up calls: no compilation or first-call costs
    fns = [prep.gm] if prep.peer is None else [prep.gm, prep.peer]
    times = time_calls(fns, device, runs)
    gm_t = timing(times[0], gm_peak)
    peer_t = timing(times[1], peer_peak) if prep.peer is not None else None
    result = CaseResult(name, prep.shape, prep.params / 1e6, build_s, gm_t, peer_t, diff, rel,
                        prep.skip_reason, compile, gm_first)
    del prep, ref
    gc.collect()
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result
