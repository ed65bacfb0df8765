"""Learning-rate multipliers by step (sgm `lr_scheduler.py`), as pure functions of the step.

The factor multiplies `[train].lr` (the reference's LambdaLR "use with base lr 1.0"), evaluated
at the optimizer step n = 0, 1, 2, ... exactly as LambdaLR stepped once per batch does.

* constant:        1
* warmup:          f_start -> f_max linearly over warmup_steps, then f_max
* warmup_cosine:   LambdaWarmUpCosineScheduler (cycle_lengths[0] = max_decay_steps)
* cosine_cycles:   LambdaWarmUpCosineScheduler2 (one entry per cycle)
* linear_cycles:   LambdaLinearScheduler
Past the last cycle the reference crashes (its cycle lookup returns None, docs/reference.md §8.35);
here the last cycle's end value holds.
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable
from itertools import accumulate

from gm.train.config import TrainConfig


def _warm(n: float, warm: float, f_start: float, f_max: float) -> float:
    return (f_max - f_start) / warm * n + f_start


def warmup_cosine(n: int, warm: int, f_min: float, f_max: float, f_start: float, decay_steps: float) -> float:
    """LambdaWarmUpCosineScheduler.schedule(n)."""
    if n < warm:
        return _warm(n, warm, f_start, f_max)
    t = min((n - warm) / (decay_steps - warm), 1.0)
    return f_min + 0.5 * (f_max - f_min) * (1 + math.cos(t * math.pi))


def _cycle(n: int, lengths: tuple[float, ...]) -> tuple[int, float]:
    """(cycle index, step within it): the first cycle whose cumulative end is >= n (sgm's
    find_in_interval). Past the end: the last cycle, clamped to its length."""
    ends = list(accumulate(lengths))
    i = bisect.bisect_left(ends, n)
    if i == len(ends):
        return len(ends) - 1, lengths[-1]
    return i, n - (ends[i] - lengths[i])


def cosine_cycles(n: int, cfg: TrainConfig) -> float:
    """LambdaWarmUpCosineScheduler2.schedule(n)."""
    c, m = _cycle(n, cfg.cycle_lengths)
    warm = cfg.warmup_steps[c]
    if m < warm:
        return _warm(m, warm, cfg.f_start[c], cfg.f_max[c])
    t = min((m - warm) / (cfg.cycle_lengths[c] - warm), 1.0)
    return cfg.f_min[c] + 0.5 * (cfg.f_max[c] - cfg.f_min[c]) * (1 + math.cos(t * math.pi))


def linear_cycles(n: int, cfg: TrainConfig) -> float:
    """LambdaLinearScheduler.schedule(n): warm-up, then linear f_max -> f_min over the cycle."""
    c, m = _cycle(n, cfg.cycle_lengths)
    warm = cfg.warmup_steps[c]
    if m < warm:
        return _warm(m, warm, cfg.f_start[c], cfg.f_max[c])
    length = cfg.cycle_lengths[c]
    return cfg.f_min[c] + (cfg.f_max[c] - cfg.f_min[c]) * (length - m) / length


def lr_factor(cfg: TrainConfig) -> Callable[[int], float]:
    """The multiplier function of the preset's schedule."""
    kind = cfg.lr_schedule
    if kind == "constant":
        return lambda n: 1.0
    if kind == "warmup":
        warm = cfg.warmup_steps[0]
        return lambda n: _warm(n, warm, cfg.f_start[0], cfg.f_max[0]) if n < warm else cfg.f_max[0]
    if kind == "warmup_cosine":
        return lambda n: warmup_cosine(
            n, cfg.warmup_steps[0], cfg.f_min[0], cfg.f_max[0], cfg.f_start[0], cfg.cycle_lengths[0]
        )
    if kind == "cosine_cycles":
        return lambda n: cosine_cycles(n, cfg)
    return lambda n: linear_cycles(n, cfg)
