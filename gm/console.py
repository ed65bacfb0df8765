"""The only place gm talks to the terminal: results to stdout, progress and logs to stderr.

Results are one path per line (or one JSON object per line with --json) so that gm composes in
shell pipelines (`gm txt2img "a fox" | gm img2vid -`). Progress bars (Rich) show it/s or s/it,
ETA and, on CUDA, GPU memory in use / peak; they are drawn only when stderr is a terminal and
--quiet is off. Warnings always reach stderr unless --quiet. Log, warning and error lines are
never hard-wrapped (soft_wrap), so each stays one line for grep and log files whatever the width.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from rich.console import Console as RichConsole
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    ProgressColumn,
    Task,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)
from rich.text import Text


def gpu_memory() -> tuple[int, int] | None:
    """(in use, peak) bytes on the current CUDA device, if torch is loaded and CUDA is up."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_available() or not torch.cuda.is_initialized():
        return None
    return torch.cuda.memory_allocated(), torch.cuda.max_memory_allocated()


class RateColumn(ProgressColumn):
    """it/s when fast, s/it when slow (diffusion steps on big models take seconds)."""

    def __init__(self, unit: str = "it") -> None:
        super().__init__()
        self.unit = unit

    def render(self, task: Task) -> Text:
        speed = task.finished_speed or task.speed
        if not speed:
            return Text("-", style="progress.data.speed")
        unit = task.fields.get("unit", self.unit)
        if speed >= 1:
            return Text(f"{speed:.2f} {unit}/s", style="progress.data.speed")
        return Text(f"{1 / speed:.2f} s/{unit}", style="progress.data.speed")


class GpuMemoryColumn(ProgressColumn):
    def render(self, task: Task) -> Text:
        mem = gpu_memory()
        if mem is None:
            return Text("")
        used, peak = mem
        return Text(f"GPU {used / 2**30:.1f}/{peak / 2**30:.1f} GiB", style="cyan")


@dataclass
class Console:
    quiet: bool = False
    json_mode: bool = False
    err: RichConsole = field(default_factory=lambda: RichConsole(stderr=True, highlight=False))
    _progress: Progress | None = None
    _depth: int = 0
    _warned: set[str] = field(default_factory=set)
    timings: list[tuple[str, float]] = field(default_factory=list)  # finished phases of this command
    failed_phase: str | None = None  # the phase the last failure happened in
    sync_timings: bool = False  # wait for the GPU at each phase's end, so its seconds are its own (bench)

    @property
    def live(self) -> bool:
        """Draw progress bars? Only on a terminal and without --quiet."""
        return not self.quiet and self.err.is_terminal

    def configure(self, quiet: bool = False, json_mode: bool = False) -> None:
        """Set up for one command (forgets the warn_once messages shown and the phase timings)."""
        self.quiet, self.json_mode = quiet, json_mode
        self._warned.clear()
        self.timings.clear()
        self.failed_phase = None

    def log(self, message: str) -> None:
        if not self.quiet:
            self.err.print(message, markup=False, highlight=False, soft_wrap=True)

    def warn(self, message: str) -> None:
        if not self.quiet:
            self.err.print(f"warning: {message}", style="yellow", markup=False, highlight=False, soft_wrap=True)

    def warn_once(self, message: str) -> None:
        """A warning that would repeat for every file of a run (e.g. one per view video) is shown once."""
        if message not in self._warned:
            self._warned.add(message)
            self.warn(message)

    def error(self, message: str) -> None:
        self.err.print(f"gm: error: {message}", style="red", markup=False, highlight=False, soft_wrap=True)

    def result(self, path: Any = None, **fields: Any) -> None:
        """One result on stdout: its path, or a JSON object with --json. When the reader has gone
        (`gm ... | head -1`) stdout is pointed at /dev/null before BrokenPipeError goes up, so the
        command can end quietly (exit 141, as `run` does) without a second error at exit."""
        try:
            if self.json_mode:
                record = {"path": str(path)} if path is not None else {}
                record.update(fields)
                sys.stdout.write(json.dumps(record, default=str) + "\n")
            elif path is not None:
                sys.stdout.write(f"{path}\n")
            sys.stdout.flush()
        except BrokenPipeError:
            from gm.errors import silence_stdout

            silence_stdout()
            raise

    def _make_progress(self) -> Progress:
        return Progress(
            TextColumn("{task.description}"),
            BarColumn(),
            MofNCompleteColumn(),
            RateColumn(),
            TimeElapsedColumn(),
            TextColumn("ETA"),
            TimeRemainingColumn(),
            GpuMemoryColumn(),
            console=self.err,
            transient=False,
        )

    @contextmanager
    def task(self, description: str, total: float | None, unit: str = "it") -> Iterator[ProgressTask]:
        """A progress bar for one phase (load, sample, decode, train); nested calls share one display.
        Each phase that completes is added to `timings` as (description, seconds)."""
        started = time.perf_counter()
        self.failed_phase = None
        try:
            with self._bar(description, total, unit) as bar:
                yield bar
        except BaseException:
            self.failed_phase = self.failed_phase or description  # the innermost: errors name where
            raise
        if self.sync_timings:
            torch = sys.modules.get("torch")
            if torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized():
                torch.cuda.synchronize()
        self.timings.append((description, time.perf_counter() - started))

    @contextmanager
    def _bar(self, description: str, total: float | None, unit: str) -> Iterator[ProgressTask]:
        if not self.live:
            yield ProgressTask(None, None)
            return
        if self._progress is None:
            self._progress = self._make_progress()
            self._progress.start()
        self._depth += 1
        task_id = self._progress.add_task(description, total=total, unit=unit)
        try:
            yield ProgressTask(self._progress, task_id)
        finally:
            self._progress.update(task_id, completed=self._progress.tasks[task_id].total or 0)
            self._depth -= 1
            if self._depth == 0:
                self._progress.stop()
                self._progress = None


@dataclass
class ProgressTask:
    progress: Progress | None
    task_id: Any
    started: float = field(default_factory=time.perf_counter)

    def advance(self, n: float = 1) -> None:
        if self.progress is not None:
            self.progress.advance(self.task_id, n)

    def update(self, **fields: Any) -> None:
        if self.progress is not None:
            self.progress.update(self.task_id, **fields)


console = Console()
