"""Jobs per second of a tiny txt2img preset: one command per job vs one process for all (the saved
loads), and 2 torchrun ranks vs 1 (gloo, CPU). Also the glue that runs today's txt2img pipeline
through gm.batch (`serve`), used by this bench and by tests/test_batch_gm.py.

Usage: python bench/batch.py [--jobs 8] [--steps N] [--no-single] [--preset tests/presets/tiny-sd21.toml]
       python bench/batch.py serve JOBS OUT --preset P [--steps N] [--device cpu]   (one process or under torchrun)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

TINY = str(ROOT / "tests/presets/tiny-sd21.toml")
# A job line may set these txt2img options; steps/sampler/cfg stay command-line-wide here, because
# today's pipeline keeps an engine loaded per whole preset (sampler settings included).
OPTIONS = {"prompt": str, "negative": str, "seed": int, "num": int, "width": int, "height": int, "aspect": str}


def txt2img_validate(preset: Any, out: Path):
    """validate(options) for gm.batch: the line's options over the command-line defaults -> an ImageJob."""
    from gm.errors import UsageError
    from gm.pipelines.image import ImageJob

    def validate(options: dict[str, Any]) -> ImageJob:
        if "prompt" not in options:
            raise UsageError("no 'prompt' in this job")
        fields = {"num": "count"}
        job = ImageJob(command="txt2img", prompt="", negative="", seed=preset.defaults.seed, count=1, out_dir=out)
        job = replace(job, **{fields.get(k, k): v for k, v in options.items()})
        if job.count < 1 or job.seed < 0:
            raise UsageError(f"num must be at least 1 and seed at least 0, got {job.count} and {job.seed}")
        return job

    return validate


def txt2img_loader(preset: Any, device: str):
    """load_model(ranks): today's engine cache (keep_loaded) filled once, so every job reuses it."""
    from gm.pipelines import common

    def load_model(ranks: Any) -> Any:
        common.keep_loaded(True)
        runtime = common.runtime_for(preset, ranks.device or device)
        common.load(preset, runtime)
        return runtime

    return load_model


def txt2img_run(preset: Any):
    """run_one(model, job, folder): the txt2img pipeline writing into the job's folder."""
    from gm.pipelines.image import txt2img

    def run_one(runtime: Any, job: Any, folder: Path) -> dict[str, Any]:
        written = list(txt2img(preset, runtime, replace(job, out_dir=folder)))
        return {"seeds": [r.seed for r in written]}

    return run_one


def serve(argv: list[str]) -> int:
    """`serve JOBS OUT --preset P`: a txt2img job file through gm.batch (what `gm txt2img --jobs` will do)."""
    parser = argparse.ArgumentParser(prog="bench/batch.py serve")
    parser.add_argument("jobs")
    parser.add_argument("out")
    parser.add_argument("--preset", default=TINY)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--steps", type=int, default=None, help="sampling steps (default: the preset's)")
    args = parser.parse_args(argv)
    from gm import presets
    from gm.batch import run_jobs
    from gm.console import console
    from gm.errors import GmError

    console.configure(quiet=True)
    try:
        preset = presets.load(args.preset, [] if args.steps is None else [f"sampler.steps={args.steps}"])
        run_jobs(args.jobs, validate=txt2img_validate(preset, Path(args.out)), options=OPTIONS, prompt_key="prompt",
                 load_model=txt2img_loader(preset, args.device), run_one=txt2img_run(preset), out_dir=args.out,
                 device=args.device, on_done=None)
    except GmError as err:
        console.error(str(err))
        return err.exit_code
    return 0


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
    serve_cmd = [str(Path(__file__).resolve()), "serve", str(jobs), "--preset", args.preset, *steps]
    row("one process, `gm.batch` (one load)", _timed([sys.executable, *serve_cmd, str(work / "one")], env), "one")
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node"]
    row("torchrun, 1 rank", _timed([*torchrun, "1", *serve_cmd, str(work / "rank1")], env), "rank1")
    row("torchrun, 2 ranks (gloo)", _timed([*torchrun, "2", *serve_cmd, str(work / "rank2")], env), "rank2")
    if args.no_single:
        return 0
    gm = [sys.executable, "-m", "commands.app", "txt2img"]
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
    if sys.argv[1:2] == ["serve"]:
        sys.exit(serve(sys.argv[2:]))
    sys.exit(bench(sys.argv[1:]))
