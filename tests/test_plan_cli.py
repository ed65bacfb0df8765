"""`gm <command> --plan` / `--max-vram` on tiny presets: the plan loads nothing, the fitter's
choices are applied and leave the outputs as they were (issue 16)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.diffusion.guiders import VanillaCFG, guided
from gm.plan import Planner, meta_engine, workload_for
from gm.plan.fit import smallest
from tests.tiny import make_checkpoint

HERE = Path(__file__).parent
PRESETS = HERE / "presets"
IMAGE = HERE / "data" / "test_image_256x144.png"
GIF = HERE / "data" / "camel_small.gif"

# (command, input arguments, tiny preset): every generating command.
COMMANDS = [
    ("txt2img", ["a fox"], "tiny-sdxl-base"),
    ("txt2img", ["a fox", "--refiner", str(PRESETS / "tiny-sdxl-refiner.toml")], "tiny-sdxl-base"),
    ("refine", [str(IMAGE)], "tiny-sdxl-refiner"),
    ("turbo", ["a fox"], "tiny-sdxl-turbo"),
    ("img2vid", [str(IMAGE)], "tiny-svd"),
    ("orbit", [str(IMAGE)], "tiny-sv3d-p"),
    ("video4d", [str(GIF)], "tiny-sv4d2"),
    ("video4d", [str(GIF)], "tiny-sv4d"),
]


def gm(*args: str) -> tuple[int, str, str]:
    result = CliRunner().invoke(app, list(args))
    return result.exit_code, result.stdout, result.stderr


def no_torch_load(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any checkpoint read fails the test: a plan must not open one."""
    import safetensors.torch

    def refuse(*_a, **_k):
        raise AssertionError("a checkpoint was read")

    monkeypatch.setattr(safetensors.torch, "load_file", refuse)
    monkeypatch.setattr(safetensors, "safe_open", refuse)


@pytest.mark.parametrize(("command", "inputs", "preset"), COMMANDS, ids=lambda v: v if isinstance(v, str) else "")
def test_plan_prints_the_table_and_loads_nothing(command, inputs, preset, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "empty"))  # no checkpoint anywhere
    no_torch_load(monkeypatch)
    out = tmp_path / "out"
    code, stdout, stderr = gm(command, *inputs, "-p", str(PRESETS / f"{preset}.toml"), "--plan", "--out", str(out))
    assert code == 0, stderr
    assert f"{preset}: weights on" in stdout and "peak per phase" in stdout and "overall" in stdout
    assert not out.exists()
    code, stdout, stderr = gm(command, *inputs, "-p", str(PRESETS / f"{preset}.toml"), "--plan", "--json",
                              "--device", "cuda", "--dtype", "fp16")
    assert code == 0, stderr
    plans = [json.loads(line) for line in stdout.splitlines()]
    assert len(plans) == (2 if "--refiner" in inputs else 1)
    plan = plans[0]
    assert plan["preset"] == preset and plan["device"] == "cuda" and plan["dtype"] == "fp16"
    assert plan["vae_dtype"] == "fp32" and plan["attention"] == "fused"
    assert [p["name"] for p in plan["phases"]][:3] == ["load", "encode", "sample"]
    assert plan["peak_bytes"] == max(p["peak"] for p in plan["phases"]) > sum(w["bytes"] for w in plan["weights"])
    assert {w["dtype"] for w in plan["weights"] if w["module"] == "network"} == {"float16"}


def test_plan_follows_the_job(tmp_path) -> None:
    """Sizes, frames and dtypes come from the options as a run would take them."""
    p = str(PRESETS / "tiny-sdxl-base.toml")
    code, stdout, _ = gm("txt2img", "x", "-p", p, "-W", "128", "-H", "64", "--plan", "--json", "--dtype", "bf16")
    assert code == 0
    plan = json.loads(stdout)
    assert (plan["workload"]["width"], plan["workload"]["height"], plan["dtype"]) == (128, 64, "bf16")
    code, stdout, _ = gm("img2vid", str(IMAGE), "-p", str(PRESETS / "tiny-svd.toml"), "--frames", "3",
                         "--decoding-t", "2", "--steps", "2", "--plan", "--json")
    plan = json.loads(stdout)
    assert plan["workload"]["frames"] == 3 and plan["workload"]["steps"] == 2
    assert plan["settings"]["decode_chunk"] == 2
    code, stdout, _ = gm("refine", str(IMAGE), "-p", str(PRESETS / "tiny-sdxl-refiner.toml"), "--plan", "--json")
    plan = json.loads(stdout)  # 256x144 floored to 64: 256x128, and the VAE encodes the input
    assert (plan["workload"]["width"], plan["workload"]["height"], plan["workload"]["init_image"]) == (256, 128, True)
    code, _, stderr = gm("refine", str(tmp_path / "missing.png"), "-p", str(PRESETS / "tiny-sdxl-refiner.toml"), "--plan")
    assert code != 0 and "missing.png" in stderr


def smallest_peak(name: str, frames: int | None = None) -> int:
    preset = presets.load(str(PRESETS / f"{name}.toml"))
    work = workload_for(preset, frames=frames)
    planner = Planner(meta_engine(preset, torch.float32, torch.float32), preset, work, dtype=torch.float32,
                      vae_dtype=torch.float32, device="cpu")
    return planner.plan(smallest(planner, ())).peak


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("ckpt")
    return {name: make_checkpoint(presets.load(str(PRESETS / f"{name}.toml")), folder)
            for name in ("tiny-svd-image-decoder", "tiny-sd21")}


def frames_of(folder: Path) -> np.ndarray:
    files = sorted(folder.rglob("*.png"))
    return np.stack([np.asarray(Image.open(f), dtype=np.int16) for f in files])


def test_max_vram_chunks_stages_and_splits_cfg_with_the_same_video(checkpoints, tmp_path) -> None:
    """A budget just above the least-memory plan forces one frame per decode call, staging and
    two-pass CFG; the frames match the unconstrained run (per-frame decoder: only rounding moves)."""
    budget = smallest_peak("tiny-svd-image-decoder", frames=3) * 1.01 / 1e9
    args = ["img2vid", str(IMAGE), "-p", str(PRESETS / "tiny-svd-image-decoder.toml"), "--checkpoint",
            str(checkpoints["tiny-svd-image-decoder"]), "--frames", "3", "--steps", "2",
            "--device", "cpu", "--format", "frames", "--seed", "5"]
    code, _, stderr = gm(*args, "--out", str(tmp_path / "free"))
    assert code == 0, stderr
    code, _, stderr = gm(*args, "--out", str(tmp_path / "fit"), "--max-vram", f"{budget:.6f}")
    assert code == 0, stderr
    assert "decode 1 frame(s) per call (of 3)" in stderr
    assert "CFG as two passes" in stderr and "staging" in stderr
    free, fit = frames_of(tmp_path / "free"), frames_of(tmp_path / "fit")
    assert free.shape == fit.shape and len(free) >= 3
    assert np.abs(free - fit).max() <= 1  # fp32 rounding of a different batch, at most one level


def test_max_vram_staging_keeps_images_identical(checkpoints, tmp_path) -> None:
    args = ["txt2img", "a fox", "-p", str(PRESETS / "tiny-sd21.toml"), "--checkpoint",
            str(checkpoints["tiny-sd21"]), "--steps", "2", "--device", "cpu", "--seed", "5"]
    code, _, stderr = gm(*args, "--out", str(tmp_path / "free"))
    assert code == 0, stderr
    budget = smallest_peak("tiny-sd21") * 1.01 / 1e9
    code, _, stderr = gm(*args, "--out", str(tmp_path / "fit"), "--max-vram", f"{budget:.6f}")
    assert code == 0, stderr
    assert "staging: only the active phase's weights" in stderr
    assert np.array_equal(frames_of(tmp_path / "free"), frames_of(tmp_path / "fit"))


def test_nothing_fits_is_one_line_before_loading(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "empty"))
    no_torch_load(monkeypatch)
    need = smallest_peak("tiny-svd", frames=3) / 1e9
    out = tmp_path / "out"
    code, stdout, stderr = gm("img2vid", str(IMAGE), "-p", str(PRESETS / "tiny-svd.toml"), "--frames", "3",
                              "--device", "cpu", "--max-vram", "0.001", "--out", str(out))
    assert code == 1 and stdout == ""
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and "no settings fit 0.0 GB" in lines[0]
    assert f"the smallest plan needs {need:.1f} GB" in lines[0] and "--max-vram" in lines[0]
    assert not out.exists()
    code, _, stderr = gm("txt2img", "x", "-p", str(PRESETS / "tiny-sd21.toml"), "--max-vram", "0", "--plan")
    assert code == 2 and "--max-vram must be a positive" in stderr


def test_two_pass_cfg_equals_the_batch_of_two() -> None:
    """The guider's two-pass path on a real (tiny, random) UNet: the same result within fp32 rounding."""
    from gm.diffusion.denoiser import make_denoiser, unet_network
    from gm.models.build import build_engine

    preset = presets.load(str(PRESETS / "tiny-sd21.toml"))
    torch.manual_seed(0)
    engine = build_engine(preset).eval()
    spec = preset.denoiser
    den = make_denoiser(unet_network(engine.network), spec.scaling, spec.kind == "discrete",
                        sigma_data=spec.sigma_data, device=torch.device("cpu"), dtype=torch.float32)
    ctx = engine.network.cfg.context_dim
    c = {"crossattn": torch.randn(2, 77, ctx)}
    uc = {"crossattn": torch.randn(2, 77, ctx)}
    x, sigma = torch.randn(2, 4, 8, 8), torch.tensor([3.0, 3.0])
    with torch.inference_mode():
        batched = guided(den, VanillaCFG(7.0), c, uc, two_pass=False)(x, sigma)
        two = guided(den, VanillaCFG(7.0), c, uc, two_pass=True)(x, sigma)
    torch.testing.assert_close(two, batched, rtol=1e-5, atol=1e-5)
    assert not torch.equal(batched, guided(den, VanillaCFG(1.0), c, uc)(x, sigma))  # guidance did act


RELEASE = [
    ("txt2img", ["a fox", "-W", "256", "-H", "256"], "sdxl-base-1.0"),
    ("turbo", ["a fox"], "sd-turbo"),
    ("img2vid", [str(IMAGE), "--frames", "2", "--set", "defaults.height=128", "--set", "defaults.width=128"], "svd-xt"),
    ("video4d", [str(GIF), "--img-size", "128"], "sv4d2"),
]


@pytest.mark.parametrize(("command", "inputs", "preset"), RELEASE, ids=lambda v: v if isinstance(v, str) else "")
def test_plan_release_presets(command, inputs, preset, tmp_path, monkeypatch) -> None:
    """Release presets plan without their checkpoints (smaller sizes keep it fast; one per architecture:
    the refiner is SDXL's, SV3D SVD's video UNet)."""
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "empty"))
    no_torch_load(monkeypatch)
    code, stdout, stderr = gm(command, *inputs, "-p", preset, "--plan", "--json", "--device", "cuda")
    assert code == 0, stderr
    plan = json.loads(stdout.splitlines()[0])
    assert plan["preset"] == preset and plan["dtype"] == "fp16"
    assert sum(w["bytes"] for w in plan["weights"]) > 1e9  # the released networks, on paper
