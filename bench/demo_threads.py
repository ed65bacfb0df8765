"""`make demo` on a shared CPU: digits-demo for a few hundred steps with 1 thread, 2 threads and
gm.threads' pick, alone and next to one busy process (a pure-Python loop, the kind of job that
shares a small machine). Prints one line per run: threads, competitor, images/s, wall seconds.

    PYTHONPATH=. .venv/bin/python bench/demo_threads.py --steps 200
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def run(threads: int, steps: int, busy: bool) -> tuple[float, float, float]:
    """(mean images/s over the logged windows, wall seconds, load average at the start)."""
    competitor = subprocess.Popen([sys.executable, "-c", "while True: pass"]) if busy else None
    try:
        if busy:
            time.sleep(2.0)  # let it take its core
        load = os.getloadavg()[0]
        env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
        env["PYTHONPATH"] = str(ROOT)
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            subprocess.run([sys.executable, "-m", "commands.app", "train", "digits-demo", "--max-steps", str(steps),
                            "--set", f"train.num_threads={threads}", "--set", "train.classifier_eval=false",
                            "--out", f"{tmp}/run", "--quiet"], env=env, check=True, cwd=tmp, capture_output=True)
            wall = time.perf_counter() - start
            records = [json.loads(line) for line in Path(tmp, "run", "metrics.jsonl").read_text().splitlines()]
        rates = [r["images_per_s"] for r in records if "images_per_s" in r]
        return sum(rates) / len(rates), wall, load
    finally:
        if competitor is not None:
            competitor.kill()
            competitor.wait()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--competitor", choices=["both", "no", "yes"], default="both")
    args = parser.parse_args()
    modes = {"both": (False, True), "no": (False,), "yes": (True,)}[args.competitor]
    print(f"cores usable: {len(os.sched_getaffinity(0))}, steps: {args.steps}")
    for busy in modes:
        for threads in args.threads:
            rate, wall, load = run(threads, args.steps, busy)
            print(f"threads {threads}  competitor {'yes' if busy else 'no '}  load {load:4.1f}  "
                  f"{rate:6.1f} img/s  wall {wall:6.1f} s", flush=True)


if __name__ == "__main__":
    main()
