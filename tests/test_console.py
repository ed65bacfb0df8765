"""gm/console.py: progress bars only on a terminal without --quiet, rates as it/s or s/it, results on stdout."""

from __future__ import annotations

import io
from types import SimpleNamespace

from rich.console import Console as RichConsole

from gm.console import Console, GpuMemoryColumn, RateColumn


def run_phase(terminal: bool, quiet: bool = False) -> str:
    buffer = io.StringIO()
    con = Console(err=RichConsole(file=buffer, force_terminal=terminal, width=120, highlight=False))
    con.configure(quiet=quiet)
    with con.task("sample", total=3, unit="step") as bar:
        for _ in range(3):
            bar.advance()
    return buffer.getvalue()


def test_progress_is_drawn_only_on_a_terminal_without_quiet() -> None:
    drawn = run_phase(terminal=True)
    assert "sample" in drawn and "3/3" in drawn and "step/s" in drawn
    assert run_phase(terminal=False) == ""
    assert run_phase(terminal=True, quiet=True) == ""


def test_rate_switches_to_seconds_per_step_when_slow() -> None:
    column = RateColumn()
    slow = SimpleNamespace(finished_speed=None, speed=0.25, fields={"unit": "step"})
    fast = SimpleNamespace(finished_speed=None, speed=12.5, fields={})
    assert column.render(slow).plain == "4.00 s/step"
    assert column.render(fast).plain == "12.50 it/s"
    assert column.render(SimpleNamespace(finished_speed=None, speed=None, fields={})).plain == "-"
    assert GpuMemoryColumn().render(slow).plain == ""  # no CUDA here: no memory column text


def test_quiet_silences_logs_and_warnings_but_not_errors_or_results(capsys) -> None:
    buffer = io.StringIO()
    con = Console(err=RichConsole(file=buffer, width=80, highlight=False))
    con.configure(quiet=True)
    con.log("loading")
    con.warn("small")
    con.error("broken (hint)")
    con.result("out/000000.png", seed=1)
    assert buffer.getvalue() == "gm: error: broken (hint)\n"
    assert capsys.readouterr().out == "out/000000.png\n"


def test_warn_once_per_command() -> None:
    buffer = io.StringIO()
    con = Console(err=RichConsole(file=buffer, width=120, highlight=False))
    for _command in range(2):
        con.configure()
        for _view in range(9):  # e.g. one per view video of a video4d run
            con.warn_once("frames of 64x64 are too small for the invisible watermark")
        con.warn_once("another message")
    assert buffer.getvalue().splitlines() == [
        "warning: frames of 64x64 are too small for the invisible watermark",
        "warning: another message",
    ] * 2


def test_finished_phases_are_timed() -> None:
    con = Console(err=RichConsole(file=io.StringIO(), width=120))
    con.configure()
    with con.task("load", total=1):
        with con.task("sample", total=2):
            pass
    try:
        with con.task("decode", total=1):
            raise RuntimeError("failed phase")
    except RuntimeError:
        pass
    assert [name for name, _ in con.timings] == ["sample", "load"]  # innermost first; a failed one is not
    assert all(seconds >= 0 for _, seconds in con.timings)
    assert con.timings[1][1] >= con.timings[0][1]
    con.configure()
    assert con.timings == []
