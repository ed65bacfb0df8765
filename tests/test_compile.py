"""`--compile`: torch.compile captures every network and decoder the commands compile as one whole
graph (no graph break, so no host sync or Python fallback inside a sampling step), and a compiled
run writes the eager run's pixels.

The capture tests use dynamo's `fullgraph=True` (a graph break is an error) with the "eager"
backend, which runs the captured graph op by op: exact, and seconds instead of minutes. One slow
test runs the real default backend (inductor, which needs a C++ compiler on the CPU).
"""

from __future__ import annotations

import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.io.media import read_video
from tests.tiny import make_checkpoint

HERE = Path(__file__).parent
PRESETS = HERE / "presets"
IMAGE = HERE / "data" / "test_image_256x144.png"
GIF = HERE / "data" / "camel_small.gif"
TINY = ("tiny-sdxl-base", "tiny-svd", "tiny-sv4d2")


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    for name in TINY:
        make_checkpoint(presets.load(str(PRESETS / f"{name}.toml")), folder)
    return folder


@pytest.fixture
def strict_compile(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[str]]:
    """torch.compile as gm calls it, but any graph break raises; returns the names compiled."""
    compiled: list[str] = []
    real = torch.compile

    def strict(fn, **options):
        compiled.append(f"{type(fn.__self__).__name__}.{fn.__name__}")
        return real(fn, fullgraph=True, backend="eager", **options)

    monkeypatch.setattr(torch, "compile", strict)
    torch._dynamo.reset()  # no code cached by another test's backend
    yield compiled
    torch._dynamo.reset()


def run(checkpoints: Path, monkeypatch: pytest.MonkeyPatch, out: Path, *args: str) -> Path:
    monkeypatch.setenv("GM_CHECKPOINTS", str(checkpoints))
    result = CliRunner().invoke(app, [*args, "--seed", "3", "--out", str(out)])
    assert result.exit_code == 0, result.output
    cpu_note = "--compile on the CPU: the first step compiles for minutes (cached on disk" in result.output
    assert cpu_note == ("--compile" in args), result.output  # what freezing costs, said once
    return out


def pixels(folder: Path) -> dict[str, np.ndarray]:
    """Every output file of a run as uint8 pixels (videos: all frames stacked)."""
    found = {}
    for path in sorted(folder.iterdir()):
        if path.suffix == ".png":
            found[path.name] = np.asarray(Image.open(path).convert("RGB"))
        elif path.suffix == ".mp4":
            found[path.name] = np.stack([np.asarray(f) for f in read_video(path)])
    assert found
    return found


def assert_same_outputs(eager: Path, compiled: Path, tolerance: int = 0) -> None:
    a, b = pixels(eager), pixels(compiled)
    assert list(a) == list(b)
    for name in a:
        diff = np.abs(a[name].astype(int) - b[name].astype(int)).max()
        assert diff <= tolerance, f"{name}: compiled run differs from eager by {diff}"


COMMANDS = {
    "txt2img": ["txt2img", "a red cube", "-p", str(PRESETS / "tiny-sdxl-base.toml"), "-W", "64", "-H", "64",
                "--steps", "2", "--device", "cpu"],
    "img2vid": ["img2vid", str(IMAGE), "-p", str(PRESETS / "tiny-svd.toml"), "--steps", "2", "--device", "cpu"],
    "video4d": ["video4d", str(GIF), "-p", str(PRESETS / "tiny-sv4d2.toml"), "--frames", "12", "--img-size", "64",
                "--steps", "1", "--device", "cpu"],
}
COMPILED = {  # the denoiser network and the VAE decode of each command's engines
    "txt2img": ["UNet.forward", "Autoencoder.decode"],
    "img2vid": ["VideoUNet.forward", "VideoAutoencoder.decode"],
    "video4d": ["SV4DUNet.forward", "Autoencoder.decode"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_compile_captures_whole_graphs_and_keeps_the_numbers(
    command: str, checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strict_compile: list[str]
) -> None:
    eager = run(checkpoints, monkeypatch, tmp_path / "eager", *COMMANDS[command])
    assert strict_compile == []
    compiled = run(checkpoints, monkeypatch, tmp_path / "compiled", *COMMANDS[command], "--compile")
    assert strict_compile == COMPILED[command]
    assert_same_outputs(eager, compiled)


@pytest.mark.slow
@pytest.mark.skipif(shutil.which("c++") is None and shutil.which("g++") is None,
                    reason="inductor on the CPU needs a C++ compiler")
def test_inductor_compile_matches_eager(checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The real backend: generated kernels may reorder float sums, so one 8-bit level is allowed."""
    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor-cache"))
    torch._dynamo.reset()
    eager = run(checkpoints, monkeypatch, tmp_path / "eager", *COMMANDS["txt2img"])
    compiled = run(checkpoints, monkeypatch, tmp_path / "compiled", *COMMANDS["txt2img"], "--compile")
    torch._dynamo.reset()
    assert_same_outputs(eager, compiled, tolerance=1)


def test_cpu_compile_is_skipped_when_ram_cannot_hold_the_frozen_copy(
    checkpoints: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, strict_compile: list[str]
) -> None:
    monkeypatch.setattr("gm.device.available_ram", lambda: 1000)
    monkeypatch.setenv("GM_CHECKPOINTS", str(checkpoints))
    result = CliRunner().invoke(app, [*COMMANDS["txt2img"], "--compile", "--out", str(tmp_path / "out")])
    assert result.exit_code == 0, result.output
    assert strict_compile == []
    assert "warning: --compile skipped: on the CPU it keeps a second, packed copy" in result.output
    assert "only 0.0 GiB of RAM is available (running uncompiled)" in result.output
