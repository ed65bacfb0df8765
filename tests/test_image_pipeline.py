"""End to end on CPU: `gm txt2img`, `gm refine`, `gm turbo`, `gm txt2img --refiner` with tiny presets and
tiny random checkpoints -> PNGs whose metadata round-trips, whose watermark reads back, whose seeds
reproduce, and whose schedules are the reference's."""

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
from gm.diffusion.schedules import img2img_sigmas, legacy_ddpm_sigmas, turbo_sigmas, txt2noisy_sigmas
from gm.io import watermark
from gm.io.media import read_png_text
from gm.pipelines import image as image_pipeline
from tests.tiny import make_checkpoint

PRESETS = Path(__file__).resolve().parent / "presets"
BASE = str(PRESETS / "tiny-sdxl-base.toml")
REFINER = str(PRESETS / "tiny-sdxl-refiner.toml")
TURBO = str(PRESETS / "tiny-sdxl-turbo.toml")
SD21 = str(PRESETS / "tiny-sd21.toml")


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """Tiny convolutions are ~50x slower with 2 threads on a busy 2-core machine (thread hand-off)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("checkpoints")
    for path in (BASE, REFINER, TURBO, SD21):
        make_checkpoint(presets.load(path), folder)
    return folder


@pytest.fixture
def gm(checkpoints: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GM_CHECKPOINTS", str(checkpoints))

    def invoke(*args: str, stdin: str | None = None):
        return CliRunner().invoke(app, list(args), input=stdin)

    return invoke


@pytest.fixture
def sampler_calls(monkeypatch: pytest.MonkeyPatch) -> list[dict]:
    """Record every run_sampler call of the image pipeline (label, sigmas, start noise, result)."""
    calls: list[dict] = []
    original = image_pipeline.run_sampler

    def recording(spec, denoise, noise, sigmas, generator, label="sample", name=None, noise_fn=None):
        out = original(spec, denoise, noise, sigmas, generator, label=label, name=name, noise_fn=noise_fn)
        calls.append(dict(label=label, sigmas=sigmas.clone(), noise=noise.clone(), out=out.clone(), sampler=spec.name))
        return out

    monkeypatch.setattr(image_pipeline, "run_sampler", recording)
    return calls


def pixels(path: str | Path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def record(path: str | Path) -> tuple[str, dict]:
    text = read_png_text(Path(path))
    return text["parameters"], json.loads(text["gm"])


def short_hash(folder: Path, name: str) -> str:
    """A1111's Model hash of the tiny checkpoint `name` (what the infotext names the file by)."""
    import hashlib

    return hashlib.sha256((folder / f"{name}.safetensors").read_bytes()).hexdigest()[:10]


def test_txt2img_writes_watermarked_pngs_with_metadata(gm, checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    r = gm("txt2img", "a red fox", "-p", BASE, "--steps", "2", "--seed", "7", "-n", "2", "-W", "256", "-H", "256",
           "-o", str(out), "--json")
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [line["seed"] for line in lines] == [7, 8]
    assert [Path(line["path"]).name for line in lines] == ["000000.png", "000001.png"]
    assert all(line["prompt"] == "a red fox" for line in lines)
    for k, line in enumerate(lines):
        params, gm_json = record(line["path"])
        assert params == (f"a red fox\nSteps: 2, Sampler: DPM++ 2M, CFG scale: 6.0, Seed: {7 + k}, Size: 256x256, "
                          f"Model: tiny-sdxl-base, Model hash: {short_hash(checkpoints, 'tiny-sdxl-base')}")
        assert gm_json["checkpoint"]["sha256_10"] == short_hash(checkpoints, "tiny-sdxl-base")
        assert gm_json["command"] == "txt2img" and gm_json["seed"] == 7 + k and gm_json["prompt"] == "a red fox"
        expected = presets.replace(presets.load(BASE), "sampler", steps=2).to_dict()
        assert gm_json["preset"] == json.loads(json.dumps(expected))
        assert gm_json["watermark"] is True
        assert pixels(line["path"]).shape == (256, 256, 3)
        assert watermark.detect(pixels(line["path"])).bits >= 36
    # Numbered names continue, nothing is overwritten.
    r = gm("txt2img", "a red fox", "-p", BASE, "--steps", "1", "-o", str(out))
    assert r.exit_code == 0 and Path(r.stdout.strip()).name == "000002.png"


def test_seeds_reproduce_and_image_k_uses_seed_plus_k(gm, tmp_path: Path) -> None:
    args = ("txt2img", "a cat", "-p", SD21, "--steps", "2", "--quiet")
    a = gm(*args, "--seed", "5", "-n", "2", "-o", str(tmp_path / "a")).stdout.split()
    b = gm(*args, "--seed", "5", "-o", str(tmp_path / "b")).stdout.split()
    c = gm(*args, "--seed", "6", "-o", str(tmp_path / "c")).stdout.split()
    assert np.array_equal(pixels(a[0]), pixels(b[0]))
    assert np.array_equal(pixels(a[1]), pixels(c[0]))
    assert not np.array_equal(pixels(a[0]), pixels(a[1]))
    low = gm(*args, "--seed", "5", "--low-vram", "--device", "cpu", "-o", str(tmp_path / "d")).stdout.split()
    assert np.array_equal(pixels(a[0]), pixels(low[0]))


def test_too_small_for_watermark_warns(gm, tmp_path: Path) -> None:
    r = gm("txt2img", "a cat", "-p", SD21, "--steps", "1", "-o", str(tmp_path))
    assert r.exit_code == 0
    assert "too small for the invisible watermark" in r.stderr
    assert record(r.stdout.strip())[1]["watermark"] is False


def test_sd21_uses_the_negative_prompt(gm, tmp_path: Path) -> None:
    args = ("txt2img", "a cat", "-p", SD21, "--steps", "2", "--seed", "1")
    plain = gm(*args, "-o", str(tmp_path / "a"))
    negative = gm(*args, "--negative", "ugly", "-o", str(tmp_path / "b"))
    assert negative.exit_code == 0 and "ignores the negative" not in negative.stderr
    params, gm_json = record(negative.stdout.strip())
    assert params.splitlines()[1] == "Negative prompt: ugly" and gm_json["negative_prompt"] == "ugly"
    assert not np.array_equal(pixels(plain.stdout.strip()), pixels(negative.stdout.strip()))


def test_sdxl_base_encodes_a_given_negative_prompt(gm, tmp_path: Path) -> None:
    """SDXL base zeroes uc's text only for an EMPTY negative (the reference's default, kept); a given
    negative is encoded like on every other model (diffusers, A1111, ComfyUI), without a warning."""
    args = ("txt2img", "a cat", "-p", BASE, "--steps", "2", "--seed", "1")
    plain = gm(*args, "-o", str(tmp_path / "a"))
    negative = gm(*args, "--negative", "ugly", "-o", str(tmp_path / "b"))
    assert negative.exit_code == 0 and "negative" not in negative.stderr
    assert not np.array_equal(pixels(plain.stdout.strip()), pixels(negative.stdout.strip()))
    params, gm_json = record(negative.stdout.strip())
    assert params.splitlines()[1] == "Negative prompt: ugly" and gm_json["negative_prompt"] == "ugly"
    assert "negative_prompt_ignored" not in gm_json
    assert "Negative prompt" not in record(plain.stdout.strip())[0]
    # --set defaults.zero_uc_text=false: the empty negative is encoded too (a different image).
    encoded = gm(*args, "--set", "defaults.zero_uc_text=false", "-o", str(tmp_path / "c"))
    assert encoded.exit_code == 0, encoded.output
    assert not np.array_equal(pixels(plain.stdout.strip()), pixels(encoded.stdout.strip()))


def test_refiner_hand_off_uses_the_exact_sigma_and_no_new_noise(gm, tmp_path: Path, sampler_calls: list) -> None:
    r = gm("txt2img", "a fox", "-p", BASE, "--refiner", REFINER, "--steps", "50", "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    base, refine = sampler_calls
    full = legacy_ddpm_sigmas(50)
    assert torch.equal(base["sigmas"], txt2noisy_sigmas(full, 0.15, 50))
    assert len(base["sigmas"]) - 1 == 44 and float(base["sigmas"][-1]) == pytest.approx(0.3866, abs=1e-4)
    assert torch.equal(refine["sigmas"], img2img_sigmas(full, 0.15))
    assert len(refine["sigmas"]) - 1 == 6 and float(refine["sigmas"][0]) == float(base["sigmas"][-1])
    # No fresh noise: the refiner's unit start times sqrt(1 + sigma_0^2) is the base's noisy latent.
    scale = float(torch.sqrt(1 + refine["sigmas"][0] ** 2))
    torch.testing.assert_close(refine["noise"] * scale, base["out"], rtol=1e-6, atol=1e-6)
    params, gm_json = record(r.stdout.strip())
    assert "Refiner: tiny-sdxl-refiner" in params
    assert gm_json["refiner"]["strength"] == 0.15 and gm_json["refiner"]["finish"] is True


def test_refiner_no_finish_refines_the_clean_latent(gm, tmp_path: Path, sampler_calls: list) -> None:
    r = gm("txt2img", "a fox", "-p", BASE, "--refiner", REFINER, "--steps", "6", "--refiner-strength", "0.3",
           "--no-finish", "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    base, refine = sampler_calls
    full = legacy_ddpm_sigmas(6)
    assert torch.equal(base["sigmas"], full) and float(base["sigmas"][-1]) == 0.0
    assert torch.equal(refine["sigmas"], img2img_sigmas(full, 0.3))
    scale = float(torch.sqrt(1 + refine["sigmas"][0] ** 2))
    assert len(refine["sigmas"]) == 2  # floor(0.3 * 7) = 2 values: 1 step
    assert not torch.allclose(refine["noise"] * scale, base["out"], atol=1e-3)  # fresh noise was added


def test_img2img_strength_and_size(gm, tmp_path: Path, sampler_calls: list) -> None:
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (136, 200, 3), dtype=np.uint8)).save(init)
    r = gm("txt2img", "a fox", "-p", BASE, "--init-image", str(init), "--strength", "0.5", "--steps", "10",
           "-o", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    (call,) = sampler_calls
    assert torch.equal(call["sigmas"], img2img_sigmas(legacy_ddpm_sigmas(10), 0.5))
    assert len(call["sigmas"]) - 1 == 4
    assert pixels(r.stdout.strip()).shape == (128, 192, 3)  # floored to multiples of 64
    params, gm_json = record(r.stdout.strip())
    assert "Denoising strength: 0.5" in params and gm_json["init_image"] == str(init)


def test_refine_reads_paths_from_stdin(gm, tmp_path: Path, sampler_calls: list) -> None:
    first = gm("txt2img", "a fox", "-p", BASE, "--steps", "2", "-n", "2", "-o", str(tmp_path / "base"))
    assert first.exit_code == 0
    r = gm("refine", "-", "-p", REFINER, "--prompt", "a fox", "--steps", "10", "--seed", "3",
           "-o", str(tmp_path / "refined"), stdin=first.stdout)
    assert r.exit_code == 0, r.output
    outputs = r.stdout.split()
    assert len(outputs) == 2
    refine_calls = sampler_calls[2:]
    assert all(torch.equal(c["sigmas"], img2img_sigmas(legacy_ddpm_sigmas(10), 0.3)) for c in refine_calls)
    for k, (source, path) in enumerate(zip(first.stdout.split(), outputs, strict=True)):
        params, gm_json = record(path)
        assert gm_json["command"] == "refine" and gm_json["init_image"] == source and gm_json["seed"] == 3 + k
        assert "Denoising strength: 0.3" in params and "Model: tiny-sdxl-refiner" in params


def test_turbo_runs_the_sub_schedule_without_guidance(gm, checkpoints: Path, tmp_path: Path, sampler_calls: list,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    uc_asked: list[bool] = []
    original = image_pipeline.conditioning

    def spy(engine, preset, runtime, spec, need_uc):
        uc_asked.append(need_uc)
        return original(engine, preset, runtime, spec, need_uc)

    monkeypatch.setattr(image_pipeline, "conditioning", spy)
    r = gm("turbo", "a cat", "-p", TURBO, "--steps", "2", "--seed", "4", "-W", "256", "-H", "256", "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    (call,) = sampler_calls
    assert torch.equal(call["sigmas"], turbo_sigmas(2)) and call["sampler"] == "euler_a"
    assert uc_asked == [False]
    params, gm_json = record(r.stdout.strip())
    assert params == ("a cat\nSteps: 2, Sampler: Euler a, CFG scale: 1.0, Seed: 4, Size: 256x256, Model: tiny-sdxl-turbo, "
                      f"Model hash: {short_hash(checkpoints, 'tiny-sdxl-turbo')}")
    assert gm_json["command"] == "turbo" and gm_json["preset"]["guider"]["kind"] == "identity"
    assert watermark.detect(pixels(r.stdout.strip())).bits >= 36
    # The turbo demo's noise: start from RandomState(seed), ancestral call i from RandomState(seed + 1 + i).
    demo_start = np.random.RandomState(4).randn(1, 4, 32, 32).astype(np.float32)
    assert torch.equal(call["noise"].cpu(), torch.from_numpy(demo_start))
    draws = image_pipeline.turbo_noise_fn(4, (1, 4, 2, 2), torch.device("cpu"))
    for i in range(3):
        expected = np.random.RandomState(5 + i).randn(1, 4, 2, 2).astype(np.float32)
        assert torch.equal(draws(0), torch.from_numpy(expected))


def test_long_prompt_is_encoded_in_windows_not_cut(gm, tmp_path: Path) -> None:
    """80 tokens: two 77-token windows; the tail changes the image (it used to be dropped with a warning)."""
    args = ("txt2img", "-p", SD21, "--steps", "1", "--seed", "3")
    long = gm(*args, " ".join(["fox"] * 75 + ["cat"] * 5), "-o", str(tmp_path / "a"))
    cut = gm(*args, " ".join(["fox"] * 75), "-o", str(tmp_path / "b"))
    assert long.exit_code == 0 and "dropped" not in long.stderr, long.output
    assert not np.array_equal(pixels(long.stdout.strip()), pixels(cut.stdout.strip()))


def test_ldm_layout_checkpoint_loads(gm, tmp_path: Path, checkpoints: Path) -> None:
    from safetensors.torch import load_file, save_file

    state = load_file(str(checkpoints / "tiny-sd21.safetensors"))
    ldm = {k.replace("conditioner.embedders.0.model.", "cond_stage_model.model."): v for k, v in state.items()}
    ldm["betas"] = torch.zeros(1000)
    path = tmp_path / "ldm.safetensors"
    save_file(ldm, str(path))
    args = ("txt2img", "a cat", "-p", SD21, "--steps", "2", "--seed", "1")
    a = gm(*args, "-o", str(tmp_path / "a"))
    b = gm(*args, "--checkpoint", str(path), "-o", str(tmp_path / "b"))
    assert b.exit_code == 0, b.output
    assert np.array_equal(pixels(a.stdout.strip()), pixels(b.stdout.strip()))


def test_refiner_strength_1_hands_over_the_start_noise_at_sigma_max(gm, tmp_path: Path, sampler_calls: list) -> None:
    """Strength 1: the base keeps only sigma_max (0 steps) and must still return eps * sqrt(1 + sigma_max^2),
    which the refiner continues from (it used to return the unit noise: a start 14.6x too weak)."""
    r = gm("txt2img", "a fox", "-p", BASE, "--refiner", REFINER, "--steps", "4", "--refiner-strength", "1",
           "-W", "64", "-H", "64", "-o", str(tmp_path))
    assert r.exit_code == 0, r.output
    base, refine = sampler_calls
    full = legacy_ddpm_sigmas(4)
    assert torch.equal(base["sigmas"], full[:1]) and torch.equal(refine["sigmas"], full)
    scale = float(torch.sqrt(1 + full[0] ** 2))
    torch.testing.assert_close(base["out"], base["noise"] * scale, rtol=0, atol=0)
    torch.testing.assert_close(refine["noise"] * scale, base["out"], rtol=1e-6, atol=1e-5)


def test_low_vram_moves_each_stage_once_and_encodes_the_init_image_once(
        gm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """-n 3 from one init image with a refiner: one VAE encode (each image draws its own posterior sample),
    and in --low-vram mode each UNet goes to the device once, not once per image."""
    init = tmp_path / "init.png"
    Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(init)
    moves: list[str] = []
    encodes: list[int] = []
    on_device, posterior = image_pipeline.on_device, image_pipeline.posterior

    def spy_on_device(module, runtime):
        moves.append(type(module).__name__)
        return on_device(module, runtime)

    def spy_posterior(engine, images, runtime, chunk=0, **options):
        encodes.append(images.shape[0])
        return posterior(engine, images, runtime, chunk, **options)

    monkeypatch.setattr(image_pipeline, "on_device", spy_on_device)
    monkeypatch.setattr(image_pipeline, "posterior", spy_posterior)
    args = ("txt2img", "a fox", "-p", BASE, "--init-image", str(init), "--strength", "0.5", "--steps", "4",
            "--refiner", REFINER, "--no-finish", "--device", "cpu", "--quiet")
    r = gm(*args, "-n", "3", "--seed", "2", "--low-vram", "-o", str(tmp_path / "a"))
    assert r.exit_code == 0, r.output
    assert encodes == [1]
    assert moves == ["UNet", "UNet"]  # base, refiner
    # Image k is still the image of seed + k alone, and low-VRAM mode changes no number.
    alone = gm(*args, "--seed", "3", "-o", str(tmp_path / "b"))
    outputs = r.stdout.split()
    assert np.array_equal(pixels(outputs[1]), pixels(alone.stdout.strip()))
    assert not np.array_equal(pixels(outputs[0]), pixels(outputs[1]))


def _tiny_engine(name: str, folder: Path):
    from gm.pipelines.common import load, runtime_for

    preset = presets.load(name)
    runtime = runtime_for(preset, "cpu")
    return preset, runtime, load(preset, runtime, folder / f"{preset.name}.safetensors")


def test_sdxl_base_uc_zeroes_text_and_pooled_keeps_sizes_and_encodes_the_prompt_once(checkpoints: Path) -> None:
    """SDXL base without a negative: uc = c with crossattn AND the pooled vector zeroed, size/crop
    embeddings identical; the text towers run once (on the prompt), not again on the empty negative.
    A given negative is encoded instead (its own text pass, non-zero)."""
    from gm.pipelines.image_cond import TextCondition, _batch, conditioning

    preset, runtime, engine = _tiny_engine(BASE, checkpoints)
    conditioner = engine.embedders
    texts: list[list[str]] = []
    for emb in conditioner.embedders:
        if emb.config.input == "txt":
            emb.register_forward_pre_hook(lambda module, args: texts.append(list(args[0])))
    spec = TextCondition("a fox", "", 64, 96)
    c, uc = conditioning(engine, preset, runtime, spec, need_uc=True)
    assert texts == [["a fox"], ["a fox"]]
    # The two-pass way (sgm's get_unconditional_conditioning with force_uc_zero_embeddings=["txt"]).
    keys = conditioner.input_keys
    ref_c = conditioner.get_conditioning(_batch(keys, "a fox", spec, 6.0, runtime.device))
    ref_uc = conditioner.get_conditioning(_batch(keys, "", spec, 2.5, runtime.device), force_zero={"txt"})
    for key in ("crossattn", "vector"):
        assert torch.equal(c[key], ref_c[key]) and torch.equal(uc[key], ref_uc[key])
    pooled = 16  # tiny bigG embed_dim; then orig | crop | target, 2 x 8 each, (height, width) order
    assert not uc["crossattn"].any() and not uc["vector"][:, :pooled].any()
    assert torch.equal(uc["vector"][:, pooled:], c["vector"][:, pooled:])
    orig = c["vector"][:, pooled:pooled + 16]
    cos_first = torch.cat([torch.cos(torch.tensor([64.0])), torch.sin(torch.tensor([64.0]))])
    assert torch.equal(orig[0, [0, 4]], cos_first)  # height 64 first, its 8-wide sinusoid cos-first
    texts.clear()
    _, uc_neg = conditioning(engine, preset, runtime, TextCondition("a fox", "ugly", 64, 96), need_uc=True)
    assert texts == [["a fox"], ["a fox"], ["ugly"], ["ugly"]]
    ref_neg = conditioner.get_conditioning(_batch(keys, "ugly", spec, 2.5, runtime.device))
    assert torch.equal(uc_neg["crossattn"], ref_neg["crossattn"]) and uc_neg["crossattn"].any()
    assert torch.equal(uc_neg["vector"], ref_neg["vector"])


def test_refiner_uc_encodes_the_negative_with_aesthetic_2_5(checkpoints: Path) -> None:
    """The refiner's uc is the encoded negative prompt (not zeros), aesthetic 6.0 in c and 2.5 in uc."""
    from gm.nn.embeddings import timestep_embedding
    from gm.pipelines.image_cond import TextCondition, conditioning

    preset, runtime, engine = _tiny_engine(REFINER, checkpoints)
    spec = TextCondition("a fox", "ugly", 64, 128, preset.defaults.aesthetic_score,
                         preset.defaults.negative_aesthetic_score)
    c, uc = conditioning(engine, preset, runtime, spec, need_uc=True)
    assert uc["crossattn"].abs().sum() > 0 and not torch.equal(uc["crossattn"], c["crossattn"])
    outdim = preset.conditioner[-1]["outdim"]
    assert torch.equal(c["vector"][:, -outdim:], timestep_embedding(torch.tensor([6.0]), outdim))
    assert torch.equal(uc["vector"][:, -outdim:], timestep_embedding(torch.tensor([2.5]), outdim))


def test_refiner_and_refine_outputs_are_watermarked_and_detected(gm, tmp_path: Path) -> None:
    """`gm txt2img --refiner` and `gm refine` PNGs carry the mark: `gm detect-watermark` reads >= 36/48 bits."""
    handed = gm("txt2img", "a fox", "-p", BASE, "--refiner", REFINER, "--steps", "2", "-W", "256", "-H", "256",
                "--quiet", "-o", str(tmp_path / "a"))
    assert handed.exit_code == 0, handed.output
    refined = gm("refine", "-", "-p", REFINER, "--steps", "2", "--quiet", "-o", str(tmp_path / "b"),
                 stdin=handed.stdout)
    assert refined.exit_code == 0, refined.output
    paths = [handed.stdout.strip(), refined.stdout.strip()]
    assert [record(p)[1]["watermark"] for p in paths] == [True, True]
    detected = gm("detect-watermark", "--json", "--require", *paths)
    assert detected.exit_code == 0, detected.output
    assert [json.loads(line)["bits"] >= 36 for line in detected.stdout.splitlines()] == [True, True]


def test_cfg_1_runs_one_unet_batch_and_encodes_no_uc(gm, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """CFG is one [uc; c] batch of 2 per UNet call; at --cfg 1 the uncond pass (and its negative prompt) is skipped."""
    from gm.models.unet import UNet

    batches: list[int] = []
    original = UNet.forward

    def spy(self, x, *args, **kwargs):
        batches.append(x.shape[0])
        return original(self, x, *args, **kwargs)

    monkeypatch.setattr(UNet, "forward", spy)
    args = ("txt2img", "a cat", "-p", SD21, "--negative", "ugly", "--steps", "2", "--seed", "1", "--quiet")
    guided = gm(*args, "-o", str(tmp_path / "a"))
    assert guided.exit_code == 0 and batches == [2, 2]
    batches.clear()
    plain = gm(*args, "--cfg", "1", "-o", str(tmp_path / "b"))
    assert plain.exit_code == 0 and batches == [1, 1]
    assert "CFG scale: 1.0" in record(plain.stdout.strip())[0]
    # Same image as the conditional branch alone: the identity guider on c with the same noise.
    alone = gm(*args[:4], *args[6:], "--set", "guider.kind=identity", "-o", str(tmp_path / "c"))
    assert np.array_equal(pixels(plain.stdout.strip()), pixels(alone.stdout.strip()))


def test_strength_below_one_step_warns(gm, tmp_path: Path, sampler_calls: list) -> None:
    """strength < 1/(N+1) keeps only sigma 0: no step runs, and gm says so."""
    first = gm("txt2img", "a fox", "-p", SD21, "--steps", "1", "--quiet", "-o", str(tmp_path / "a"))
    r = gm("refine", first.stdout.strip(), "-p", SD21, "--steps", "3", "--strength", "0.2", "-o", str(tmp_path / "b"))
    assert r.exit_code == 0, r.output
    assert "--strength 0.2 keeps no step of the 3-step schedule" in r.stderr
    assert len(sampler_calls[-1]["sigmas"]) == 1
