"""How many CPU threads torch should use when a preset leaves it to gm: the cores that are free.

torch defaults to one thread per core. On a machine where another job already keeps cores busy,
every extra torch thread waits for a core at each parallel region, and small models (the
training demo) become several times slower than with one thread (BENCHMARKS.md, "Demo threads").
So gm counts the cores it may use (CPU affinity, a cgroup CPU quota), subtracts the
one-minute load average, and never goes below one thread.
"""

from __future__ import annotations

import math
import os
from pathlib import Path


def usable_cores() -> int:
    """Cores this process may run on: its affinity mask, capped by a cgroup v2 CPU quota."""
    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # macOS, Windows
        cores = os.cpu_count() or 1
    try:
        quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
        if quota != "max":
            cores = min(cores, max(1, math.floor(int(quota) / int(period))))
    except (OSError, ValueError):
        pass
    return max(1, cores)


def busy_cores() -> float:
    """Runnable work already on the machine (the one-minute load average; 0 where unknown)."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return 0.0


def pick_threads(requested: int = 0) -> tuple[int, str]:
    """(threads, why): `requested` > 0 is taken as it is; otherwise the usable cores not already
    busy, rounded to the nearest whole core, at least 1."""
    if requested > 0:
        return requested, f"{requested} CPU threads (as the preset asks)"
    cores, load = usable_cores(), busy_cores()
    threads = max(1, min(cores, cores - math.floor(load + 0.5)))
    return threads, f"{threads} CPU thread{'s' if threads > 1 else ''} ({cores} usable cores, load {load:.1f})"
