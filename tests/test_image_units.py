"""Image pipeline pieces: aspect table, size grid, A1111 infotext, release image presets' semantics."""

from __future__ import annotations

import pytest

from gm import presets
from gm.errors import UsageError
from gm.outputs import a1111_fields, model_hash, parameters_text
from gm.pipelines.image_cond import SDXL_SIZES, aspect_size, check_size, parse_aspect, size_grid


@pytest.mark.parametrize("text, size", [
    ("1:1", (1024, 1024)), ("16:9", (1344, 768)), ("9:16", (768, 1344)), ("4:3", (1152, 896)),
    ("21:9", (1536, 640)), ("1.0", (1024, 1024)), ("3", (1728, 576)), ("1/2", (704, 1408)),
])
def test_aspect_picks_the_nearest_sdxl_table_entry(text: str, size: tuple[int, int]) -> None:
    assert aspect_size(text, 1024, 1024) == size
    assert size in SDXL_SIZES


def test_aspect_rescales_for_smaller_models() -> None:
    assert aspect_size("1:1", 512, 512) == (512, 512)
    w, h = aspect_size("16:9", 768, 768)
    assert w % 64 == 0 and h % 64 == 0 and w > h


@pytest.mark.parametrize("text", ["wide", "1:0", "-1", "0", "a:b"])
def test_bad_aspect(text: str) -> None:
    with pytest.raises(UsageError):
        parse_aspect(text)


def test_size_grid_follows_the_unet_depth() -> None:
    assert size_grid(presets.load("sdxl-base-1.0")) == 32
    assert size_grid(presets.load("sdxl-refiner-1.0")) == 64
    assert size_grid(presets.load("sd-2.1")) == 64
    check_size(1344, 768, 32)
    with pytest.raises(UsageError, match="multiple of 8"):
        check_size(1023, 1024, 32)
    with pytest.raises(UsageError, match="multiple of 64"):
        check_size(1000, 1024, 64)


def test_a1111_infotext() -> None:
    preset = presets.load("sdxl-base-1.0")
    assert model_hash(preset) == "31e35c80fc"
    assert model_hash(presets.load("sdxl-refiner-1.0")) == "7440042bbd"
    assert model_hash(presets.load("sd-2.1")) == ""
    fields = a1111_fields(preset, 42, 1344, 768, 50, 6.0)
    text = parameters_text("a red fox", "blurry", fields)
    assert text == ("a red fox\nNegative prompt: blurry\nSteps: 50, Sampler: DPM++ 2M, CFG scale: 6.0, Seed: 42, "
                    "Size: 1344x768, Model: sdxl-base-1.0, Model hash: 31e35c80fc")
    assert parameters_text("x", "", a1111_fields(presets.load("sd-turbo"), 0, 512, 512, 1, 1.0)) == (
        "x\nSteps: 1, Sampler: Euler a, CFG scale: 1.0, Seed: 0, Size: 512x512, Model: sd-turbo")


@pytest.mark.parametrize("name", ["sdxl-base-1.0", "sdxl-base-0.9", "sdxl-turbo"])
def test_sdxl_base_presets(name: str) -> None:
    p = presets.load(name)
    assert p.defaults.zero_uc_text and p.vae is not None and p.vae["scale_factor"] == 0.13025
    assert p.checkpoint is not None and p.checkpoint.layout == "sgm"
    assert set(p.checkpoint.optional) == {
        "denoiser.sigmas", "conditioner.embedders.0.transformer.text_model.embeddings.position_ids"}
    inputs = [c["input"] for c in p.conditioner]
    assert inputs == ["txt", "txt", "original_size_as_tuple", "crop_coords_top_left", "target_size_as_tuple"]


def test_release_image_preset_facts() -> None:
    assert presets.load("sdxl-base-0.9").checkpoint.gated and presets.load("sdxl-refiner-0.9").checkpoint.gated
    assert not presets.load("sdxl-base-1.0").checkpoint.gated
    for name in ("sdxl-turbo", "sd-turbo"):
        p = presets.load(name)
        assert (p.guider.kind, p.sampler.name, p.sampler.eta, p.sampler.steps) == ("identity", "euler_a", 1.0, 1)
        assert (p.defaults.width, p.defaults.height) == (512, 512)
    assert presets.load("sd-2.1-768").denoiser.scaling == "v" and presets.load("sd-2.1").denoiser.scaling == "eps"
    for name in ("sd-2.1", "sd-2.1-768", "sd-turbo"):
        p = presets.load(name)
        assert p.checkpoint.layout == "ldm" and p.vae["scale_factor"] == 0.18215
    r = presets.load("sdxl-refiner-1.0")
    assert (r.defaults.aesthetic_score, r.defaults.negative_aesthetic_score) == (6.0, 2.5)
    assert not r.defaults.zero_uc_text
