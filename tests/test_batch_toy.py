"""A toy command for the batch-layer tests: a 'model' (fixed random weights) that turns a prompt and
a seed into a small PNG and an .npz, deterministically. Also runnable as a script (for the kill -9
and torchrun tests): `python tests/test_batch_toy.py JOBS OUT`.

Environment hooks: TOY_LOG (append one line per job run and per model load), TOY_HANG (a folder:
the job with prompt "hang" writes half a file, touches TOY_HANG/started and sleeps).
"""

from __future__ import annotations

import hashlib
import os
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:  # run as a script
    sys.path.insert(0, str(ROOT))

from gm.errors import InputError, UsageError  # noqa: E402

OPTIONS = {"prompt": str, "seed": int, "steps": int, "size": int}


@dataclass(frozen=True)
class ToyJob:
    prompt: str = ""
    seed: int = 0
    steps: int = 2
    size: int = 8
    out_dir: Path = Path("unused")


def validate(options: dict[str, Any], defaults: ToyJob = ToyJob()) -> ToyJob:
    job = replace(defaults, **options)
    if job.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {job.steps}")
    if not 1 <= job.size <= 64:
        raise UsageError(f"--size must be in [1, 64], got {job.size}")
    return job


def _log(text: str) -> None:
    if os.environ.get("TOY_LOG"):
        with open(os.environ["TOY_LOG"], "a") as f:
            f.write(text + "\n")


def load_model(ranks: Any) -> np.ndarray:
    _log(f"load rank={getattr(ranks, 'rank', 0)}")
    return np.random.RandomState(0).rand(64, 64, 3)


def _pixels(model: np.ndarray, job: ToyJob) -> np.ndarray:
    salt = int.from_bytes(hashlib.sha256(job.prompt.encode()).digest()[:4], "little")
    noise = np.random.RandomState((salt + job.seed) % 2**32).rand(job.size, job.size, 3)
    x = model[: job.size, : job.size]
    for _ in range(job.steps):
        x = 0.5 * x + 0.5 * noise
    return (x * 255).round().astype(np.uint8)


def run_one(model: np.ndarray, job: ToyJob, folder: Path) -> dict[str, Any]:
    from PIL import Image

    from gm.io.files import write_atomic

    if job.prompt == "fail":
        raise InputError("cannot draw 'fail'", "pick another prompt")
    _log(f"run {job.prompt} {job.seed} rank={os.environ.get('RANK', '0')}")
    pixels = _pixels(model, job)
    if job.prompt == "hang" and os.environ.get("TOY_HANG"):
        (folder / "000000.png").write_bytes(b"\x89PNG half")  # half a file, never to be seen
        Path(os.environ["TOY_HANG"], "started").touch()
        time.sleep(120)
    write_atomic(folder / "000000.png", lambda p: Image.fromarray(pixels).save(p, format="PNG"))
    write_atomic(folder / "000000.npz", lambda p: np.savez(p, pixels=pixels))
    return {"mean": float(pixels.mean())}


def run_many(model: np.ndarray, jobs: list[ToyJob], folders: list[Path]) -> list[dict[str, Any]]:
    _log(f"group {len(jobs)}")
    return [run_one(model, job, folder) for job, folder in zip(jobs, folders, strict=True)]


def main(argv: list[str]) -> int:
    from gm.batch import run_jobs
    from gm.console import console
    from gm.errors import GmError

    console.configure(quiet=True)
    try:
        run_jobs(argv[0], validate=validate, options=OPTIONS, prompt_key="prompt", load_model=load_model,
                 run_one=run_one, out_dir=argv[1], device="cpu", on_done=None)
    except GmError as err:
        console.error(str(err))
        return err.exit_code
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
