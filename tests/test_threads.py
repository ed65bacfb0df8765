"""gm.threads: the free cores, never fewer than one thread, an explicit request untouched."""

from __future__ import annotations

import os

import pytest

from gm import threads


@pytest.mark.parametrize(("cores", "load", "expected"), [(2, 0.1, 2), (2, 0.6, 1), (2, 1.0, 1), (2, 7.3, 1),
                                                          (16, 3.2, 13), (1, 0.0, 1), (8, 0.49, 8)])
def test_free_cores(monkeypatch: pytest.MonkeyPatch, cores: int, load: float, expected: int) -> None:
    monkeypatch.setattr(threads, "usable_cores", lambda: cores)
    monkeypatch.setattr(threads, "busy_cores", lambda: load)
    picked, why = threads.pick_threads(0)
    assert picked == expected and f"{cores} usable cores, load {load:.1f}" in why


def test_request_wins_and_affinity_is_counted(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(threads, "busy_cores", lambda: 99.0)
    assert threads.pick_threads(3) == (3, "3 CPU threads (as the preset asks)")
    assert 1 <= threads.usable_cores() <= len(os.sched_getaffinity(0))
