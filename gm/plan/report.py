"""A plan as a Rich table (for `--plan`) and as a plain dict (for `--plan --json`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from gm.plan.planner import Plan

GB = 1e9


def gb(n: int | float) -> str:
    return f"{n / GB:.2f}"


PREFIXES = (("model.diffusion_model.", "network."), ("first_stage_model.", "vae."),
            ("conditioner.embedders.", "conditioner."))


def short_at(at: str) -> str:
    """A module path at the peak with the engine's long prefixes shortened."""
    for long, brief in PREFIXES:
        at = at.replace(long, brief)
    return at


def to_dict(plan: Plan) -> dict[str, Any]:
    """JSON-ready: bytes as integers, FLOPs, seconds; the same facts as the table."""
    return {
        "preset": plan.preset,
        "device": plan.device,
        "dtype": plan.dtype,
        "vae_dtype": plan.vae_dtype,
        "attention": plan.attention,
        "workload": dataclasses.asdict(plan.workload),
        "settings": dataclasses.asdict(plan.settings),
        "chosen": list(plan.notes),
        "weights": [{"module": m, "dtype": d, "bytes": b} for m, d, b in plan.weights],
        "phases": [dataclasses.asdict(p) for p in plan.phases],
        "peak_bytes": plan.peak,
        "peak_bytes_math_attention": max(p.peak_math for p in plan.phases),
        "budget_bytes": plan.budget,
        "fits": None if plan.budget is None else plan.peak <= plan.budget,
        "floor_s_h100": plan.floor_s(),
    }


def tables(plan: Plan) -> list[Any]:
    """Rich renderables: weights by module and dtype, then the phases and the overall peak."""
    from rich.table import Table

    w = Table(title=f"{plan.preset}: weights on {plan.device}", title_justify="left")
    w.add_column("module")
    w.add_column("dtype")
    w.add_column("GB", justify="right")
    for module, dtype, nbytes in plan.weights:
        w.add_row(module, dtype, gb(nbytes))
    w.add_row("total", "", gb(plan.weight_bytes), style="bold")

    work = plan.workload
    size = f"{work.width}x{work.height}" + (f", {work.frames} frames" if work.frames > 1 else "")
    p = Table(title=f"peak per phase ({size}, {plan.dtype} / VAE {plan.vae_dtype}, {plan.attention} attention)",
              title_justify="left")
    for name in ("phase", "weights", "held", "activations", "workspace", "peak GB", "math-SDPA GB",
                 "at", "TFLOP", "H100 floor"):
        p.add_column(name, justify="left" if name in ("phase", "at") else "right")
    for ph in plan.phases:
        floor = f"{ph.floor_s * 1e3:.0f} ms" + (f" x{ph.calls}" if ph.calls > 1 else "")
        p.add_row(ph.name, gb(ph.weights), gb(ph.held), gb(ph.activations), gb(ph.workspace), gb(ph.peak),
                  gb(ph.peak_math), short_at(ph.at), f"{ph.flops / 1e12:.1f}", floor if ph.flops else "")
    budget = "" if plan.budget is None else f" of {gb(plan.budget)} GB budget"
    p.add_row("overall", "", "", "", "", gb(plan.peak), gb(max(x.peak_math for x in plan.phases)),
              f"floor {plan.floor_s():.1f} s{budget}", "", "", style="bold")
    out: list[Any] = [w, p]
    s = plan.settings
    line = (f"settings: decode {s.decode_chunk or 'all'} frame(s)/call, CFG "
            f"{'two passes' if s.two_pass_cfg else 'batch of 2'}, staging {'on' if s.staging else 'off'}"
            + (f", tiles {8 * s.decode_tile}px" if s.decode_tile else ""))
    out.append(line)
    out.extend(f"chose: {n}" for n in plan.notes)
    return out


def render(plan: Plan, console: Any = None) -> None:
    """Print the plan's tables (to stderr's console by default, stdout stays for results)."""
    from rich.console import Console

    con = console or Console(stderr=True)
    for item in tables(plan):
        con.print(item)
