"""The batch layer across processes: kill -9 in the middle of a batch, then resume; and torchrun with
two gloo ranks on the CPU splitting one job file. Both run tests/test_batch_toy.py as a script."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from gm.batch import manifest
from tests.test_batch import contents, run, write_jobs

TOY = str(Path(__file__).resolve().parent / "test_batch_toy.py")
PROMPTS = [{"prompt": p, "seed": k} for k, p in enumerate(["a fox", "hang", "a bird", "a cat", "a dog"])]


def env(**extra: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", **extra}


def runs(log: Path) -> list[str]:
    return [line.split(" rank=")[0] for line in log.read_text().splitlines() if line.startswith("run ")]


def test_kill_9_mid_batch_then_resume(tmp_path: Path) -> None:
    jobs, out, log, hang = write_jobs(tmp_path / "jobs.jsonl", PROMPTS), tmp_path / "out", tmp_path / "log", tmp_path
    proc = subprocess.Popen([sys.executable, TOY, str(jobs), str(out)], env=env(TOY_LOG=str(log), TOY_HANG=str(hang)),
                            stderr=subprocess.PIPE)
    deadline = time.monotonic() + 60
    while not (hang / "started").exists():  # job 0 is through, job 1 is half-way through writing
        assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read().decode() if proc.stderr else ""
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert sorted(p.name for p in out.iterdir() if not p.name.startswith(".")) == ["job-000000", "manifest.jsonl"]
    assert [p for p in out.iterdir() if p.name.startswith(manifest.TMP_PREFIX)]  # the job in flight: temporary only

    done = subprocess.run([sys.executable, TOY, str(jobs), str(out)], env=env(TOY_LOG=str(log)),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    # job 0 ran once, the job in flight (1) was lost and redone, the rest ran once each
    assert runs(log) == ["run a fox 0", "run hang 1", "run hang 1", "run a bird 2", "run a cat 3", "run a dog 4"]
    assert not [p for p in out.rglob("*") if p.name.startswith(".")]  # no temporary or half-written file left
    records = manifest.read_records(out / manifest.MANIFEST)
    assert [r["job"] for r in records] == [f"job-{k:06d}" for k in range(5)]
    assert all(r["status"] == "done" for r in records)
    reference = tmp_path / "reference"
    run(jobs, reference)
    assert contents(out) == contents(reference) and len(contents(out)) == 10


def test_torchrun_two_gloo_ranks_split_the_jobs(tmp_path: Path) -> None:
    lines = [{"prompt": f"object {k}", "seed": k, "size": 8 + k % 3} for k in range(7)]
    lines[4]["id"] = "four"
    jobs, out, log = write_jobs(tmp_path / "jobs.jsonl", lines), tmp_path / "out", tmp_path / "log"
    (out / "job-000000").mkdir(parents=True)  # a stale folder of job 0 with no record: set aside, redone
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", TOY,
               str(jobs), str(out)]
    done = subprocess.run(command, env=env(TOY_LOG=str(log)), capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    text = log.read_text().splitlines()
    assert sorted(x for x in text if x.startswith("load")) == ["load rank=0", "load rank=1"]  # one load per rank
    ran = [x for x in text if x.startswith("run ")]
    assert sorted(x.split(" rank=")[0] for x in ran) == sorted(f"run object {k} {k}" for k in range(7))  # once each
    assert {x.split(" rank=")[1] for x in ran} == {"0", "1"}
    by_rank = {r["job"]: r["rank"] for r in manifest.read_records(out / manifest.MANIFEST)}
    assert by_rank == {("four" if k == 4 else f"job-{k:06d}"): k % 2 for k in range(7)}  # round robin
    assert not list(out.glob("manifest.rank-*")) and (out / "superseded").is_dir()
    reference = tmp_path / "reference"
    run(jobs, reference)
    assert {k: v for k, v in contents(out).items() if not k.startswith("superseded")} == contents(reference)
    # resumed by one process (any number of ranks may resume): everything is done, nothing loads
    loads: list[int] = []
    again = run(jobs, out, loads)
    assert (again.skipped, again.done, loads) == (7, 0, [])
    assert json.loads((out / manifest.MANIFEST).read_text().splitlines()[0])["job"] == "job-000000"


def test_torchrun_bad_job_file_is_reported_once_and_nothing_runs(tmp_path: Path) -> None:
    jobs = write_jobs(tmp_path / "jobs.jsonl", [{"prompt": "a"}, {"prompt": "b", "sede": 2}])
    log, out = tmp_path / "log", tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2", TOY,
                           str(jobs), str(out)], env=env(TOY_LOG=str(log)), capture_output=True, text=True, timeout=120)
    assert done.returncode != 0 and not log.exists() and not out.exists()
    assert done.stderr.count("jobs.jsonl:2: unknown option 'sede' (did you mean 'seed'?)") == 1, done.stderr[-3000:]
    assert 'test_batch_toy.py", line' not in done.stderr  # no traceback from the ranks (torchrun's own is its own)
