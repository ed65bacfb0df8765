"""`--lora`, `<lora:…>` prompt tags, `--vae`, `--vae-tiling` and `--vae-dtype` through the image
commands and `gm.load`, on tiny presets with random checkpoints: the LoRA run equals a model merged by
hand, scale 0 is the base exactly, tags equal the option, the outputs record `Lora hashes` / `VAE`,
every bad add-on is one error line before the checkpoint loads, and tiling is exact with one tile and
close (the tiling tests' 5 % tolerance) with several."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file
from typer.testing import CliRunner

import gm as gm_api
from commands.app import app
from gm import loader, presets
from gm.diffusion import tiling
from gm.io.media import read_png_text
from gm.lora import apply_loras, load_lora, lora_hash
from gm.models.build import build_engine
from tests.tiny import make_checkpoint

PRESETS = Path(__file__).resolve().parent / "presets"
BASE = str(PRESETS / "tiny-sdxl-base.toml")
SD21 = str(PRESETS / "tiny-sd21.toml")
Q = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn1_to_q"
K = "lora_unet_input_blocks_3_1_transformer_blocks_0_attn2_to_k"


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _kohya(path: Path, modules: dict[str, tuple[int, int]], seed: int = 1, alpha: float = 4.0) -> Path:
    g = torch.Generator().manual_seed(seed)
    state = {}
    for name, (out, inp) in modules.items():
        state[f"{name}.lora_down.weight"] = torch.randn(4, inp, generator=g)
        state[f"{name}.lora_up.weight"] = torch.randn(out, 4, generator=g) * 0.5
        state[f"{name}.alpha"] = torch.tensor(alpha)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(state, str(path))
    return path


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("checkpoints")
    make_checkpoint(presets.load(BASE), folder)
    out = {"ckpt": folder}
    out["style"] = _kohya(folder / "loras" / "style.safetensors", {Q: (64, 64), K: (64, 64)})
    g = torch.Generator().manual_seed(3)
    unknown = {f"{Q}.lora_down.weight": torch.randn(4, 64, generator=g), f"{Q}.lora_up.weight": torch.zeros(64, 4),
               "lora_unet_input_blocks_3_1_transformer_blocks_0_attn9_to_q.lora_down.weight": torch.zeros(4, 64),
               "lora_unet_input_blocks_3_1_transformer_blocks_0_attn9_to_q.lora_up.weight": torch.zeros(64, 4)}
    save_file(unknown, str(folder / "unknown.safetensors"))
    out["unknown"] = folder / "unknown.safetensors"
    out["sd15"] = _kohya(folder / "sd15.safetensors",
                         {"lora_unet_down_blocks_0_attentions_0_transformer_blocks_0_attn2_to_k": (320, 768)})
    torch.save({"a": torch.zeros(1)}, folder / "style.pt")
    out["pickle"] = folder / "style.pt"
    torch.manual_seed(5)
    vae = build_engine(presets.load(BASE)).first_stage_model
    save_file({k: v.contiguous() for k, v in vae.state_dict().items()}, str(folder / "my_vae.safetensors"))
    out["vae"] = folder / "my_vae.safetensors"
    torch.manual_seed(6)
    sd21_vae = build_engine(presets.load(SD21)).first_stage_model
    small = {k: v.contiguous() for k, v in sd21_vae.state_dict().items() if not k.startswith("decoder.up.3")}
    save_file(small, str(folder / "bad_vae.safetensors"))
    out["bad_vae"] = folder / "bad_vae.safetensors"
    return out


@pytest.fixture
def gm(files: dict[str, Path], monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.setenv("GM_CHECKPOINTS", str(files["ckpt"]))
    monkeypatch.chdir(tmp_path)

    def invoke(*args: str):
        return CliRunner().invoke(app, [args[0], "--preset", BASE, "--device", "cpu", "--steps", "2", *args[1:]])

    return invoke


def _image(result) -> tuple[np.ndarray, str, dict]:
    assert result.exit_code == 0, result.output
    path = Path(result.stdout.split()[0])
    text = read_png_text(path)
    return np.asarray(Image.open(path).convert("RGB")), text["parameters"], json.loads(text["gm"])


def _api_pixels(model, prompt: str = "a fox") -> np.ndarray:
    (image,) = model.txt2img(prompt, steps=2)
    return np.asarray(image)


def test_lora_changes_the_image_and_equals_a_hand_merge(gm, files: dict[str, Path], monkeypatch) -> None:
    base, _, _ = _image(gm("txt2img", "a fox", "-o", "base"))
    lora, text, record = _image(gm("txt2img", "a fox", "--lora", f"{files['style']}:0.8", "-o", "lora"))
    assert not np.array_equal(base, lora)
    short = lora_hash(files["style"])
    assert f'Lora hashes: "style: {short}"' in text
    assert record["loras"] == [{"name": "style", "path": str(files["style"]), "scale": 0.8, "hash": short}]
    by_hand = gm_api.load(BASE, device="cpu")
    apply_loras(by_hand.engine, [(load_lora(files["style"]), 0.8)], "tiny")
    assert np.array_equal(_api_pixels(by_hand), lora)
    assert np.array_equal(_api_pixels(gm_api.load(BASE, device="cpu", loras=[("style", 0.8)])), lora)
    zero, _, _ = _image(gm("txt2img", "a fox", "--lora", "style:0", "-o", "zero"))
    assert np.array_equal(zero, base)


def test_prompt_tag_equals_the_option(gm, files: dict[str, Path]) -> None:
    option, _, _ = _image(gm("txt2img", "a fox", "--lora", "style:0.5", "-o", "a"))
    tagged, text, record = _image(gm("txt2img", "a fox <lora:style:0.5>", "-o", "b"))
    assert np.array_equal(option, tagged)
    assert text.startswith("a fox <lora:style:0.5>\n") and record["prompt"] == "a fox <lora:style:0.5>"
    assert record["loras"][0]["scale"] == 0.5 and "Lora hashes" in text
    model = gm_api.load(BASE, device="cpu", loras=["style:0.5"])
    assert np.array_equal(_api_pixels(model, "a fox <lora:style:0.5>"), option)
    with pytest.raises(Exception, match="was not loaded with"):
        model.txt2img("a fox <lora:style:0.7>", steps=2)


def _fails(result, code: int, needle: str) -> None:
    assert result.exit_code == code, (result.exit_code, result.output)
    errors = [line for line in result.stderr.splitlines() if line.startswith("gm: error:")]
    assert len(errors) == 1 and needle in errors[0], result.stderr
    assert "Traceback" not in result.output and result.stdout == ""


@pytest.mark.parametrize(("args", "code", "needle"), [
    (("--lora", "{unknown}"), 1, "attn9_to_q"),
    (("--lora", "{sd15}"), 1, "LoRA sd15 is for SD 1.x (cross-attention width 768)"),
    (("--lora", "{pickle}"), 1, "pickle file"),
    (("--lora", "nope:0.5"), 1, "LoRA nope not found"),
    (("--lora", "style:abc"), 2, "the scale 'abc' is not a number"),
    (("--vae", "{bad_vae}"), 1, "VAE bad_vae.safetensors (single-file layout) does not match"),
    (("--vae", "{ckpt}/none.safetensors"), 1, "VAE file not found"),
    (("--vae-tiling", "sometimes"), 2, "--vae-tiling must be auto, on or off"),
    (("--vae-dtype", "fp64"), 2, "--vae-dtype must be fp16, bf16 or fp32"),
])
def test_bad_addons_fail_before_the_checkpoint_loads(gm, files, monkeypatch, args, code, needle) -> None:
    loaded = []
    monkeypatch.setattr(loader, "load_engine", lambda *a, **k: loaded.append(a))
    given = [a.format(**{k: str(v) for k, v in files.items()}) for a in args]
    _fails(gm("txt2img", "a fox", *given, "-o", "out"), code, needle)
    assert loaded == [] and not any(Path("out").glob("*.png"))


def test_unknown_prompt_tag_is_one_line(gm) -> None:
    _fails(gm("txt2img", "a fox <lora:nope:0.5>", "-o", "out"), 1, "LoRA nope not found")
    _fails(gm("txt2img", "a fox <lyco:style:1>", "-o", "out"), 2, "--lora style")


def test_vae_override_changes_the_decode_and_is_recorded(gm, files: dict[str, Path]) -> None:
    base, _, _ = _image(gm("txt2img", "a fox", "-o", "base"))
    other, text, record = _image(gm("txt2img", "a fox", "--vae", str(files["vae"]), "-o", "vae"))
    assert not np.array_equal(base, other)
    assert "VAE: my_vae.safetensors" in text and "VAE hash: " in text
    assert record["vae"]["path"] == str(files["vae"]) and record["vae"]["layout"] == "single-file"
    model = gm_api.load(BASE, device="cpu", vae=files["vae"])
    assert np.array_equal(_api_pixels(model), other)


def test_vae_tiling_one_tile_exact_several_close(gm, monkeypatch) -> None:
    off, _, _ = _image(gm("txt2img", "a fox", "--vae-tiling", "off", "-o", "off"))
    covering, _, _ = _image(gm("txt2img", "a fox", "--vae-tiling", "on", "-o", "on"))
    assert np.array_equal(off, covering)  # 64 px image: one 64-latent tile covers it
    size = ("-W", "320", "-H", "192")  # a 40x24 latent: 3x2 tiles of 16 overlapping by 8, as the tiling tests
    wide, _, _ = _image(gm("txt2img", "a fox", *size, "-o", "wide"))
    monkeypatch.setattr(tiling, "DEFAULT_TILE", 16)
    monkeypatch.setattr(tiling, "DEFAULT_OVERLAP", 8)
    tiled, _, _ = _image(gm("txt2img", "a fox", *size, "--vae-tiling", "on", "-o", "tiled"))
    assert not np.array_equal(wide, tiled)
    diff = np.abs(wide.astype(np.float64) - tiled.astype(np.float64)).mean()
    assert diff <= 0.05 * float(wide.max() - wide.min())
    auto, _, _ = _image(gm("txt2img", "a fox", "-o", "auto"))  # auto on the CPU: no tiling
    assert np.array_equal(off, auto)


def test_tiled_encode_for_refine(gm, monkeypatch, tmp_path: Path) -> None:
    """`gm refine --vae-tiling on` encodes in tiles (how close a tiled encode is: test_vae_tiling);
    with one tile covering the image it is the plain encode exactly."""
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "in.png")

    def refine(*extra: str):
        args = ["refine", str(tmp_path / "in.png"), "--prompt", "a fox", "--preset", BASE, "--device", "cpu"]
        return _image(CliRunner().invoke(app, [*args, *extra]))[0]

    plain = refine("-o", "p")
    assert np.array_equal(refine("--vae-tiling", "on", "-o", "c"), plain)
    calls = []
    original = tiling.encode_tiled
    monkeypatch.setattr(tiling, "encode_tiled", lambda *a, **k: calls.append(a[1].shape) or original(*a, **k))
    monkeypatch.setattr(tiling, "DEFAULT_TILE", 4)  # 8x8 latent: 3x3 tiles of 4 overlapping by 2
    monkeypatch.setattr(tiling, "DEFAULT_OVERLAP", 2)
    assert not np.array_equal(refine("--vae-tiling", "on", "-o", "t"), plain)
    assert calls == [(1, 3, 64, 64)]


def test_vae_dtype_is_written_into_the_preset(gm) -> None:
    result = gm("txt2img", "a fox", "--vae-dtype", "bf16", "--show-preset")
    assert result.exit_code == 0, result.output
    assert 'vae_dtype = "bf16"' in result.stdout


def test_kept_engines_are_keyed_by_their_addons(files: dict[str, Path], monkeypatch) -> None:
    """A process that keeps engines loaded never hands a LoRA-merged engine to a run without it."""
    from gm.addons import Addons, info
    from gm.device import runtime_for

    monkeypatch.setenv("GM_CHECKPOINTS", str(files["ckpt"]))
    preset = presets.load(BASE)
    runtime = runtime_for(preset.perf, "cpu")
    loader.keep_loaded(True)
    try:
        plain = loader.load(preset, runtime)
        styled = loader.load(preset, runtime, addons=Addons((("style", 0.8),)))
        assert styled is not plain and styled is loader.load(preset, runtime, addons=Addons((("style", 0.8),)))
        assert loader.load(preset, runtime, addons=Addons((("style", 0.5),))) is not styled
        assert plain is loader.load(preset, runtime) and info(plain).loras == []
        assert info(styled).loras[0]["scale"] == 0.8
    finally:
        loader.keep_loaded(False)


def test_vae_dtype_fp16_with_an_external_vae(gm, files: dict[str, Path], monkeypatch) -> None:
    """--vae-dtype fp16 loads the --vae file in fp16 and decodes in fp16: close to the fp32 decode."""
    from gm.pipelines import common

    dtypes = []
    original = common.tiling.should_tile
    monkeypatch.setattr(common.tiling, "should_tile", lambda mode, h, w, dtype, *a, **k: dtypes.append(dtype) or
                        original(mode, h, w, dtype, *a, **k))
    full, _, _ = _image(gm("txt2img", "a fox", "--vae", str(files["vae"]), "-o", "a"))
    half, _, record = _image(gm("txt2img", "a fox", "--vae", str(files["vae"]), "--vae-dtype", "fp16", "-o", "b"))
    assert dtypes == [torch.float32, torch.float16]
    assert record["preset"]["perf"]["vae_dtype"] == "fp16" and record["vae"]["layout"] == "single-file"
    assert np.abs(full.astype(int) - half.astype(int)).max() <= 3
