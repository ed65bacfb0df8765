"""Whole pipelines on full-size random checkpoints: the real `gm` commands, timed phase by phase.

    python bench/pipelines.py [--cases sdxl,sd21,svd-xt,sv4d2] [--compile] [--set KEY=VALUE ...] [--repeat 2]
                              [--small] [--json F]

Each case streams a random checkpoint with every tensor of the released file (tests/manifests,
fp16) to a temporary folder and runs the command in this process `--repeat` times with the engine
kept loaded between runs (`common.keep_loaded`), as a long-lived process would: the first run pays
the load (and with --compile the compilation), the later ones are the steady state. Reported per
run: every phase gm's console timed (load, sample, decode, ...; the GPU is synchronised at each
phase's end), the wall time, the wall time without loading, and the peak GPU memory
(`max_memory_allocated`). On a GPU the release sizes are used; on the CPU (or with --small) tiny
sizes that only check the harness. The weights are random, so the images are noise: only the
timings and the memory mean anything.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

MANIFESTS = ROOT / "tests" / "manifests"
IMAGE = str(ROOT / "tests" / "media" / "test_image.png")
GIF = str(ROOT / "tests" / "data" / "camel_small.gif")


@dataclass(frozen=True)
class Case:
    preset: str
    manifest: str
    args: tuple[str, ...]  # the command line without --checkpoint/--out
    small: tuple[str, ...]  # appended on the CPU / with --small
    work: str  # what one run makes, for the report


CASES = {
    "sdxl": Case("sdxl-base-1.0", "sdxl-base.json",
                 ("txt2img", "a red fox in the snow", "-p", "sdxl-base-1.0", "--steps", "30", "--seed", "1"),
                 ("-W", "128", "-H", "128", "--steps", "2"), "one 1024x1024 image, 30 steps, CFG 5"),
    "sd21": Case("sd-2.1", "sd-2.1.json",
                 ("txt2img", "a red fox in the snow", "-p", "sd-2.1", "--steps", "30", "--seed", "1"),
                 ("-W", "256", "-H", "256", "--steps", "10"), "one 512x512 image, 30 steps, CFG 6"),
    "svd-xt": Case("svd-xt", "svd-xt.json",
                   ("img2vid", IMAGE, "-p", "svd-xt", "--steps", "25", "--seed", "1"),
                   ("--frames", "2", "--steps", "1", "--set", "defaults.height=64", "--set", "defaults.width=128"),
                   "25 frames at 576x1024, 25 steps"),
    "sv4d2": Case("sv4d2", "sv4d2.json",
                  ("video4d", GIF, "-p", "sv4d2", "--pad", "--seed", "1"),
                  ("--img-size", "64", "--steps", "1"), "21 frames x 4 views at 576x576, 50 steps"),
}


def run_once(argv: list[str]) -> dict:
    """One in-process run of the CLI: phases, wall time and peak GPU memory."""
    from typer.testing import CliRunner

    from commands.app import app
    from gm.console import console

    cuda = torch.cuda.is_available()
    if cuda:
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    t0 = time.perf_counter()
    result = CliRunner().invoke(app, argv)
    if cuda:
        torch.cuda.synchronize()
    wall = time.perf_counter() - t0
    if result.exit_code != 0:
        raise SystemExit(f"gm {' '.join(argv)} failed ({result.exit_code}):\n{result.output}")
    phases = list(console.timings)
    load = sum(s for name, s in phases if name.startswith("load "))
    return {"wall_s": wall, "without_load_s": wall - load, "phases": phases,
            "gpu_peak_gib": torch.cuda.max_memory_allocated() / 2**30 if cuda else None}


def run_case(name: str, small: bool, compile_: bool, repeat: int, tmp_root: str | None,
             sets: tuple[str, ...] = ()) -> dict:
    from bench.weights import write_random_checkpoint
    from gm.console import console
    from gm.pipelines import common

    case = CASES[name]
    console.sync_timings = True
    common.keep_loaded(True)
    try:
        with tempfile.TemporaryDirectory(prefix="gm-pipe-", dir=tmp_root) as tmp:
            ckpt = Path(tmp) / f"{case.preset}.safetensors"
            t0 = time.perf_counter()
            size = write_random_checkpoint(MANIFESTS / case.manifest, ckpt)
            print(f"{name}: random checkpoint {size / 2**30:.2f} GiB written in {time.perf_counter() - t0:.0f} s",
                  flush=True)
            shown = [*case.args, *(case.small if small else ()), *(["--compile"] if compile_ else []),
                     *(arg for item in sets for arg in ("--set", item))]
            argv = [*shown, "--checkpoint", str(ckpt), "--out", str(Path(tmp) / "out"), "--quiet"]
            runs = []
            for i in range(repeat):
                r = run_once(argv)
                runs.append(r)
                phases = ", ".join(f"{p} {s:.2f}s" for p, s in r["phases"])
                peak = f", GPU peak {r['gpu_peak_gib']:.1f} GiB" if r["gpu_peak_gib"] is not None else ""
                print(f"{name} run {i + 1}: {r['wall_s']:.2f} s ({r['without_load_s']:.2f} s without loading)"
                      f"{peak} | {phases}", flush=True)
    finally:
        common.keep_loaded(False)
        gc.collect()
        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    return {"case": name, "preset": case.preset, "work": case.work if not small else "small: " + " ".join(case.small),
            "compile": compile_, "checkpoint_gib": size / 2**30, "argv": shown, "runs": runs}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--compile", action="store_true", help="run the commands with --compile")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                    help="passed on to every command, e.g. perf.channels_last=true")
    ap.add_argument("--repeat", type=int, default=2, help="runs per case, the engine kept loaded (default 2)")
    ap.add_argument("--small", action="store_true", help="tiny sizes (the default without a GPU)")
    ap.add_argument("--tmp", default=None, help="folder for the random checkpoints (default: the system's)")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args()
    small = args.small or not torch.cuda.is_available()
    report = {"device": torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu",
              "torch": torch.__version__, "small": small, "cases": []}
    for name in [c for c in args.cases.split(",") if c]:
        report["cases"].append(run_case(name, small, args.compile, args.repeat, args.tmp, tuple(args.set)))
        if args.json:
            args.json.write_text(json.dumps(report, indent=1))


if __name__ == "__main__":
    main()
