"""GPU memory planning on meta tensors: run the real networks on no data, per phase (`gm --plan`).

Entry points: `meta_engine(preset, dtype, vae_dtype)` (or cast an existing meta Engine with
`cast_engine`), `Planner(engine, preset, Workload(...), dtype=, vae_dtype=, device=)`,
`Planner.plan(Settings(...))`, `fit(planner, budget_bytes)`, `decode_frames_that_fit(planner, budget)`,
`workload_for(preset, ...)`, and `report.render(plan)` / `report.to_dict(plan)`.
"""

from __future__ import annotations

from gm.plan.fit import decode_frames_that_fit, fit, smallest
from gm.plan.planner import Phase, Plan, Planner, Settings, weights_by_module
from gm.plan.workload import Workload, cast_engine, meta_engine, workload_for

__all__ = ["Phase", "Plan", "Planner", "Settings", "Workload", "cast_engine", "decode_frames_that_fit", "fit",
           "meta_engine", "smallest", "weights_by_module", "workload_for"]
