"""Job files: JSON Lines (one object of option values per job) or plain text (one prompt per line).

The whole file is read and every line checked before anything loads: a bad line is reported with
its file name and line number, all bad lines at once, and nothing runs. Each job's options are
handed to a caller-given `validate(options) -> JobT` (the command's own checks); unknown option
names are caught here first, with a did-you-mean.
"""

from __future__ import annotations

import difflib
import hashlib
import json
import re
import sys
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Generic, TypeVar

from gm.errors import GmError, UsageError

T = TypeVar("T")

ID_KEY = "id"
_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,99}$")
RESERVED = ("superseded",)  # folder names the batch layer uses itself (ids starting "manifest" are refused too)


class JobFileError(UsageError):
    """Bad lines in a job file (exit 2); `problems` holds one `file:line: what` string per bad line."""

    def __init__(self, source: str, problems: list[str]) -> None:
        lines = "\n".join(f"  {p}" for p in problems)
        count = f"{len(problems)} bad line{'s' * (len(problems) != 1)}"
        super().__init__(f"{source}: {count}, nothing was run:\n{lines}", "fix them and run the command again")
        self.problems = problems


@dataclass(frozen=True)
class Job(Generic[T]):
    """One validated line: where it came from, what it asked, what validate made of it."""

    index: int  # 0-based position among the jobs of the file (blank lines do not count)
    line: int  # 1-based line number in the file, for messages
    id: str | None  # the line's "id", if any
    options: dict[str, Any]  # the line's own options ("id" removed, names normalised)
    value: T  # validate(options)

    @property
    def name(self) -> str:
        """The job's output folder name: its id, else job-NNNNNN (its index)."""
        return self.id if self.id is not None else f"job-{self.index:06d}"


def option_name(key: str) -> str:
    """`--init-image`, `init-image` and `init_image` all name the option `init_image`."""
    return key.lstrip("-").replace("-", "_")


_TYPE_NAMES = {int: "an integer", float: "a number", str: "a string", bool: "true or false", list: "a list"}


def _type_problem(key: str, value: Any, kind: Any) -> str | None:
    """Check a JSON value against a simple option type (int, float, str, bool, list, or a tuple of them)."""
    kinds = kind if isinstance(kind, tuple) else (kind,)
    if value is None and type(None) in kinds:
        return None
    for k in kinds:
        if k is bool and isinstance(value, bool):
            return None
        if k is int and isinstance(value, int) and not isinstance(value, bool):
            return None
        if k is float and isinstance(value, int | float) and not isinstance(value, bool):
            return None
        if k in (str, list) and isinstance(value, k):
            return None
        if k is Path and isinstance(value, str):
            return None
    wanted = " or ".join(_TYPE_NAMES.get(k, "a path" if k is Path else getattr(k, "__name__", str(k)))
                         for k in kinds if k is not type(None))
    return f"'{key}' must be {wanted}, got {json.dumps(value)}"


def _did_you_mean(key: str, known: Iterable[str]) -> str:
    close = difflib.get_close_matches(key, sorted(known), n=1, cutoff=0.6)
    return f" (did you mean '{close[0]}'?)" if close else ""


def check_options(raw: dict[str, Any], known: Mapping[str, Any] | Iterable[str]) -> tuple[dict[str, Any], list[str]]:
    """Normalised options and the problems found (unknown names, wrong JSON types, a name given twice)."""
    names = known if isinstance(known, Mapping) else dict.fromkeys(known)
    options: dict[str, Any] = {}
    problems: list[str] = []
    for key, value in raw.items():
        name = option_name(key)
        if name not in names:
            problems.append(f"unknown option '{key}'{_did_you_mean(name, names)}")
        elif name in options:
            problems.append(f"option '{name}' given twice")
        elif names[name] is not None and (problem := _type_problem(name, value, names[name])):
            problems.append(problem)
        else:
            options[name] = value
    return options, problems


def _check_id(value: Any) -> str | None:
    if not isinstance(value, str) or not _ID.match(value):
        return (f"'id' must be a file-name-safe string (letters, digits, '_', '.', '-'; 100 at most), "
                f"got {json.dumps(value)}")
    if value in RESERVED or value.startswith("manifest") or value.startswith("job-"):
        return f"'id' {value!r} is reserved (ids may not be {', '.join(RESERVED)}, or start with 'manifest' or 'job-')"
    return None


def read_text(source: str | Path, stdin_text: str | None = None) -> tuple[str, str]:
    """(display name, text) of a job file; `-` is stdin (or `stdin_text`, when a caller read it already)."""
    if str(source) == "-":
        return "<stdin>", sys.stdin.read() if stdin_text is None else stdin_text
    path = Path(source).expanduser()
    try:
        return str(source), path.read_text(encoding="utf-8-sig")  # a BOM is not part of line 1
    except FileNotFoundError:
        raise UsageError(f"--jobs {source}: no such file", "give a JSON Lines or text file, or - for stdin") from None
    except IsADirectoryError:
        raise UsageError(f"--jobs {source} is a folder", "give a JSON Lines or text file, or - for stdin") from None
    except UnicodeDecodeError as err:
        raise UsageError(f"--jobs {source}: not UTF-8 text (byte {err.start})", "save the job file as UTF-8") from None
    except OSError as err:
        raise UsageError(f"--jobs {source}: cannot read it: {err.strerror}") from None


def parse_line(text: str, prompt_key: str | None) -> tuple[dict[str, Any] | None, str | None]:
    """A line -> (raw options, None) or (None, problem). `{...}` is JSON; other text is a prompt
    where the command takes one (`prompt_key`)."""
    if text.startswith("{"):
        try:
            value = json.loads(text)
        except json.JSONDecodeError as err:
            return None, f"not valid JSON: {err.msg} (column {err.colno})"
        if not isinstance(value, dict):
            return None, "not a JSON object"
        return value, None
    if prompt_key is None:
        return None, 'not a JSON object (this command takes JSON lines like {"input": "chair.png"})'
    return {prompt_key: text}, None


def parse_jobs(text: str, source: str, validate: Callable[[dict[str, Any]], T],
               options: Mapping[str, Any] | Iterable[str], prompt_key: str | None = None) -> list[Job[T]]:
    """Every line checked; JobFileError listing each bad one (`source:line: problem`), else the jobs."""
    known = options if isinstance(options, Mapping) else dict.fromkeys(options)
    jobs: list[Job[T]] = []
    problems: list[str] = []
    names: dict[str, int] = {}
    for number, raw_line in enumerate(text.splitlines(), start=1):
        line = raw_line.strip()
        if not line:
            continue
        raw, problem = parse_line(line, prompt_key)
        found = [problem] if problem else []
        job_id = None
        if raw is not None:
            if ID_KEY in raw:
                job_id = raw.pop(ID_KEY)
                if (bad := _check_id(job_id)) is not None:
                    found.append(bad)
            opts, bad_options = check_options(raw, known)
            found += bad_options
        if not found:
            try:
                value = validate(opts)
            except GmError as err:
                found.append(str(err))
        if not found:
            job = Job(index=len(jobs), line=number, id=job_id, options=opts, value=value)
            if job.name in names:
                found.append(f"id {job.name!r} is used on line {names[job.name]} already")
            else:
                names[job.name] = number
                jobs.append(job)
        problems += [f"{source}:{number}: {p}" for p in found]
    if problems:
        raise JobFileError(source, problems)
    if not jobs:
        raise UsageError(f"{source}: no jobs in it", "write one JSON object (or, for prompts, one line) per job")
    return jobs


def read_jobs(source: str | Path, validate: Callable[[dict[str, Any]], T],
              options: Mapping[str, Any] | Iterable[str], prompt_key: str | None = None,
              stdin_text: str | None = None) -> list[Job[T]]:
    """Read and validate a whole job file (see parse_jobs)."""
    name, text = read_text(source, stdin_text)
    return parse_jobs(text, name, validate, options, prompt_key)


def _plain(value: Any, ignore: frozenset[str]) -> Any:
    """A JSON-able form of a job value: dataclasses by field, paths as text, sets sorted."""
    import dataclasses
    import enum

    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: _plain(getattr(value, f.name), ignore) for f in dataclasses.fields(value)
                if f.name not in ignore}
    if isinstance(value, Mapping):
        return {str(k): _plain(v, ignore) for k, v in value.items() if k not in ignore}
    if isinstance(value, list | tuple):
        return [_plain(v, ignore) for v in value]
    if isinstance(value, set | frozenset):
        return sorted(_plain(v, ignore) for v in value)
    if isinstance(value, enum.Enum):
        return _plain(value.value, ignore)
    if isinstance(value, str | int | float | bool) or value is None:
        return value
    if hasattr(value, "to_dict"):
        return _plain(value.to_dict(), ignore)
    return str(value)  # Path, torch.dtype, torch.device, ...


def fingerprint(value: Any, ignore: Iterable[str] = ("out_dir",)) -> str:
    """A short hash of everything that decides a job's outputs (fields named in `ignore` left out:
    by default the output folder, which the batch layer chooses per job)."""
    text = json.dumps(_plain(value, frozenset(ignore)), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()[:16]
