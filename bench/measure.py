"""Timing and peak memory of one callable: median of N after warm-up; CUDA events on a GPU.

Peak memory on the CPU is the growth of the resident set during one call: VmHWM (the kernel's
high-water mark, reset by writing 5 to /proc/self/clear_refs) minus VmRSS before. glibc keeps
freed heap pages resident, which would hide a call's activations behind the previous call's, so
for that one call every allocation of 128 KiB or more is served by mmap (returned on free) and the
heap is trimmed first. The timed calls then run with a 32 MiB threshold (glibc's own ceiling).
On a GPU it is `max_memory_allocated` minus the allocation before. Weights are resident before
the call in every case, so the figure is the call's activations and workspace.
"""

from __future__ import annotations

import ctypes
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Timing:
    median_s: float
    runs: list[float]
    peak_mib: float  # memory growth during one call (activations + workspace)


def _proc_status_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def _reset_peak_rss() -> None:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
    except OSError:  # not permitted: VmHWM then keeps the process-wide peak
        pass


_M_MMAP_THRESHOLD = -3
try:
    _LIBC: ctypes.CDLL | None = ctypes.CDLL("libc.so.6")
except OSError:  # not glibc: the CPU peak is then a lower bound
    _LIBC = None


def _malloc_mode(mmap_threshold: int) -> None:
    if _LIBC is not None:
        _LIBC.mallopt(_M_MMAP_THRESHOLD, mmap_threshold)
        _LIBC.malloc_trim(0)


def peak_call(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float, float]:
    """(output, seconds, peak MiB) of one call measured for memory (see the module docstring)."""
    with torch.inference_mode():
        if device.type == "cuda":
            torch.cuda.synchronize(device)
            torch.cuda.reset_peak_memory_stats(device)
            base = torch.cuda.memory_allocated(device)
        else:
            _malloc_mode(128 << 10)
            base = _proc_status_kib("VmRSS") * 1024
            _reset_peak_rss()
        t0 = time.perf_counter()
        out = fn()
        sync(device)
        seconds = time.perf_counter() - t0
        if device.type == "cuda":
            peak = torch.cuda.max_memory_allocated(device) - base
        else:
            peak = _proc_status_kib("VmHWM") * 1024 - base
            _malloc_mode(32 << 20)
    return out, seconds, peak / 2**20


def rss_mib() -> float:
    return _proc_status_kib("VmRSS") / 1024


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_calls(fns: list[Callable[[], object]], device: torch.device, runs: int) -> list[list[float]]:
    """Seconds of `runs` calls of each fn, interleaved (a, b, a, b, ...) so that load from other
    processes hits both alike; CUDA events on a GPU. The caller has warmed every fn up."""
    times: list[list[float]] = [[] for _ in fns]
    with torch.inference_mode():
        for _ in range(runs):
            for fn, out in zip(fns, times):
                if device.type == "cuda":
                    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                    start.record()
                    fn()
                    end.record()
                    torch.cuda.synchronize(device)
                    out.append(start.elapsed_time(end) / 1000)
                else:
                    t0 = time.perf_counter()
                    fn()
                    out.append(time.perf_counter() - t0)
    return times


def runs_for(first_call_s: float, budget_s: float, most: int = 5) -> int:
    """How many timed calls fit in `budget_s` (at least 2, at most `most`)."""
    return max(2, min(most, int(budget_s / max(first_call_s, 1e-6))))


def timing(runs: list[float], peak_mib: float) -> Timing:
    return Timing(statistics.median(runs), runs, peak_mib)
