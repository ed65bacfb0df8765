"""The memory planner: exact bytes of the tracker on known ops, weights by module, and fitting."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gm import presets
from gm.errors import GmError
from gm.plan import (
    Planner,
    Settings,
    Workload,
    decode_frames_that_fit,
    fit,
    meta_engine,
    smallest,
    workload_for,
)
from gm.plan.report import tables, to_dict
from gm.plan.tracker import cpu_conv_workspace, sdpa_costs, total_flops, track

TINY = Path(__file__).parent / "presets"
META = torch.device("meta")


def test_matmul_exact_bytes_and_release() -> None:
    a = torch.empty(64, 128, device=META, dtype=torch.float16)
    b = torch.empty(128, 32, device=META, dtype=torch.float16)
    with track() as (r, counter):
        x = a @ b  # 64*32*2 = 4096 B
        y = x.t()  # a view: no new bytes
        z = x * 2  # 4096 more while x lives
        del x, y, z
        w = torch.empty(10, 10, device=META)  # 400 B after the others are gone
        del w
    assert r.peak.bytes == 8192 and r.peak.activations == 8192 and r.peak.op == "mul"
    assert total_flops(r, counter) == 2 * 64 * 128 * 32


def test_sdpa_fused_and_math_accounting() -> None:
    q = torch.empty(2, 5, 100, 64, device=META, dtype=torch.float16)
    k = torch.empty(2, 5, 80, 64, device=META, dtype=torch.float16)
    with track() as (r, counter):
        out = torch.nn.functional.scaled_dot_product_attention(q, k, k)
        del out
    out_bytes = 2 * 5 * 100 * 64 * 2
    lse = 2 * 5 * 100 * 4
    scores = 2 * 5 * 100 * 80
    math = q.numel() * 2 + k.numel() * 2 + scores * (2 * 2 + 1)
    assert sdpa_costs(q, k, k) == (lse, math, 4 * scores * 64)
    assert r.peak.bytes == out_bytes + lse and r.peak.workspace == lse
    assert r.peak_math.bytes == out_bytes + math
    assert r.largest_scores == scores * 2
    assert total_flops(r, counter) == 4 * scores * 64


def test_cpu_conv3d_unfold_buffer() -> None:
    x = torch.empty(1, 32, 2, 64, 64, device=META)
    w = torch.empty(32, 32, 3, 1, 1, device=META)
    ws = cpu_conv_workspace(torch.ops.aten.convolution.default, (x, w, None, [1, 1, 1], [1, 0, 0], [1, 1, 1], False,
                                                                   [0, 0, 0], 1))
    assert ws == 32 * 3 * (2 * 64 * 64) * 4


def _planner(name: str, **kw) -> Planner:
    preset = presets.load(str(TINY / f"{name}.toml"))
    work = kw.pop("work", None) or workload_for(preset, height=64, width=64)
    return Planner(meta_engine(preset, torch.float16, torch.float32), preset, work, dtype=torch.float16,
                   vae_dtype=torch.float32, device="cuda", **kw)


def test_weights_by_module_and_dtype() -> None:
    p = _planner("tiny-svd")
    weights = {(m, d): b for m, d, b in p.weights}
    net = sum(t.numel() for t in p.engine.network.parameters()) * 2
    vae = sum(t.numel() for t in p.engine.vae.parameters()) * 4
    assert weights[("network", "float16")] == net
    assert weights[("vae", "float32")] == vae
    plan = p.plan()
    assert plan.phases[0].name == "load" and plan.phases[0].peak == plan.weight_bytes
    assert [ph.name for ph in plan.phases] == ["load", "encode", "sample", "decode"]
    assert all(ph.peak >= ph.weights + ph.activations for ph in plan.phases)


def test_cfg_two_passes_halves_activations_and_staging_keeps_one_module() -> None:
    p = _planner("tiny-svd")
    batch, two = p.sample_phase(Settings()), p.sample_phase(Settings(two_pass_cfg=True))
    assert two.activations < 0.7 * batch.activations
    staged = p.sample_phase(Settings(staging=True))
    assert staged.weights == sum(b for m, _, b in p.weights if m == "network") < p.resident(None, False)


def test_fit_unlimited_keeps_defaults() -> None:
    p = _planner("tiny-svd")
    plan = fit(p, 10**12)
    assert plan.settings == Settings(decode_chunk=p.total_frames()) and plan.notes == []
    assert to_dict(plan)["fits"] is True


def test_tiny_budgets_force_chunking_two_pass_and_staging() -> None:
    p = _planner("tiny-svd")
    default = p.plan(Settings())
    decode_peak = next(ph for ph in default.phases if ph.name == "decode").peak
    sample_peak = next(ph for ph in default.phases if ph.name == "sample").peak
    # Below the whole-clip decode but above the sampler: fewer frames per decode call.
    budget = max(sample_peak, p.plan(Settings(decode_chunk=1)).phases[-1].peak) + 1
    if budget < decode_peak:
        plan = fit(p, budget)
        assert 1 <= plan.settings.decode_chunk < p.total_frames() and not plan.settings.staging
        assert plan.peak <= budget
    # Below the CFG batch of 2 (a long clip, so that sampling outweighs one decoded frame): two passes.
    long = _planner("tiny-svd", work=Workload(64, 64, frames=40))
    budget = long.plan(Settings(decode_chunk=1, two_pass_cfg=True)).peak
    assert budget < long.sample_phase(Settings()).peak
    plan = fit(long, budget)
    assert plan.settings.two_pass_cfg and not plan.settings.staging and any("two passes" in n for n in plan.notes)
    # Below anything with every module resident: staging.
    least = p.plan(smallest(p))
    plan = fit(p, least.peak)
    assert plan.settings.staging and plan.peak <= least.peak
    with pytest.raises(GmError, match=r"smallest plan needs") as err:
        fit(p, least.peak // 2)
    assert err.value.hint and "--max-vram" in err.value.hint


def test_decode_frames_that_fit_is_the_largest_fitting_chunk() -> None:
    p = _planner("tiny-svd", work=Workload(64, 64, frames=8))
    peaks = {n: p.decode_phase(Settings(decode_chunk=n)).peak for n in range(1, p.total_frames() + 1)}
    assert all(peaks[n] < peaks[n + 1] for n in range(1, p.total_frames()))
    budget = peaks[5] + 1
    assert decode_frames_that_fit(p, budget) == 5
    assert decode_frames_that_fit(p, peaks[1] - 1) == 0
    weights = p.resident(None, False)
    assert decode_frames_that_fit(p, peaks[3] - weights, count_weights=False) == 3


def test_image_plan_tiles_when_one_image_does_not_fit() -> None:
    preset = presets.load(str(TINY / "tiny-sd21.toml"))
    p = Planner(meta_engine(preset, torch.float16, torch.float32), preset, Workload(1024, 1024, cfg=True),
                dtype=torch.float16, vae_dtype=torch.float32)
    whole = p.decode_phase(Settings(staging=True))
    tiled = p.decode_phase(Settings(staging=True, decode_tile=32))
    assert tiled.peak < whole.peak / 4
    plan = fit(p, max(tiled.peak, p.sample_phase(Settings(staging=True, two_pass_cfg=True)).peak,
                      p.encode_phase(Settings(staging=True)).peak))
    assert plan.settings.decode_tile is not None


def test_release_svd_xt_plans_on_meta_quickly() -> None:
    preset = presets.load("svd-xt")
    engine = meta_engine(preset, torch.float16, torch.float32)
    p = Planner(engine, preset, workload_for(preset), dtype=torch.float16, vae_dtype=torch.float32)
    sample = p.sample_phase(Settings(two_pass_cfg=True))
    n = sum(t.numel() for t in engine.network.parameters())
    assert sample.weights == 2 * n + sum(b for m, _, b in p.weights if m != "network")
    assert 1e9 < sample.activations < 20e9  # 25 frames at 576x1024
    assert sample.peak_math > 3 * sample.peak  # the math path's score matrices dominate
    out = tables(p.plan(Settings(decode_chunk=2, two_pass_cfg=True)))
    assert any("two passes" in str(item) for item in out)
