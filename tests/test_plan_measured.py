"""Plan vs measured at tiny sizes: the planner's phase peak against torch's CPU allocator trace of
the same call on real tensors (after a warm-up), within 15 %, for the image UNet, the video UNet,
the SV4D 2.0 UNet and the temporal decoder."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from gm import presets
from gm.models.build import build_engine
from gm.plan import Planner, Workload, meta_engine
from gm.plan.verify import compare_decode, compare_sample

TINY = Path(__file__).parent / "presets"
CPU = torch.device("cpu")


def _pair(name: str, work: Workload) -> tuple[Planner, torch.nn.Module]:
    preset = presets.load(str(TINY / f"{name}.toml"))
    planner = Planner(meta_engine(preset, torch.float32, torch.float32), preset, work, dtype=torch.float32,
                      vae_dtype=torch.float32, device="cpu")
    torch.manual_seed(0)
    return planner, build_engine(preset).eval().requires_grad_(False)


@pytest.mark.parametrize(("name", "work", "two_pass"), [
    ("tiny-sd21", Workload(64, 64), False),
    ("tiny-sd21", Workload(64, 64), True),
    ("tiny-svd", Workload(64, 64, frames=4), False),
    ("tiny-sv4d2", Workload(64, 64, frames=48), False),
])
def test_sample_step_plan_matches_allocator(name: str, work: Workload, two_pass: bool) -> None:
    planner, engine = _pair(name, work)
    cmp = compare_sample(planner, engine, CPU, two_pass=two_pass)
    assert cmp.measured > 100_000, cmp
    assert 0.85 <= cmp.ratio <= 1.15, cmp


@pytest.mark.parametrize("frames", [1, 3])
def test_temporal_decode_plan_matches_allocator(frames: int) -> None:
    planner, engine = _pair("tiny-svd", Workload(64, 96, frames=4))
    cmp = compare_decode(planner, engine, CPU, frames)
    assert cmp.measured > 1_000_000, cmp
    assert 0.85 <= cmp.ratio <= 1.15, cmp
