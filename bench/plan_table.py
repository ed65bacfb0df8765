"""The memory plan of every release preset at its default size, fp16 on CUDA (BENCHMARKS §8):
`python bench/plan_table.py [--presets svd-xt,sdxl-base-1.0] [--json out.json]`.

Meta tensors only (no weights, no GPU): each preset's engine is built on the meta device and its
phases run at the preset's default size. "default" uses the preset's own settings (decoding_t, and
for decoding_t 0 today's automatic rule of 8 GiB at 4096 B per decoded pixel); the fit columns are
what `fit` chooses for the issue's targets and for an 8 GB (SDXL: 6 GB) budget.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from gm import presets  # noqa: E402
from gm.errors import GmError  # noqa: E402
from gm.plan import Planner, Settings, fit, meta_engine, workload_for  # noqa: E402
from gm.plan.report import to_dict  # noqa: E402

GB = 1e9
ROOT = Path(__file__).resolve().parent.parent
OLD_DECODE_BUDGET, OLD_BYTES_PER_PIXEL = 8 * 2**30, 4096  # the rule the plan replaces


def release_presets() -> list[str]:
    names = []
    for path in sorted((ROOT / "presets").glob("*.toml")):
        p = presets.load(path.stem)
        if p.family != "train" and p.checkpoint is not None and (p.checkpoint.repo or "").startswith("stabilityai/"):
            names.append(path.stem)
    return names


def target(name: str, family: str) -> tuple[float | None, float | None]:
    """(default target GB, low-budget target GB) from the issue."""
    if name.startswith("svd-xt") and "decoder" not in name:
        return 12.0, 8.0
    if name.startswith("sv3d"):
        return 16.0, 8.0
    if name == "sv4d2":
        return 24.0, 8.0
    if family in ("video", "video4d"):
        return 24.0, None
    if name.startswith("sdxl-base"):
        return None, 6.0
    return None, None


def default_settings(planner: Planner) -> Settings:
    s = planner.default_settings()
    if s.decode_chunk == 0 and planner.work.rows > 1:
        w = planner.work
        s = Settings(decode_chunk=max(1, min(planner.total_frames(), OLD_DECODE_BUDGET // (OLD_BYTES_PER_PIXEL
                                                                                         * w.height * w.width))),
                     staging=s.staging)
    return s


def short(s: Settings, two_pass_possible: bool) -> str:
    parts = [f"decode {s.decode_chunk or 'all'}"]
    if s.encode_chunk is not None:
        parts.append(f"encode {s.encode_chunk}")
    if s.two_pass_cfg and two_pass_possible:
        parts.append("2-pass CFG")
    if s.staging:
        parts.append("staging")
    if s.decode_tile:
        parts.append(f"tiles {8 * s.decode_tile}px")
    return ", ".join(parts)


def fitted(planner: Planner, budget: float | None) -> tuple[str, dict | None]:
    if budget is None:
        return "", None
    try:
        plan = fit(planner, int(budget * GB), default_settings(planner))
    except GmError as e:
        return f"does not fit ({str(e).split(': ', 1)[1].split(' (')[0]})", None
    return f"{plan.peak / GB:.1f} GB: {short(plan.settings, planner.work.cfg)}", to_dict(plan)


def row(name: str) -> tuple[str, dict]:
    t0 = time.perf_counter()
    preset = presets.load(name)
    work = workload_for(preset)
    if "refiner" in name:
        work = type(work)(**{**work.__dict__, "init_image": True})
    planner = Planner(meta_engine(preset, torch.float16, torch.float32), preset, work, dtype=torch.float16,
                      vae_dtype=torch.float32, device="cuda")
    plan = planner.plan(default_settings(planner))
    phases = {p.name: p for p in plan.phases}
    goal, low = target(name, preset.family)
    fit_goal, goal_plan = fitted(planner, goal)
    fit_low, low_plan = fitted(planner, low)
    size = f"{work.width}x{work.height}" + (f" x{work.frames}" if work.rows > 1 else "")
    cells = [name, size, f"{plan.weight_bytes / GB:.1f}"]
    cells += [f"{phases[k].peak / GB:.1f}" if k in phases else "" for k in ("encode", "sample", "decode")]
    cells += [f"**{plan.peak / GB:.1f}**", f"{max(p.peak_math for p in plan.phases) / GB:.0f}",
              short(plan.settings, work.cfg), f"{plan.floor_s():.1f}",
              f"≤ {goal:.0f}: {fit_goal}" if goal else "", f"≤ {low:.0f}: {fit_low}" if low else ""]
    seconds = time.perf_counter() - t0
    return "| " + " | ".join(cells) + " |", {"preset": name, "default": to_dict(plan), "fit_target": goal_plan,
                                             "fit_low": low_plan, "plan_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="", help="comma-separated (default: every release preset)")
    parser.add_argument("--json", default="", help="also write every plan as JSON here")
    args = parser.parse_args()
    names = args.presets.split(",") if args.presets else release_presets()
    print("| preset | size (x latents/call) | weights GB | encode GB | sample step GB | decode GB | peak GB "
          "| math-SDPA peak GB | default settings | H100 floor s | target: fit | low budget: fit |")
    print("|---|---|---:|---:|---:|---:|---:|---:|---|---:|---|---|")
    out = []
    for name in names:
        line, data = row(name)
        print(line, flush=True)
        out.append(data)
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=1))


if __name__ == "__main__":
    main()
