"""The habits users bring from diffusers / A1111 / ComfyUI: fresh seeds unless fixed (and recorded),
`gm refine` reusing the input's prompt, `gm turbo --init-image`, `--batch-size` next to `-n`, and one
meaning of `-n` (images; frames are `--frames`)."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, PngImagePlugin

from gm import presets
from gm.diffusion.schedules import img2img_sigmas, turbo_sigmas
from gm.errors import UsageError
from gm.pipelines.image_input import parse_parameters, prompt_from_metadata
from gm.pipelines.seeds import DRAW_LIMIT, resolve_seed

# The tiny presets and the fixtures the image pipeline tests use (one thread, tiny checkpoints, the CLI,
# a recorder of run_sampler calls).
from tests.test_image_pipeline import (  # noqa: F401 - fixtures are found by name
    BASE,
    PRESETS,
    REFINER,
    SD21,
    TURBO,
    _one_thread,
    checkpoints,
    gm,
    sampler_calls,
)
from tests.test_image_pipeline import record as meta


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB")).astype(np.int16)


# Seeds ----------------------------------------------------------------------------------------------

def test_without_seed_a_fresh_one_is_drawn_printed_recorded_and_reproducible(gm, tmp_path: Path) -> None:
    args = ("txt2img", "a cat", "-p", SD21, "--steps", "1")
    a = gm(*args, "-o", str(tmp_path / "a"))
    b = gm(*args, "--seed", "-1", "-o", str(tmp_path / "b"))
    assert a.exit_code == 0 and b.exit_code == 0, a.output + b.output
    seeds = []
    for run in (a, b):
        path = run.stdout.strip()
        printed = int(re.search(r"^seed (\d+)$", run.stderr, re.M).group(1))
        params, record = meta(path)
        assert record["seed"] == printed and f"Seed: {printed}," in params and 0 <= printed < DRAW_LIMIT
        seeds.append(printed)
    assert seeds[0] != seeds[1]  # two draws from 2^31 values
    assert not np.array_equal(pixels(a.stdout.strip()), pixels(b.stdout.strip()))
    again = gm(*args, "--seed", str(seeds[0]), "-o", str(tmp_path / "c"))
    assert "seed " not in again.stderr  # a fixed seed is not announced
    assert np.array_equal(pixels(a.stdout.strip()), pixels(again.stdout.strip()))


def test_seed_preset_takes_the_documented_seed(gm, tmp_path: Path) -> None:
    r = gm("txt2img", "a cat", "-p", SD21, "--steps", "1", "--seed", "preset", "-n", "2", "--json",
           "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    assert [json.loads(line)["seed"] for line in r.stdout.splitlines()] == [42, 43]


def test_resolve_seed_rules(monkeypatch: pytest.MonkeyPatch) -> None:
    from gm.pipelines import seeds
    from gm.pipelines.video import request_from_preset
    from gm.pipelines.video4d_job import video4d_request

    assert resolve_seed(7, 42) == 7 and resolve_seed("7", 42) == 7 and resolve_seed("preset", 42) == 42
    monkeypatch.setattr(seeds, "draw_seed", lambda: 1234)
    assert resolve_seed(None, 42) == resolve_seed(-1, 42) == resolve_seed("random", 42) == 1234
    for bad in (-2, "-7", "x", 2**64):
        with pytest.raises(UsageError):
            resolve_seed(bad, 42)
    # Every family resolves alike: img2vid / orbit requests and video4d (where -1 used to run as seed -1).
    svd, sv4d = presets.load("svd"), presets.load("sv4d2")
    assert request_from_preset(svd).seed == request_from_preset(svd, seed=-1).seed == 1234
    assert request_from_preset(svd, seed="preset").seed == 23
    assert video4d_request(sv4d, "x.gif", seed=-1).seed == video4d_request(sv4d, "x.gif").seed == 1234
    assert video4d_request(sv4d, "x.gif", seed="preset").seed == 23
    with pytest.raises(UsageError):
        video4d_request(sv4d, "x.gif", seed=-3)


def test_video_seed_errors_exit_2_and_img2vid_has_no_n(gm, tmp_path: Path) -> None:
    image = str(Path(__file__).resolve().parent / "data" / "test_image_256x144.png")
    bad = gm("img2vid", image, "-p", "svd", "--seed", "-5", "-o", str(tmp_path))
    assert bad.exit_code == 2 and "--seed must be in [0, 2^64) or -1" in bad.stderr
    frames = gm("img2vid", image, "-p", "svd", "-n", "3", "-o", str(tmp_path))
    assert frames.exit_code == 2 and "-n" in frames.output  # frames are --frames; -n means outputs
    v4d = gm("video4d", image, "-p", "sv4d2", "--seed", "-2", "-o", str(tmp_path))
    assert v4d.exit_code == 2 and "--seed must be" in v4d.stderr


# gm refine reuses the input's prompt ---------------------------------------------------------------

def test_refine_without_prompt_uses_each_inputs_metadata(gm, tmp_path: Path) -> None:
    fox = gm("txt2img", "a red fox", "-p", SD21, "--negative", "blurry", "--steps", "1", "--seed", "1",
             "-o", str(tmp_path / "a")).stdout.strip()
    owl = gm("txt2img", "an owl", "-p", SD21, "--steps", "1", "--seed", "2", "-o", str(tmp_path / "a")).stdout.strip()
    args = ("-p", SD21, "--steps", "4", "--strength", "0.5", "--seed", "3")
    r = gm("refine", fox, owl, *args, "-o", str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    assert "000000.png: prompt from its metadata: 'a red fox' (negative 'blurry')" in r.stderr
    assert "000001.png: prompt from its metadata: 'an owl'" in r.stderr
    out_fox, out_owl = r.stdout.split()
    assert meta(out_fox)[1]["prompt"] == "a red fox" and meta(out_fox)[1]["negative_prompt"] == "blurry"
    assert meta(out_fox)[0].startswith("a red fox\nNegative prompt: blurry\n")
    assert meta(out_owl)[1]["prompt"] == "an owl" and meta(out_owl)[1]["negative_prompt"] == ""
    # The same image as giving that prompt and negative explicitly.
    given = gm("refine", fox, *args, "--prompt", "a red fox", "--negative", "blurry", "-o", str(tmp_path / "c"))
    assert "metadata" not in given.stderr
    assert np.array_equal(pixels(out_fox), pixels(given.stdout.strip()))
    # A given --negative wins over the recorded one; the prompt still comes from the file.
    r2 = gm("refine", fox, *args, "--negative", "", "-o", str(tmp_path / "d"))
    assert meta(r2.stdout.strip())[1]["negative_prompt"] == "" and meta(r2.stdout.strip())[1]["prompt"] == "a red fox"


def test_prompt_from_a1111_metadata_and_files_without_it(gm, tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a (castle:1.2),\nsnowy hills\nNegative prompt: lowres,\nwatermark\n"
                                "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1, Size: 64x64")
    a1111 = tmp_path / "a1111.png"
    Image.new("RGB", (64, 64), (90, 120, 200)).save(a1111, pnginfo=info)
    assert prompt_from_metadata(a1111) == ("a (castle:1.2),\nsnowy hills", "lowres,\nwatermark")
    assert parse_parameters("just a prompt") == ("just a prompt", "")
    assert parse_parameters("a cat\nSteps: 2, Seed: 1") == ("a cat", "")
    plain = tmp_path / "plain.png"
    Image.new("RGB", (64, 64), (10, 20, 30)).save(plain)
    assert prompt_from_metadata(plain) is None
    r = gm("refine", str(plain), "-p", SD21, "--steps", "2", "--seed", "1", "-o", str(tmp_path / "o"))
    assert r.exit_code == 0 and "no prompt in its metadata" in r.stderr
    assert meta(r.stdout.strip())[1]["prompt"] == ""


# gm turbo --init-image ------------------------------------------------------------------------------

def test_turbo_img2img_runs_the_pruned_turbo_schedule(gm, tmp_path: Path, sampler_calls: list) -> None:
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (70, 140, 3), dtype=np.uint8)).save(init)
    r = gm("turbo", "a cat", "-p", TURBO, "--init-image", str(init), "--seed", "4", "-o", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    (call,) = sampler_calls
    assert torch.equal(call["sigmas"], img2img_sigmas(turbo_sigmas(4), 0.5)) and len(call["sigmas"]) == 2
    params, record = meta(r.stdout.strip())
    assert "Denoising strength: 0.5" in params and record["init_image"] == str(init) and record["strength"] == 0.5
    assert record["command"] == "turbo" and pixels(r.stdout.strip()).shape == (64, 128, 3)
    stronger = gm("turbo", "a cat", "-p", TURBO, "--init-image", str(init), "--strength", "0.8", "--seed", "4",
                  "-o", str(tmp_path / "b"))
    assert stronger.exit_code == 0 and len(sampler_calls[-1]["sigmas"]) == 4  # floor(0.8 * 5) values: 3 steps
    alone = gm("turbo", "a cat", "-p", TURBO, "--strength", "0.5", "-o", str(tmp_path / "c"))
    assert alone.exit_code == 2 and "--strength needs --init-image" in alone.stderr


# --batch-size ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("preset,extra", [(BASE, ("--sampler", "euler_a")), (TURBO, ("--steps", "2"))])
def test_batch_equals_one_at_a_time(gm, tmp_path: Path, sampler_calls: list, monkeypatch: pytest.MonkeyPatch,
                                    preset: str, extra: tuple[str, ...]) -> None:
    """-n 3 --batch-size 2: two sampler calls (2 + 1 images), the same seeds and files, and each image the
    one sampled alone (start and ancestral noise from its own seed + k) up to float rounding."""
    from gm.models.unet import UNet

    batches: list[int] = []
    forward = UNet.forward
    monkeypatch.setattr(UNet, "forward", lambda self, x, *a, **k: batches.append(x.shape[0]) or forward(self, x, *a, **k))
    command = "turbo" if preset == TURBO else "txt2img"
    args = (command, "a fox", "-p", preset, "-n", "3", "--seed", "11", *extra, "--json")
    one = gm(*args, "-o", str(tmp_path / "one"))
    single = [c["out"] for c in sampler_calls]
    sampler_calls.clear()
    batches.clear()
    batched = gm(*args, "--batch-size", "2", "-o", str(tmp_path / "batched"))
    assert one.exit_code == 0 and batched.exit_code == 0, one.output + batched.output
    guided = 2 if preset == BASE else 1
    assert batches[0] == 2 * guided and batches[-1] == guided
    assert [c["out"].shape[0] for c in sampler_calls] == [2, 1]
    torch.testing.assert_close(torch.cat([c["out"] for c in sampler_calls]), torch.cat(single), rtol=1e-4, atol=1e-4)
    rows = [[json.loads(line) for line in run.stdout.splitlines()] for run in (one, batched)]
    assert [r["seed"] for r in rows[0]] == [r["seed"] for r in rows[1]] == [11, 12, 13]
    for a, b in zip(rows[0], rows[1], strict=True):
        assert np.abs(pixels(a["path"]) - pixels(b["path"])).max() <= 1
        assert meta(b["path"])[1]["seed"] == a["seed"]


def test_api_seed_none_is_random_and_kept_in_last_seed(checkpoints: Path) -> None:
    import gm as gm_api

    m = gm_api.load(SD21, checkpoint=checkpoints / "tiny-sd21.safetensors", device="cpu")
    first = m.txt2img("a cat", steps=1, tensors=True)
    seed = m.last_seed
    assert isinstance(seed, int) and 0 <= seed < DRAW_LIMIT
    again = m.txt2img("a cat", steps=1, seed=seed, n=2, batch_size=2, tensors=True)
    assert m.last_seed == seed
    assert (first[0] - again[0]).abs().max() <= 1 / 255 + 1e-6  # batched: equal up to one 8-bit level
    assert m.txt2img("a cat", steps=1, seed="preset", tensors=True) and m.last_seed == 42


def test_batch_through_img2img_and_the_refiner(gm, tmp_path: Path) -> None:
    """--batch-size also batches the img2img start (posterior sample + renoise per image) and the refiner."""
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(init)
    args = ("txt2img", "a fox", "-p", BASE, "--init-image", str(init), "--strength", "0.5", "--steps", "4",
            "--refiner", REFINER, "--no-finish", "-n", "2", "--seed", "5", "--quiet")
    one = gm(*args, "-o", str(tmp_path / "one")).stdout.split()
    batched = gm(*args, "--batch-size", "2", "-o", str(tmp_path / "batched")).stdout.split()
    assert len(one) == len(batched) == 2
    for a, b in zip(one, batched, strict=True):
        assert np.abs(pixels(a) - pixels(b)).max() <= 1
    assert not np.array_equal(pixels(batched[0]), pixels(batched[1]))


def test_recorded_lora_tags_are_dropped_with_a_warning(gm, tmp_path: Path) -> None:
    info = PngImagePlugin.PngInfo()
    info.add_text("parameters", "a fox <lora:style:0.5>\nSteps: 20, Seed: 1, Size: 64x64")
    source = tmp_path / "tagged.png"
    Image.new("RGB", (64, 64), (90, 120, 200)).save(source, pnginfo=info)
    r = gm("refine", str(source), "-p", SD21, "--steps", "2", "--seed", "1", "-o", str(tmp_path / "o"))
    assert r.exit_code == 0, r.output
    assert "names LoRAs (style) that this refine does not load" in r.stderr
    assert meta(r.stdout.strip())[1]["prompt"] == "a fox"
