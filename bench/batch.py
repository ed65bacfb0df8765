"""Jobs per second of a tiny txt2img preset through the real `gm txt2img --jobs`: one command per job
vs one process for all (the saved loads), and 2 torchrun ranks vs 1 (gloo, CPU).

Usage: python bench/batch.py [--jobs 8] [--steps N] [--no-single] [--preset tests/presets/tiny-sd21.toml]
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
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY = str(ROOT / "tests/presets/tiny-sd21.toml")


def _timed(command: list[str], env: dict[str, str]) -> float:
    started = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"failed ({done.returncode}): {' '.join(command)}\n{done.stderr[-3000:]}")
    return time.perf_counter() - started


def bench(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="bench/batch.py")
    parser.add_argument("--jobs", type=int, default=8)
    parser.add_argument("--preset", default=TINY)
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    parser.add_argument("--no-single", action="store_true", help="skip the one-command-per-job runs")
    args = parser.parse_args(argv)
    from gm import presets
    from tests.tiny import make_checkpoint

    work = Path(tempfile.mkdtemp(prefix="gm-bench-batch-"))
    make_checkpoint(presets.load(args.preset), work / "checkpoints")
    env = {**os.environ, "GM_CHECKPOINTS": str(work / "checkpoints"), "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1",
           "HF_HUB_OFFLINE": "1"}
    lines = [{"prompt": f"a photo of object {k}", "seed": k} for k in range(args.jobs)]
    jobs = work / "jobs.jsonl"
    jobs.write_text("".join(json.dumps(x) + "\n" for x in lines))
    n = args.jobs
    print(f"{n} jobs of {Path(args.preset).stem} ({args.steps or 'preset'} steps) on the CPU "
          f"(wall seconds of whole commands; jobs/s = {n} / seconds)")
    print("| how | seconds | jobs/s | jobs/s inside the batch |\n|---|---|---|---|", flush=True)

    def row(name: str, seconds: float, out: str | None = None) -> None:
        inside = "-"
        if out is not None:  # from the manifest: the busiest rank's summed job seconds (no start-up, no load)
            from gm.batch import manifest

            per_rank: dict[int, float] = {}
            for record in manifest.read_records(work / out / manifest.MANIFEST):
                per_rank[record["rank"]] = per_rank.get(record["rank"], 0.0) + record["seconds"]
            inside = f"{n / max(per_rank.values()):.2f}"
        print(f"| {name} | {seconds:.1f} | {n / seconds:.2f} | {inside} |", flush=True)

    steps = [] if args.steps is None else ["--steps", str(args.steps)]
    gm = ["-m", "commands.app", "txt2img"]
    batch = [*gm, "--jobs", str(jobs), "--preset", args.preset, "--device", "cpu", "-q", *steps, "-o"]
    row("one process, `gm txt2img --jobs` (one load)", _timed([sys.executable, *batch, str(work / "one")], env), "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    row("torchrun, 1 rank", _timed([*torchrun, "1", *batch, str(work / "rank1")], env), "rank1")
    row("torchrun, 2 ranks (gloo)", _timed([*torchrun, "2", *batch, str(work / "rank2")], env), "rank2")
    if args.no_single:
        return 0
    gm = [sys.executable, *gm]
    row(f"{n} x `gm txt2img` (one command per job)",
        sum(_timed([*gm, x["prompt"], "--seed", str(x["seed"]), "--preset", args.preset, "--device", "cpu", "-q",
                    *steps, "-o", str(work / "single" / str(k))], env) for k, x in enumerate(lines)))
    for k in range(n):  # the same image every way
        image = (work / "single" / str(k) / "000000.png").read_bytes()
        for way in ("one", "rank1", "rank2"):
            assert (work / way / f"job-{k:06d}" / "000000.png").read_bytes() == image, (way, k)
    print(f"all {n} images byte-identical across the four ways", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(bench(sys.argv[1:]))
