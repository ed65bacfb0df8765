"""The memory plan against the measured memory of the same call on the CPU (issue 16's check):
`python bench/plan_vs_rss.py [--cases sd21-unet,svd-unet,sv4d2-unet,svd-decode]`.

Each case builds the released architecture (presets/*.toml) twice: on the meta device for the plan
(the planner's CPU policy: torch's CPU SDPA and convolution choices) and with random weights on the
CPU. One phase call is then measured after a warm-up, in two ways: torch's CPU allocator trace
(live tensor bytes, gm.plan.measure) and the growth of the resident set (bench/measure.py, as
bench/decode_peak.py measures). Ratios are plan / measured; the goal is within 15 %. Sizes are
small (the CPU has to run them); channels and depths are the released ones. fp32 throughout.
"""

from __future__ import annotations

import argparse
import gc
import sys
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.measure import peak_call  # noqa: E402
from bench.weights import random_module  # noqa: E402
from gm import presets  # noqa: E402
from gm.models.build import Engine, network_config, vae_config  # noqa: E402
from gm.plan import Planner, Workload, meta_engine  # noqa: E402
from gm.plan import workload as wl  # noqa: E402
from gm.plan.verify import compare_decode, compare_sample, real_conditioning  # noqa: E402

CPU = torch.device("cpu")


@dataclass(frozen=True)
class Case:
    preset: str
    work: Workload
    phase: str  # "sample" or "decode"
    frames: int = 0  # decode: frames per call


CASES = {
    "sd21-unet": Case("sd-2.1", Workload(128, 128), "sample"),
    "svd-unet": Case("svd", Workload(128, 128, frames=4), "sample"),
    "sv4d2-unet": Case("sv4d2", Workload(64, 64, frames=48), "sample"),
    "svd-decode": Case("svd", Workload(144, 256, frames=4), "decode", frames=4),
}
# On a GPU (`--device cuda`, bench/device.sh plan): the release sizes, fp16 networks, fp32 VAE.
GPU_CASES = {
    "sdxl-unet": Case("sdxl-base-1.0", Workload(1024, 1024), "sample"),
    "svd-xt-unet": Case("svd-xt", Workload(576, 1024, frames=25), "sample"),
    "sv4d2-unet": Case("sv4d2", Workload(576, 576, frames=48), "sample"),
    "svd-xt-decode": Case("svd-xt", Workload(576, 1024, frames=25), "decode", frames=3),
    "sdxl-decode": Case("sdxl-base-1.0", Workload(1024, 1024), "decode", frames=1),
}


def real_engine(preset: presets.Preset, phase: str, device: torch.device, dtype: torch.dtype) -> Engine:
    """Random-weight engine with only the module the phase runs (the rest stay out of memory)."""
    spec = vae_config(preset)
    assert spec is not None
    scale = spec[2]
    if phase == "decode":
        return Engine(torch.nn.Identity(), random_module(lambda: spec[1](spec[0])).to(device), None, scale)
    cfg, cls = network_config(preset)
    return Engine(random_module(lambda: cls(cfg)).to(device, dtype), None, None, scale)


def run(case: Case, device: torch.device) -> tuple[str, float, float, float]:
    """(phase, planned bytes, allocator peak bytes, RSS growth bytes or 0 on a GPU)."""
    preset = presets.load(case.preset)
    dtype = torch.float16 if device.type == "cuda" else torch.float32
    planner = Planner(meta_engine(preset, dtype, torch.float32), preset, case.work,
                      dtype=dtype, vae_dtype=torch.float32, device=device.type)
    engine = real_engine(preset, case.phase, device, dtype)
    if case.phase == "decode":
        engine.model.diffusion_model = planner.engine.network  # meta: only its config is read
        cmp = compare_decode(planner, engine, device, case.frames)
        fn = lambda: wl.decode_call(engine, case.work, case.frames, None, torch.float32, dev=device)  # noqa: E731
    else:
        cmp = compare_sample(planner, engine, device)
        cond = real_conditioning(planner, device)
        fn = lambda: wl.sample_step(engine, case.work, cond, preset, False, dtype, dev=device)  # noqa: E731
    rss = 0.0
    if device.type == "cpu":
        peak_call(fn, CPU)  # warm-up for the RSS measurement
        rss = peak_call(fn, CPU)[2] * 2**20
    return cmp.phase, cmp.planned, cmp.measured, rss


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cases", default="", help="comma-separated: " + ", ".join(CASES) + "; on cuda: "
                        + ", ".join(GPU_CASES))
    parser.add_argument("--device", default="cpu", choices=["cpu", "cuda"])
    args = parser.parse_args()
    device = torch.device(args.device)
    table = GPU_CASES if device.type == "cuda" else CASES
    if device.type == "cpu":
        torch.set_num_threads(1)
    what = "max_memory_allocated" if device.type == "cuda" else "allocator"
    print(f"| case | size | phase | plan MiB | {what} MiB | plan/measured | RSS growth MiB | plan/RSS |")
    print("|---|---|---|---:|---:|---:|---:|---:|")
    for name in (args.cases.split(",") if args.cases else table):
        case = table[name]
        phase, planned, alloc, rss = run(case, device)
        gc.collect()  # the case's weights go before the next case builds its own
        w = case.work
        size = f"{w.width}x{w.height}" + (f", {w.frames} frames" if w.frames > 1 else "")
        rss_cells = f"{rss / 2**20:.1f} | {planned / rss:.3f}" if rss else "| "
        print(f"| {name} | {size} | {phase} | {planned / 2**20:.1f} | {alloc / 2**20:.1f} | {planned / alloc:.3f} "
              f"| {rss_cells} |", flush=True)


if __name__ == "__main__":
    main()
