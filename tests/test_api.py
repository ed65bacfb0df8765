"""The Python API (`gm.load` -> Model methods): the README's snippet runs on a tiny preset, returns the
very pixels the command writes, keeps the model loaded, and writes nothing unless asked."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

import gm
from commands.app import app
from gm import presets
from tests.tiny import make_checkpoint

HERE = Path(__file__).resolve().parent
BASE = str(HERE / "presets" / "tiny-sdxl-base.toml")
README = HERE.parent / "README.md"


@pytest.fixture(autouse=True)
def _setup(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    torch.set_num_threads(1)
    make_checkpoint(presets.load(BASE), tmp_path / "ckpt")
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "ckpt"))
    monkeypatch.chdir(tmp_path)


def readme_snippet() -> str:
    section = README.read_text().split("## Python API", 1)[1]
    return re.search(r"```python\n(.*?)```", section, re.S).group(1)


def test_readme_snippet_runs_on_a_tiny_preset(tmp_path: Path) -> None:
    code = readme_snippet().replace('"sdxl-base-1.0"', repr(BASE)).replace("steps=30", "steps=2")
    scope: dict = {}
    exec(compile(code, "README.md", "exec"), scope)
    images = scope["images"]
    assert len(images) == 2 and all(isinstance(i, Image.Image) and i.size == (64, 64) for i in images)
    saved = np.asarray(Image.open(tmp_path / "fox.png"))
    assert np.array_equal(saved, np.asarray(images[0]))
    assert sorted(p.name for p in (tmp_path / "outputs" / "api").iterdir()) == ["000000.png"]
    assert not (tmp_path / "outputs" / "txt2img").exists()  # nothing written without save=/out=


def test_api_pixels_equal_the_command_files_and_the_model_stays_loaded(tmp_path: Path) -> None:
    m = gm.load(BASE, device="cpu")
    engine = m.engine
    pil = m.txt2img("a red fox", steps=2, seed=5)
    tensors = m.txt2img("a red fox", steps=2, seed=5, tensors=True)
    assert m.engine is engine  # no reload between calls
    r = CliRunner().invoke(app, ["txt2img", "a red fox", "-p", BASE, "--steps", "2", "--seed", "5", "-q",
                                 "--device", "cpu", "-o", str(tmp_path / "cli")])
    assert r.exit_code == 0, r.output
    written = np.asarray(Image.open(r.stdout.strip()).convert("RGB"))
    assert np.array_equal(written, np.asarray(pil[0]))
    assert tensors[0].shape == (3, 64, 64)
    assert torch.equal((tensors[0] * 255).round().to(torch.uint8).permute(1, 2, 0), torch.from_numpy(written))
    assert not (tmp_path / "outputs").exists()


def test_video_families_return_frames_without_writing(tmp_path: Path) -> None:
    """img2vid, orbit and video4d on loaded tiny models: frames as PIL lists or tensors, no files."""
    for name in ("tiny-svd", "tiny-sv3d-u", "tiny-sv4d2"):
        make_checkpoint(presets.load(str(HERE / "presets" / f"{name}.toml")), tmp_path / "ckpt")
    still = HERE / "data" / "test_image_256x144.png"
    clips = gm.load(str(HERE / "presets" / "tiny-svd.toml"), device="cpu").img2vid([still, still], seed=3)
    assert len(clips) == 2 and len(clips[0]) == 4 and clips[0][0].size == (96, 64)
    assert any(np.asarray(a).tobytes() != np.asarray(b).tobytes() for a, b in zip(clips[0], clips[1]))  # seed + k
    orbit = gm.load(str(HERE / "presets" / "tiny-sv3d-u.toml"), device="cpu")
    frames = orbit.orbit(str(HERE / "data" / "test_image_256x144.png"), steps=1, remove_bg=False, tensors=True)
    assert frames[0].shape == (21, 3, 64, 64) and 0 <= float(frames[0].min()) <= float(frames[0].max()) <= 1
    m = gm.load(str(HERE / "presets" / "tiny-sv4d2.toml"), device="cpu")
    videos = m.video4d(HERE / "data" / "camel_small.gif", frames=12, size=64, steps=1, seed=7)
    assert sorted(videos) == ["grid", "process_input", "v001", "v002", "v003", "v004"]
    assert len(videos["v001"]) == 12 and videos["grid"][0].size == (192, 128)
    assert not (tmp_path / "outputs").exists()
