"""What a call really allocates, to check plans against: torch's CPU allocator trace, or CUDA stats.

On the CPU, torch's profiler with `profile_memory=True` records every allocation and free of the
CPU allocator with the running total; the largest total during the call minus the total before is
the call's peak of live tensor bytes, independent of glibc's heap (which keeps freed pages resident
and makes RSS noisy at small sizes). On CUDA it is `max_memory_allocated` minus the allocation
before the call.
"""

from __future__ import annotations

import gc
import json
import os
import tempfile
from collections.abc import Callable
from typing import Any

import torch


def _trace_peak(path: str) -> int:
    with open(path) as f:
        events = json.load(f).get("traceEvents", [])
    totals = [int(e["args"]["Total Allocated"]) for e in events
              if e.get("name") == "[memory]" and "Total Allocated" in e.get("args", {})]
    bytes_ = [int(e["args"].get("Bytes", 0)) for e in events if e.get("name") == "[memory]"]
    if not totals:
        return 0
    # The first event's total is after its own allocation: the level before the call is that minus it.
    start = totals[0] - bytes_[0]
    return max(totals) - start


def cpu_allocator_peak(fn: Callable[[], Any]) -> int:
    """Peak bytes of live CPU tensors allocated during `fn()` (its result dropped afterwards)."""
    from torch.profiler import ProfilerActivity, profile

    gc.collect()
    with torch.inference_mode(), profile(activities=[ProfilerActivity.CPU], profile_memory=True) as prof:
        out = fn()
        del out
    fd, path = tempfile.mkstemp(suffix=".json")
    os.close(fd)
    try:
        prof.export_chrome_trace(path)
        return _trace_peak(path)
    finally:
        os.unlink(path)


def cuda_peak(fn: Callable[[], Any], device: torch.device) -> int:
    """Peak bytes allocated on `device` during `fn()` above what was allocated before."""
    gc.collect()
    torch.cuda.synchronize(device)
    torch.cuda.reset_peak_memory_stats(device)
    base = torch.cuda.memory_allocated(device)
    with torch.inference_mode():
        out = fn()
        torch.cuda.synchronize(device)
        del out
    return torch.cuda.max_memory_allocated(device) - base
