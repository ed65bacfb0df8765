"""The batch layer (gm/batch) with a toy model: job-file validation, one load for many jobs, same files
as one job at a time, resume, changed lines, failures, batching, and crash leftovers."""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import pytest

from gm.batch import JobFileError, manifest, read_jobs, run_batch, run_jobs
from gm.errors import GmError
from tests import test_batch_toy as toy

JOBS = [
    {"prompt": "a red fox", "seed": 1},
    {"prompt": "a red fox", "seed": 2, "steps": 3},
    {"prompt": "a blue bird", "id": "bird"},
    {"prompt": "a cat", "seed": 7, "size": 12},
]


def write_jobs(path: Path, lines: list[dict | str]) -> Path:
    path.write_text("".join((json.dumps(x) if isinstance(x, dict) else x) + "\n" for x in lines))
    return path


def run(jobs_file: Path | str, out: Path, loads: list | None = None, **kw):
    def load(ranks):
        if loads is not None:
            loads.append(ranks.rank)
        return toy.load_model(ranks)

    return run_jobs(str(jobs_file), validate=toy.validate, options=toy.OPTIONS, prompt_key="prompt",
                    load_model=load, run_one=toy.run_one, out_dir=out, device="cpu", on_done=None, **kw)


def contents(out: Path) -> dict[str, object]:
    """Every output file under out (not the manifest): PNG bytes, npz arrays."""
    found: dict[str, object] = {}
    for path in sorted(out.rglob("*")):
        rel = path.relative_to(out).as_posix()
        if path.is_file() and not rel.startswith("manifest"):
            found[rel] = np.load(path)["pixels"].tobytes() if path.suffix == ".npz" else path.read_bytes()
    return found


def test_bad_lines_are_all_reported_and_nothing_runs(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [
        {"prompt": "ok"},
        {"prompt": "x", "stpes": 30},  # 2: typo
        '{"prompt": "x", "seed": 3',  # 3: broken JSON
        "",
        {"prompt": "x", "seed": "three"},  # 5: wrong type
        {"prompt": "x", "steps": 0},  # 6: validate refuses
        {"prompt": "x", "id": "a"},
        {"prompt": "y", "id": "a"},  # 8: id used twice
        {"prompt": "x", "id": "../evil"},  # 9: unsafe id
        "[1, 2]",  # 10: a plain-text prompt for a text command: accepted
        '["not", "an object"]',
    ])
    loads: list[int] = []
    with pytest.raises(JobFileError) as caught:
        run(jobs, tmp_path / "out", loads)
    problems = caught.value.problems
    assert caught.value.exit_code == 2
    assert [p.split(":")[1] for p in problems] == ["2", "3", "5", "6", "8", "9"]
    assert problems[0] == f"{jobs}:2: unknown option 'stpes' (did you mean 'steps'?)"
    assert "'seed' must be an integer, got \"three\"" in problems[2]
    assert "--steps must be at least 1, got 0" in problems[3]
    assert "used on line 7 already" in problems[4]
    assert loads == [] and not (tmp_path / "out").exists()


def test_json_only_command_and_plain_text(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.txt", ["a fox", "  ", '{"prompt": "b", "seed": 4, "--steps": 5}'])
    parsed = read_jobs(jobs, toy.validate, toy.OPTIONS, prompt_key="prompt")
    assert [(j.index, j.line, j.name, j.value.prompt, j.value.seed, j.value.steps) for j in parsed] == [
        (0, 1, "job-000000", "a fox", 0, 2), (2 - 1, 3, "job-000001", "b", 4, 5)]
    with pytest.raises(JobFileError, match=r"jobs.txt:1: not a JSON object"):
        read_jobs(jobs, toy.validate, toy.OPTIONS, prompt_key=None)  # e.g. orbit: inputs, not prompts
    with pytest.raises(GmError, match="no such file"):
        read_jobs(tmp_path / "missing.jsonl", toy.validate, toy.OPTIONS)


def test_stdin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.stdin", io.StringIO('{"prompt": "a", "seed": 2}\nb\n'))
    summary = run("-", tmp_path / "out")
    assert summary.done == 2 and (tmp_path / "out/job-000001/000000.png").is_file()


def test_one_load_same_files_as_one_job_at_a_time(tmp_path: Path) -> None:
    loads: list[int] = []
    summary = run(write_jobs(tmp_path / "jobs.jsonl", JOBS), tmp_path / "batch", loads)
    assert loads == [0] and (summary.total, summary.done, summary.skipped, summary.failed) == (4, 4, 0, 0)
    single: dict[str, object] = {}
    for k, line in enumerate(JOBS):  # the same jobs, one command each
        out = tmp_path / f"single{k}"
        run(write_jobs(tmp_path / f"one{k}.jsonl", [line]), out)
        name = line.get("id", f"job-{k:06d}")
        single |= {f"{name}/{rel.split('/', 1)[1]}": v for rel, v in contents(out).items()}
    batch = contents(tmp_path / "batch")
    assert batch == single and len(batch) == 8
    records = manifest.read_records(tmp_path / "batch" / manifest.MANIFEST)
    assert [(r["job"], r["status"], r["seed"], r["files"]) for r in records] == [
        (name, "done", seed, [f"{name}/000000.npz", f"{name}/000000.png"])
        for name, seed in (("job-000000", 1), ("job-000001", 2), ("bird", 0), ("job-000003", 7))]
    assert all(isinstance(r["mean"], float) and len(r["hash"]) == 16 for r in records)


def test_rerun_skips_and_a_changed_line_is_redone(tmp_path: Path) -> None:
    jobs, out = write_jobs(tmp_path / "jobs.jsonl", JOBS), tmp_path / "out"
    run(jobs, out)
    first = contents(out)
    loads: list[int] = []
    again = run(jobs, out, loads)
    assert (again.skipped, again.done, loads) == (4, 0, [])  # nothing to do: not even a model load
    changed = [dict(JOBS[0]), dict(JOBS[1], seed=9), *JOBS[2:]]
    (out / "bird/000000.png").unlink()  # a lost output is made again too
    redo = run(write_jobs(jobs, changed), out, loads)
    assert (redo.skipped, redo.done, loads) == (2, 2, [0])
    now = contents(out)
    assert now["job-000001/000000.png"] != first["job-000001/000000.png"]
    assert now["job-000000/000000.png"] == first["job-000000/000000.png"]
    assert now["bird/000000.png"] == first["bird/000000.png"]
    aside = {p.parent.name.rsplit("-", 1)[0]: p.parent.name for p in (out / "superseded").rglob("000000.npz")}
    assert sorted(aside) == ["bird", "job-000001"]  # old outputs moved aside, named by their old hash
    assert now[f"superseded/{aside['job-000001']}/000000.png"] == first["job-000001/000000.png"]
    assert not (out / "superseded" / aside["bird"] / "000000.png").exists()
    records = manifest.read_records(out / manifest.MANIFEST)
    assert len(records) == 4 and len({r["job"] for r in records}) == 4


def test_failed_job_is_recorded_others_finish_and_retry_works(tmp_path: Path) -> None:
    out = tmp_path / "o"
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}, {"prompt": "fail"}, {"prompt": "c"}])
    with pytest.raises(GmError, match=r"1 of 3 jobs failed \(first: job-000001: cannot draw 'fail'"):
        run(jobs, out)
    records = {r["job"]: r for r in manifest.read_records(out / manifest.MANIFEST)}
    assert records["job-000001"]["status"] == "failed" and records["job-000001"]["files"] == []
    assert not (out / "job-000001").exists() and (out / "job-000002/000000.png").is_file()
    write_jobs(jobs, [{"prompt": "a"}, {"prompt": "b"}, {"prompt": "c"}])
    assert run(jobs, out).done == 1


def test_batches_of_equal_shape_give_the_same_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "log"
    monkeypatch.setenv("TOY_LOG", str(log))
    jobs = write_jobs(tmp_path / "jobs.jsonl", JOBS)
    run(jobs, tmp_path / "one")
    log.write_text("")
    run_jobs(str(jobs), validate=toy.validate, options=toy.OPTIONS, load_model=toy.load_model, run_one=None,
             run_many=toy.run_many, batch_key=lambda job: job.size, batch_size=3, out_dir=tmp_path / "many",
             on_done=None)
    assert [x for x in log.read_text().splitlines() if x.startswith("group")] == ["group 3", "group 1"]
    assert contents(tmp_path / "one") == contents(tmp_path / "many")


def test_leftovers_of_dead_processes_are_cleaned(tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dead = manifest.temp_path(out, "job-000000").with_name(
        manifest.temp_path(out, "job-000000").name.replace(f".{os.getpid()}.", ".999999999.", 1))
    dead.mkdir()
    (dead / "000000.png").write_bytes(b"half")
    live = manifest.temp_path(out, "job-000001")  # this (live) process's: kept
    live.mkdir()
    (out / manifest.MANIFEST).write_text(json.dumps({"job": "x", "index": 5}) + '\n{"job": "job-0000')  # torn line
    run(write_jobs(tmp_path / "jobs.jsonl", JOBS[:1]), out)
    assert not dead.exists() and live.exists()
    assert [r["job"] for r in manifest.read_records(out / manifest.MANIFEST)] == ["job-000000", "x"]


def test_run_batch_directly(tmp_path: Path) -> None:
    jobs = read_jobs(write_jobs(tmp_path / "j.jsonl", JOBS[:2]), toy.validate, toy.OPTIONS)
    printed: list[tuple[str, list[Path]]] = []
    summary = run_batch(jobs, toy.load_model, toy.run_one, tmp_path / "out",
                        on_done=lambda job, paths, record: printed.append((job.name, paths)))
    assert summary.loads == 1 and summary.jobs_per_s > 0
    folder = tmp_path / "out/job-000000"
    assert printed[0] == ("job-000000", [folder / "000000.npz", folder / "000000.png"])


def test_progress_shows_the_batch_bar_and_only_the_running_jobs_phases(tmp_path: Path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    from rich.console import Console as RichConsole

    from gm.console import console

    monkeypatch.setattr(console, "err", RichConsole(file=io.StringIO(), force_terminal=True, width=120))
    monkeypatch.setattr(console, "quiet", False)
    seen: list[list[str]] = []

    def run_one(model, job, folder):
        for phase in ("encode", "sample"):  # the phases a pipeline shows inside one job
            with console.task(phase, total=2) as bar:
                bar.advance(2)
        with console.task("decode", total=1) as bar:
            seen.append([t.description for t in bar.progress.tasks if t.visible])
        return toy.run_one(model, job, folder)

    jobs = read_jobs(write_jobs(tmp_path / "j.jsonl", JOBS), toy.validate, toy.OPTIONS)
    run_batch(jobs, toy.load_model, run_one, tmp_path / "out", on_done=None)
    # the overall bar, then this job's phases (the earlier jobs' finished phases are gone)
    assert seen == [["jobs", "encode", "sample", "decode"]] * 4
    screen = console.err.file.getvalue()
    assert "4/4" in screen and "job/s" in screen


def test_out_of_memory_fails_one_job_and_extras_cannot_replace_the_layers_fields(tmp_path: Path) -> None:
    def run_one(model, job, folder):
        if job.size == 12:
            raise RuntimeError("CUDA out of memory. Tried to allocate 2.00 GiB")
        toy.run_one(model, job, folder)
        return {"status": "mine", "files": ["nope"], "job": "x", "note": 1}

    jobs = read_jobs(write_jobs(tmp_path / "j.jsonl", JOBS), toy.validate, toy.OPTIONS)
    summary = run_batch(jobs, toy.load_model, run_one, tmp_path / "out", on_done=None)
    assert (summary.done, summary.failed) == (3, 1)
    assert summary.errors == ["job-000003: out of GPU memory: Tried to allocate 2.00 GiB "
                              "(try --low-vram, a smaller size, -n or --decoding-t, or --dtype fp16)"]
    records = {r["job"]: r for r in manifest.read_records(tmp_path / "out" / manifest.MANIFEST)}
    assert records["bird"]["status"] == "done" and records["bird"]["note"] == 1
    assert records["bird"]["files"] == ["bird/000000.npz", "bird/000000.png"]
    with pytest.raises(RuntimeError, match="a bug"):  # anything else stops the batch
        run_batch(jobs, toy.load_model, lambda m, j, f: (_ for _ in ()).throw(RuntimeError("a bug")), tmp_path / "o2",
                  on_done=None)
    assert not [p for p in (tmp_path / "o2").iterdir() if p.name.startswith(".")]  # its temporary folder is gone
