"""Outputs name the file actually loaded (A1111 `Model` / `Model hash`, the gm JSON `checkpoint`),
hashed once; `--checkpoint FILE` without -p picks the preset from the file's header; background
removal without its model fails at once, before any model loads."""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from pathlib import Path

import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import gm
from commands.app import app
from gm import loader, presets, provenance
from gm.io.media import read_png_text, video_tags
from tests.test_detect import header_of, write_header_only
from tests.tiny import make_checkpoint

PRESETS = Path(__file__).resolve().parent / "presets"
BASE = str(PRESETS / "tiny-sdxl-base.toml")
SV3D = str(PRESETS / "tiny-sv3d-u.toml")


@pytest.fixture(autouse=True)
def _one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def finetune(tmp_path: Path) -> Path:
    """The tiny SDXL checkpoint under a name no preset knows, as a downloaded fine-tune would be."""
    made = make_checkpoint(presets.load(BASE), tmp_path / "made")
    path = tmp_path / "models" / "finetune.safetensors"
    path.parent.mkdir()
    shutil.move(made, path)
    return path


def invoke(*args: str):
    return CliRunner().invoke(app, list(args))


def no_loading(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(loader, "load_engine", lambda *a, **k: pytest.fail("a model was loaded"))


def test_png_names_the_file_used_and_hashes_it_once(finetune: Path, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    sha = hashlib.sha256(finetune.read_bytes()).hexdigest()
    out = tmp_path / "out"
    hashers = []
    monkeypatch.setattr(provenance.hashlib, "sha256", lambda *a: hashers.append(hashlib.new("sha256", *a)) or hashers[-1])
    r = invoke("txt2img", "a fox", "-p", BASE, "--checkpoint", str(finetune), "--steps", "1", "-n", "2", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert len(hashers) == 1  # one hash for the run, not one per image
    for path in r.stdout.split():
        text = read_png_text(Path(path))
        assert text["parameters"].endswith(f"Model: finetune, Model hash: {sha[:10]}")
        assert json.loads(text["gm"])["checkpoint"] == {"path": str(finetune.resolve()), "name": "finetune.safetensors",
                                                        "sha256_10": sha[:10]}
    cache = json.loads(provenance.cache_path().read_text())
    assert cache[str(finetune.resolve())]["sha256"] == sha
    # Second run, by name through GM_CHECKPOINTS: the cached digest, the file is not hashed again.
    monkeypatch.setenv("GM_CHECKPOINTS", str(finetune.parent))
    monkeypatch.setattr(provenance.hashlib, "sha256", lambda *a: pytest.fail("hashed again"))
    r = invoke("txt2img", "a fox", "-p", BASE, "--checkpoint", "finetune", "--steps", "1", "-o", str(out))
    assert r.exit_code == 0, r.output
    assert f"Model hash: {sha[:10]}" in read_png_text(Path(r.stdout.strip()))["parameters"]


def test_python_api_results_carry_the_record(finetune: Path) -> None:
    sha10 = hashlib.sha256(finetune.read_bytes()).hexdigest()[:10]
    model = gm.load(BASE, checkpoint=finetune)
    assert model.source == {"path": str(finetune.resolve()), "name": "finetune.safetensors", "sha256_10": sha10}
    (image,) = model.txt2img("a fox", steps=1)
    assert image.info["parameters"].endswith(f"Model: finetune, Model hash: {sha10}")
    assert json.loads(image.info["gm"])["checkpoint"]["sha256_10"] == sha10


def test_orbit_clip_records_its_checkpoint(tmp_path: Path) -> None:
    ckpt = make_checkpoint(presets.load(SV3D), tmp_path / "ckpt")
    src = tmp_path / "object.png"
    image = Image.new("RGBA", (64, 64), (0, 0, 0, 0))  # its own alpha: no background removal
    image.paste((200, 30, 30, 255), (16, 16, 48, 48))
    image.save(src)
    r = invoke("orbit", str(src), "-p", SV3D, "--checkpoint", str(ckpt), "--device", "cpu", "--steps", "1",
               "--out", str(tmp_path / "out"))
    assert r.exit_code == 0, r.output
    record = json.loads(video_tags(Path(r.stdout.strip()))["comment"])
    assert record["checkpoint"] == provenance.file_record(ckpt)
    assert record["checkpoint"]["sha256_10"] == hashlib.sha256(ckpt.read_bytes()).hexdigest()[:10]


def test_wrong_family_file_names_the_right_command(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_header_only(tmp_path / "my_motion_model.safetensors", header_of("svd-xt"))
    no_loading(monkeypatch)
    out = tmp_path / "out"
    r = invoke("txt2img", "a fox", "--checkpoint", str(path), "-o", str(out))
    assert r.exit_code == 2
    assert r.stderr.splitlines() == ["gm: error: my_motion_model.safetensors is an SVD checkpoint: use gm img2vid "
                                     "-p svd-xt"]
    assert not out.exists()
    r = invoke("img2vid", str(tmp_path / "x.png"), "--checkpoint", str(write_header_only(
        tmp_path / "cars.safetensors", header_of("sdxl-base"))))
    assert r.exit_code == 2 and "is an SDXL base checkpoint: use gm txt2img -p sdxl-base-1.0" in r.stderr


def test_detected_preset_is_said_then_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_header_only(tmp_path / "juggernaut_v9.safetensors", header_of("sdxl-base"))
    no_loading(monkeypatch)
    r = invoke("txt2img", "a fox", "--checkpoint", str(path), "--show-preset")
    assert r.exit_code == 0, r.output
    assert r.stderr.startswith("juggernaut_v9.safetensors: SDXL base checkpoint: preset sdxl-base-1.0 (assumed; "
                               "same tensors as sdxl-base-0.9, sdxl-turbo; a distilled 1-4 step model needs -p sdxl-turbo)")
    assert 'name = "sdxl-base-1.0"' in r.stdout
    # The picked preset runs as if -p had been given: here its checks stop the run before loading.
    r = invoke("txt2img", "a fox", "--checkpoint", str(path), "--steps", "0", "-o", str(tmp_path / "out"))
    assert r.exit_code == 2
    first, second = r.stderr.splitlines()[:2]
    assert first.startswith("juggernaut_v9.safetensors: SDXL base checkpoint: preset sdxl-base-1.0")
    assert second.startswith("gm: error:") and "steps" in second
    # gm turbo assumes the turbo preset of the same tensors; -p given: no detection at all.
    r = invoke("turbo", "a fox", "--checkpoint", str(path), "--show-preset")
    assert r.exit_code == 0 and 'name = "sdxl-turbo"' in r.stdout and "preset sdxl-turbo (assumed" in r.stderr
    r = invoke("txt2img", "a fox", "--checkpoint", str(path), "-p", "sd-2.1", "--show-preset")
    assert r.exit_code == 0 and 'name = "sd-2.1"' in r.stdout and "checkpoint:" not in r.stderr


def test_sd21_note_says_what_was_assumed(tmp_path: Path) -> None:
    path = write_header_only(tmp_path / "my_sd2_model.safetensors", header_of("sd-2.1"), ldm=True)
    r = invoke("txt2img", "a fox", "--checkpoint", str(path), "--show-preset")
    assert r.exit_code == 0, r.output
    assert 'name = "sd-2.1-768"' in r.stdout
    assert "preset sd-2.1-768 (assumed" in r.stderr and "pass -p sd-2.1" in r.stderr


def test_orbit_without_the_rembg_model_fails_at_once(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("REMBG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2net"))  # empty: no model
    ckpt = make_checkpoint(presets.load(SV3D), tmp_path / "ckpt")
    no_loading(monkeypatch)
    src = tmp_path / "object.jpg"
    Image.new("RGB", (64, 64), (128, 128, 128)).save(src)  # opaque: background removal is on
    out = tmp_path / "out"
    start = time.perf_counter()
    r = invoke("orbit", str(src), "-p", SV3D, "--checkpoint", str(ckpt), "--device", "cpu", "--out", str(out))
    assert time.perf_counter() - start < 2.0
    assert r.exit_code == 1
    assert "background removal needs rembg's u2net model" in r.stderr
    assert "run `gm download rembg-u2net` once" in r.stderr
    assert not out.exists() or not any(out.iterdir())


def test_training_weights_are_found_where_gm_download_put_them(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    from gm.errors import CheckpointError
    from gm.train.model import _weights

    preset = presets.load("imagenet-f8-cond")
    folder = tmp_path / "models" / "vae"
    folder.mkdir(parents=True)
    (folder / "sdxl_vae.safetensors").write_bytes(b"x")
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CheckpointError, match="run gm download sdxl-vae"):
        _weights(preset, "vae_checkpoint", "checkpoints/sdxl_vae.safetensors", "VAE", "sdxl-vae")
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "models"))
    found = _weights(preset, "vae_checkpoint", "checkpoints/sdxl_vae.safetensors", "VAE", "sdxl-vae")
    assert found.resolve() == (folder / "sdxl_vae.safetensors").resolve()


def test_training_threads_follow_the_free_cores(monkeypatch: pytest.MonkeyPatch) -> None:
    from gm import threads
    from gm.train.loop import set_threads

    monkeypatch.setattr(threads, "usable_cores", lambda: 4)
    monkeypatch.setattr(threads, "busy_cores", lambda: 2.6)
    before = torch.get_num_threads()
    try:
        monkeypatch.setenv("OMP_NUM_THREADS", "1")  # the user's choice stands
        set_threads(0, torch.device("cpu"))
        assert torch.get_num_threads() == before
        monkeypatch.delenv("OMP_NUM_THREADS")
        set_threads(0, torch.device("cpu"))
        assert torch.get_num_threads() == 1  # 4 cores, ~3 busy
        monkeypatch.setattr(threads, "busy_cores", lambda: 0.0)
        set_threads(0, torch.device("cpu"))
        assert torch.get_num_threads() == 4
        set_threads(1, torch.device("cpu"))  # digits-demo pins one
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(before)
    assert presets.load("digits-demo").to_dict()["train"]["num_threads"] == 1


def test_video4d_records_both_files(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from types import SimpleNamespace

    from gm.pipelines.video4d import files_used

    sv4d, sv3d = presets.load(str(PRESETS / "tiny-sv4d.toml")), presets.load(SV3D)
    made = {p.name: make_checkpoint(p, tmp_path / "ckpt") for p in (sv4d, sv3d)}
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "ckpt"))
    used = files_used(sv4d, SimpleNamespace(sv3d_preset=SV3D))  # type: ignore[arg-type]
    assert used == {"checkpoint": provenance.file_record(made["tiny-sv4d"]),
                    "sv3d_checkpoint": provenance.file_record(made["tiny-sv3d-u"])}
    assert used["sv3d_checkpoint"]["sha256_10"] == hashlib.sha256(made["tiny-sv3d-u"].read_bytes()).hexdigest()[:10]
