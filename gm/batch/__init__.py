"""Many jobs per command: job files, one model load per process, resumable output folders, and
data-parallel sharding over torchrun ranks.

The layer is generic: a command passes its option names, a `validate(options) -> job` that merges
a line's options into the command-line defaults, a `load_model(ranks)` and a `run_one(model, job,
folder)`. `run_jobs` does the whole sequence; the pieces (read_jobs, run_batch, init_ranks) are
public for callers that need them apart.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from gm.batch.jobfile import (
    Job,
    JobFileError,
    check_options,
    fingerprint,
    option_name,
    parse_jobs,
    read_jobs,
    read_text,
)
from gm.batch.manifest import MANIFEST, SUPERSEDED
from gm.batch.ranks import Ranks, init_ranks
from gm.batch.runner import Extra, Summary, check_failures, default_on_done, run_batch
from gm.errors import GmError

__all__ = [
    "MANIFEST", "SUPERSEDED", "Extra", "Job", "JobFileError", "Ranks", "Summary", "check_failures", "check_options",
    "default_on_done", "fingerprint", "init_ranks", "option_name", "parse_jobs", "read_jobs", "read_text",
    "run_batch", "run_jobs",
]

T = TypeVar("T")
M = TypeVar("M")


def run_jobs(source: str | Path, *, validate: Callable[[dict[str, Any]], T], options: Mapping[str, Any] | Iterable[str],
             load_model: Callable[[Ranks], M], run_one: Callable[[M, T, Path], Extra] | None, out_dir: str | Path,
             prompt_key: str | None = None, device: str = "auto", digest: Callable[[T], str] = fingerprint,
             run_many: Callable[[M, list[T], list[Path]], list[Extra] | None] | None = None,
             batch_key: Callable[[T], Hashable] | None = None, batch_size: int = 1,
             on_done: Callable[[Job[T], list[Path], dict[str, Any]], None] | None = default_on_done,
             label: str = "jobs") -> Summary:
    """`gm <command> --jobs FILE`: join the torchrun ranks (if any), read and validate the whole
    job file (rank 0 reads stdin for `-` and shares it), run the batch, and raise a GmError (exit 1)
    if jobs failed. A bad job file raises JobFileError (exit 2) before load_model is ever called;
    on ranks other than 0 it exits 2 without repeating rank 0's message."""
    ranks = init_ranks(device)
    try:
        failure: GmError | None = None
        try:
            stdin_text = None
            if str(source) == "-" and ranks.world > 1:
                stdin_text = ranks.share(read_text("-")[1] if ranks.main else None, "jobs-text")
            jobs = read_jobs(source, validate, options, prompt_key, stdin_text)
        except GmError as err:
            failure = err
        ranks.add("read", 1)  # nobody leaves before every rank is up (a rank quitting early breaks the others' start)
        ranks.wait_count("read", ranks.world)
        if failure is not None:  # the same on every rank: rank 0 says it
            if not ranks.main:
                raise SystemExit(failure.exit_code)
            raise failure
        summary = run_batch(jobs, load_model, run_one, out_dir, ranks=ranks, digest=digest, run_many=run_many,
                            batch_key=batch_key, batch_size=batch_size, on_done=on_done, label=label)
        check_failures(summary, ranks)
        return summary
    finally:
        ranks.close()
