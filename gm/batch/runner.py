"""Run many jobs with one model load per process, resumably, sharded over torchrun ranks.

`run_batch` knows nothing about gm's pipelines: it gets the validated jobs, a `load_model(ranks)`
called once per process (and only when that process has work), and a `run_one(model, job_value,
folder)` that writes one job's outputs into `folder`. See manifest.py for the folder layout and
the crash-safety rules.
"""

from __future__ import annotations

import json
import shutil
import time
from collections.abc import Callable, Hashable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Generic, TypeVar

from gm.batch import manifest as mf
from gm.batch.jobfile import Job, fingerprint
from gm.batch.ranks import Ranks
from gm.console import ProgressTask, console
from gm.errors import GmError

T = TypeVar("T")
M = TypeVar("M")

Extra = Mapping[str, Any] | None  # what run_one may return: more fields for the job's manifest record


@dataclass
class Summary:
    """What a batch did (rank 0 counts all ranks; other ranks count their own jobs)."""

    total: int = 0
    skipped: int = 0  # done by an earlier run, outputs still there
    done: int = 0  # run now
    failed: int = 0
    seconds: float = 0.0
    loads: int = 0  # load_model calls in this process (0 or 1)
    manifest: Path = Path(mf.MANIFEST)
    errors: list[str] = field(default_factory=list)  # "name: message" of each failed job

    @property
    def jobs_per_s(self) -> float:
        return self.done / self.seconds if self.seconds > 0 else 0.0

    def line(self) -> str:
        return (f"{self.total} jobs: {self.done} run now, {self.skipped} already done, {self.failed} failed "
                f"({self.jobs_per_s:.2f} jobs/s) -> {self.manifest}")


@dataclass
class _Plan(Generic[T]):
    """Who does what: the jobs still to do (all ranks agree on it), this rank's share, old records."""

    pending: list[Job[T]]
    mine: list[Job[T]]
    digests: dict[str, str]
    records: dict[str, dict[str, Any]]


def default_on_done(job: Job[Any], paths: list[Path], record: dict[str, Any]) -> None:
    """Each written file on stdout as soon as its job is published (one path, or JSON with --json)."""
    for path in paths:
        console.result(path, job=job.name, seed=record.get("seed"))


def _plan(jobs: Sequence[Job[T]], out: Path, ranks: Ranks, digest_of: Callable[[T], str]) -> _Plan[T]:
    """Rank 0 decides which jobs are still to do and tells the others (one view of the folder)."""
    digests = {job.name: digest_of(job.value) for job in jobs}
    todo = None
    if ranks.main:
        records = mf.latest(mf.read_records(out / mf.MANIFEST))
        todo = json.dumps([job.name for job in jobs if not mf.is_done(records.get(job.name), digests[job.name], out)])
    names = set(json.loads(ranks.share(todo, "pending")))  # the others wait here until rank 0 has merged
    records = mf.latest(mf.read_records(out / mf.MANIFEST))
    pending = [job for job in jobs if job.name in names]
    return _Plan(pending, pending[ranks.rank::ranks.world], digests, records)


def _groups(jobs: list[Job[T]], batch_size: int, key: Callable[[T], Hashable] | None) -> list[list[Job[T]]]:
    """Consecutive jobs with equal keys, `batch_size` at most per group (singletons without a key)."""
    groups: list[list[Job[T]]] = []
    for job in jobs:
        if (groups and key is not None and len(groups[-1]) < batch_size
                and key(groups[-1][0].value) == key(job.value)):
            groups[-1].append(job)
        else:
            groups.append([job])
    return groups


def _seed(job: Job[Any]) -> Any:
    return getattr(job.value, "seed", job.options.get("seed"))


def _record(job: Job[Any], digest: str, ranks: Ranks, status: str, seconds: float,
            more: Mapping[str, Any]) -> dict[str, Any]:
    """A manifest line; a caller's extra fields (`more`) never replace the layer's own."""
    own = {"job": job.name, "index": job.index, "id": job.id, "line": job.line, "hash": digest, "status": status,
           "seconds": round(seconds, 3), "rank": ranks.rank, "time": time.strftime("%Y-%m-%dT%H:%M:%S%z")}
    return {"seed": _seed(job), **more, **own}


def _job_failure(err: Exception) -> GmError | None:
    """The failures that belong to one job, not to the batch: a GmError (a bad input), or running
    out of memory (a size too big for this device; the next job may well fit)."""
    if isinstance(err, GmError):
        return err
    from gm.errors import out_of_memory

    return out_of_memory(err, console.failed_phase)


def _hide_finished_phases(bar: ProgressTask) -> None:
    """Keep the display to the overall bar and the running job's phases: a thousand jobs must not
    leave three thousand finished phase bars on the screen. (Hidden, not removed: gm.console finds
    its tasks by position.)"""
    if bar.progress is not None:
        for task in bar.progress.tasks:
            if task.id != bar.task_id and task.finished and task.visible:
                bar.progress.update(task.id, visible=False)


class _Batch(Generic[T, M]):
    """The state of one run_batch call on one rank."""

    def __init__(self, out: Path, ranks: Ranks, plan: _Plan[T], load_model: Callable[[Ranks], M],
                 run_group: Callable[[M, list[T], list[Path]], list[Extra]],
                 on_done: Callable[[Job[T], list[Path], dict[str, Any]], None] | None) -> None:
        self.out, self.ranks, self.plan = out, ranks, plan
        self.load_model, self.run_group, self.on_done = load_model, run_group, on_done
        self.part = out / mf.MANIFEST if ranks.world == 1 else mf.part_path(out, ranks.rank)
        self.model: M | None = None
        self.summary = Summary(total=len(plan.digests), skipped=len(plan.digests) - len(plan.pending),
                               manifest=out / mf.MANIFEST)

    def run(self, group: list[Job[T]]) -> None:
        if self.model is None:
            self.model = self.load_model(self.ranks)
            self.summary.loads += 1
        for job in group:  # an old folder of a job to redo goes aside before anything is written
            mf.set_aside(self.out, job.name, self.plan.records.get(job.name))
        temps = [mf.temp_path(self.out, job.name) for job in group]
        started = time.perf_counter()
        try:
            for tmp in temps:
                tmp.mkdir()
            try:
                extras = self.run_group(self.model, [job.value for job in group], temps)
            except Exception as raised:  # noqa: BLE001 - a job's own failure is recorded, anything else re-raised
                err = _job_failure(raised)
                if err is None:
                    raise
                seconds = (time.perf_counter() - started) / len(group)
                for job in group:
                    record = _record(job, self.plan.digests[job.name], self.ranks, "failed", seconds,
                                     {"files": [], "error": str(err)})
                    mf.append(self.part, record)
                    self.summary.failed += 1
                    self.summary.errors.append(f"{job.name}: {err}")
                return
            seconds = (time.perf_counter() - started) / len(group)
            for job, tmp, extra in zip(group, temps, extras, strict=True):
                files = mf.job_files(tmp, job.name)
                record = _record(job, self.plan.digests[job.name], self.ranks, "done", seconds,
                                 {**dict(extra or {}), "files": files})
                mf.append(self.part, record)  # first the record, then the folder: a crash between them
                mf.publish(tmp, self.out / job.name)  # finds a record whose files are missing, and redoes it
                self.summary.done += 1
                if self.on_done is not None:
                    self.on_done(job, [self.out / f for f in files], record)
        finally:
            for tmp in temps:
                shutil.rmtree(tmp, ignore_errors=True)


def run_batch(jobs: Sequence[Job[T]], load_model: Callable[[Ranks], M],
              run_one: Callable[[M, T, Path], Extra] | None, out_dir: str | Path, *,
              ranks: Ranks | None = None, digest: Callable[[T], str] = fingerprint,
              run_many: Callable[[M, list[T], list[Path]], list[Extra] | None] | None = None,
              batch_key: Callable[[T], Hashable] | None = None, batch_size: int = 1,
              on_done: Callable[[Job[T], list[Path], dict[str, Any]], None] | None = default_on_done,
              label: str = "jobs") -> Summary:
    """Run every job not yet done in `out_dir`, this rank's share of them, with one model load.

    run_one(model, job.value, folder) writes one job's files into `folder` (a temporary folder,
    renamed to out_dir/<job.name> once the job is through) and may return extra manifest fields.
    With run_many and batch_size > 1, consecutive jobs with equal batch_key(value) are run
    together: run_many(model, values, folders) -> one extra (or None) per job.
    A job raising GmError is recorded as failed and the rest go on; at the end a GmError names the
    failures (exit 1). Other exceptions stop the batch (finished jobs stay finished)."""
    from gm.io.files import ensure_dir

    ranks = ranks or Ranks()
    if run_one is None and run_many is None:
        raise ValueError("run_batch needs run_one or run_many")
    group_size = batch_size if run_many is not None and (batch_size > 1 or run_one is None) else 1

    def run_group(model: M, values: list[T], folders: list[Path]) -> list[Extra]:
        if group_size == 1 and run_one is not None:
            return [run_one(model, values[0], folders[0])]
        assert run_many is not None
        return list(run_many(model, values, folders) or [None] * len(values))

    if not ranks.main:
        console.quiet = True  # one progress display and one summary: rank 0's
    out = ensure_dir(out_dir)
    if ranks.main:  # a clean folder for everyone: no dead processes' leftovers, one manifest
        mf.clean_stale(out)
        mf.merge(out)
    started = time.perf_counter()
    plan = _plan(jobs, out, ranks, digest)
    batch = _Batch(out, ranks, plan, load_model, run_group, on_done)
    if plan.pending and not plan.mine:
        console.log(f"rank {ranks.rank}: nothing to do ({len(plan.pending)} jobs for {ranks.world} ranks)")
    with console.task(f"{label} ({batch.summary.skipped} done before)" if batch.summary.skipped else label,
                      total=len(plan.pending), unit="job") as bar:
        for group in _groups(plan.mine, group_size, batch_key):
            batch.run(group)
            bar.update(completed=ranks.add("done", len(group)))
            _hide_finished_phases(bar)
        ranks.add("finished", 1)
        if ranks.main and ranks.world > 1:  # the bar keeps moving while the other ranks finish
            while ranks.add("finished", 0) < ranks.world:
                bar.update(completed=ranks.add("done", 0))
                time.sleep(0.2)
            bar.update(completed=ranks.add("done", 0))
    batch.summary.seconds = time.perf_counter() - started
    if ranks.main:
        mf.merge(out)
        if ranks.world > 1:
            _count_all_ranks(batch.summary, plan, out)
        console.log(batch.summary.line())
    return batch.summary


def _count_all_ranks(summary: Summary, plan: _Plan[Any], out: Path) -> None:
    """Rank 0's summary over every rank's jobs, from the merged manifest."""
    records = mf.latest(mf.read_records(out / mf.MANIFEST))
    summary.done, summary.failed, summary.errors = 0, 0, []
    for job in plan.pending:
        record = records.get(job.name)
        if mf.is_done(record, plan.digests[job.name], out):
            summary.done += 1
        elif record is not None and record.get("status") == "failed" and record.get("hash") == plan.digests[job.name]:
            summary.failed += 1
            summary.errors.append(f"{job.name}: {record.get('error')}")


def check_failures(summary: Summary, ranks: Ranks) -> None:
    """A GmError (exit 1) naming the failed jobs, on rank 0; other ranks just exit 1 (no repeated message)."""
    if summary.failed == 0:
        return
    if not ranks.main:
        raise SystemExit(1)
    first = summary.errors[0] if summary.errors else ""
    raise GmError(f"{summary.failed} of {summary.total} jobs failed (first: {first})",
                  f"see {summary.manifest}; run the same command again to retry only those")
