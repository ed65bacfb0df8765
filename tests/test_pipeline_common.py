"""The shared pipeline pieces: preset -> schedule / guider, and the perf switches (channels_last)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.diffusion import guiders
from gm.errors import UsageError
from gm.pipelines.common import guider_for, sigmas_for
from gm.presets import GuiderSpec, SamplerSpec
from tests.tiny import make_checkpoint

TINY = str(Path(__file__).resolve().parent / "presets" / "tiny-sd21.toml")


def test_sigmas_for_picks_the_discretization_and_checks_steps() -> None:
    ddpm = sigmas_for(SamplerSpec(steps=50))
    assert len(ddpm) == 51 and abs(float(ddpm[0]) - 14.6146) < 1e-3 and abs(float(ddpm[-2]) - 0.1345) < 1e-3
    edm = sigmas_for(SamplerSpec(discretization="edm", sigma_max=700.0), steps=25)
    assert len(edm) == 26 and abs(float(edm[0]) - 700.0) < 1e-2 and float(edm[-1]) == 0.0
    with pytest.raises(UsageError, match="at least 1"):
        sigmas_for(SamplerSpec(), steps=0)
    with pytest.raises(UsageError, match="1000 steps at most"):
        sigmas_for(SamplerSpec(), steps=1001)


def test_guider_for_maps_every_kind() -> None:
    assert isinstance(guider_for(GuiderSpec(kind="identity")), guiders.IdentityGuider)
    cfg = guider_for(GuiderSpec(kind="vanilla", scale=5.0), scale=7.5)
    assert isinstance(cfg, guiders.VanillaCFG) and cfg.scale == 7.5
    linear = guider_for(GuiderSpec(kind="linear", scale=3.0, min_scale=1.5), frames=25)
    assert linear.scales().flatten().tolist()[:2] == pytest.approx([1.5, 1.5625])
    st = guider_for(GuiderSpec(kind="spatiotemporal", scale=2.0, num_views=8), frames=40)
    assert st.scales().max().item() == pytest.approx(1.9286, abs=1e-4)


def test_channels_last_gives_the_same_image(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    make_checkpoint(presets.load(TINY), tmp_path / "ckpt")
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "ckpt"))
    paths = []
    for name, extra in (("plain", []), ("nhwc", ["--set", "perf.channels_last=true"])):
        r = CliRunner().invoke(app, ["txt2img", "a cat", "-p", TINY, "--steps", "2", "--seed", "3", "--quiet",
                                     "-o", str(tmp_path / name), *extra])
        assert r.exit_code == 0, r.output
        paths.append(r.stdout.strip())
    a, b = (np.asarray(Image.open(p), dtype=np.int16) for p in paths)
    assert np.abs(a - b).max() <= 2


def test_keep_loaded_reuses_the_engine_only_when_on(tmp_path: Path) -> None:
    """The pipeline benchmark keeps engines loaded between runs; the CLI (off) loads every time."""
    from gm.console import console
    from gm.pipelines import common

    preset = presets.load(TINY)
    path = make_checkpoint(preset, tmp_path)
    runtime = common.runtime_for(preset, "cpu")
    console.configure()
    assert common.load(preset, runtime, path) is not common.load(preset, runtime, path)
    common.keep_loaded(True)
    try:
        first = common.load(preset, runtime, path)
        assert common.load(preset, runtime, path) is first
        other = presets.load(TINY, ["perf.channels_last=true"])  # another preset: its own engine
        assert common.load(other, runtime, path) is not first
    finally:
        common.keep_loaded(False)
    assert [name for name, _ in console.timings].count(f"load {preset.name}") == 4
    assert common.load(preset, runtime, path) is not first


def test_scheduler_names_come_from_the_registry() -> None:
    """'normal' is the preset's discretization; the others are gm.diffusion.schedulers' registry, over the
    model's range: the DDPM table for legacy_ddpm presets, sigma_min..sigma_max for EDM ones."""
    import torch

    from gm.diffusion import recipe, schedulers

    assert torch.equal(sigmas_for(SamplerSpec(steps=10, scheduler="normal")), sigmas_for(SamplerSpec(steps=10)))
    assert recipe.scheduler_names() == tuple(schedulers.SCHEDULERS)
    with pytest.raises(UsageError, match="unknown scheduler 'nope'"):
        sigmas_for(SamplerSpec(scheduler="nope"))
    ddpm = schedulers.model_sigmas(True)
    assert torch.equal(sigmas_for(SamplerSpec(steps=6, scheduler="karras")), schedulers.karras_sigmas(6, ddpm))
    edm = sigmas_for(SamplerSpec(steps=4, scheduler="exponential", discretization="edm", sigma_min=0.5, sigma_max=8.0))
    assert edm.tolist() == pytest.approx([8.0 * (1 / 16) ** (i / 3) for i in range(4)] + [0.0], rel=1e-5)


def test_cli_scheduler_and_sampler_options(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json

    from gm.io.media import read_png_text

    make_checkpoint(presets.load(TINY), tmp_path / "ckpt")
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "ckpt"))
    bad = CliRunner().invoke(app, ["txt2img", "a cat", "-p", TINY, "--scheduler", "nope", "-o", str(tmp_path)])
    assert bad.exit_code == 2 and "unknown scheduler 'nope'" in bad.output and "karras" in bad.output
    r = CliRunner().invoke(app, ["txt2img", "a cat", "-p", TINY, "--steps", "2", "--scheduler", "karras",
                                 "--sampler", "dpmpp_2m", "-q", "-o", str(tmp_path / "o")])
    assert r.exit_code == 0, r.output
    record = json.loads(read_png_text(Path(r.stdout.strip()))["gm"])
    assert (record["preset"]["sampler"]["scheduler"], record["preset"]["sampler"]["name"]) == ("karras", "dpmpp_2m")
    assert "Sampler: DPM++ 2M Karras," in read_png_text(Path(r.stdout.strip()))["parameters"]
