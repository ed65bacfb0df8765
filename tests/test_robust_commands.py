"""A full disk during any write of any command: exit 1 with one "disk full" line, no temporary left,
and no file under its final name without its complete content (each one still decodes). Also SIGTERM
during `gm txt2img` (exit 143, no empty output folder) and the training grid's in-place update."""

from __future__ import annotations

import errno
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.io import files
from gm.io.media import read_video
from tests.tiny import make_checkpoint

HERE = Path(__file__).resolve().parent
PRESETS = HERE / "presets"
IMAGE = HERE / "data" / "test_image_256x144.png"
ROOT = HERE.parent


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    for name in ("tiny-sd21", "tiny-svd", "tiny-sv3d-u", "tiny-sv4d2"):
        make_checkpoint(presets.load(str(PRESETS / f"{name}.toml")), folder)
    return folder


@pytest.fixture(scope="module")
def frames_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("frames")
    for i in range(12):
        Image.fromarray(np.full((64, 64, 3), 20 * i, np.uint8)).save(folder / f"{i:03d}.png")
    return folder


def argv(command: str, out: Path, frames: Path) -> list[str]:
    p = lambda name: str(PRESETS / f"{name}.toml")  # noqa: E731
    video = ["--frames", "3", "--steps", "1"]
    return {
        "txt2img": ["txt2img", "a fox", "-p", p("tiny-sd21"), "--steps", "1"],
        "img2vid-mp4": ["img2vid", str(IMAGE), "-p", p("tiny-svd"), *video],
        "img2vid-gif": ["img2vid", str(IMAGE), "-p", p("tiny-svd"), *video, "-f", "gif"],
        "img2vid-frames": ["img2vid", str(IMAGE), "-p", p("tiny-svd"), *video, "-f", "frames"],
        "orbit": ["orbit", str(IMAGE), "-p", p("tiny-sv3d-u"), "--steps", "1", "--no-remove-bg"],
        "video4d": ["video4d", str(frames), "-p", p("tiny-sv4d2"), "--frames", "12", "--img-size", "64",
                    "--steps", "1"],
    }[command] + ["--device", "cpu", "-q", "-o", str(out)]


def fail_at_sync(monkeypatch: pytest.MonkeyPatch, nth: int) -> None:
    """The nth file that gm.io finishes is cut to half its size and its sync fails with ENOSPC (what
    a full disk does to the last buffered writes)."""
    real, calls = files._fsync, []

    def sync(path: Path) -> None:
        calls.append(path)
        if len(calls) == nth:
            with path.open("r+b") as fh:
                fh.truncate(path.stat().st_size // 2)
            raise OSError(errno.ENOSPC, "No space left on device", str(path))
        real(path)

    monkeypatch.setattr(files, "_fsync", sync)


def complete(path: Path) -> None:
    """Raises unless the file decodes to the end."""
    if path.suffix == ".mp4":
        assert len(read_video(path)) > 0
        return
    with Image.open(path) as img:
        for i in range(getattr(img, "n_frames", 1)):
            img.seek(i)
            img.load()


def check_nothing_half_written(out: Path) -> list[str]:
    left = sorted(p for p in out.rglob("*")) if out.exists() else []
    assert not [p for p in left if p.name.startswith(".") or ".tmp" in p.name], left
    for p in left:
        if p.is_file():
            complete(p)
    return [str(p.relative_to(out)) for p in left]


SWEEP = [  # (command, which finished file fails, what stays: complete files written before it)
    ("txt2img", 1, []),
    ("img2vid-mp4", 1, []),
    ("img2vid-mp4", 2, ["000000.mp4"]),  # the poster .jpg fails: the clip before it is whole
    ("img2vid-gif", 1, []),
    ("img2vid-frames", 2, []),  # the second frame of the folder: the whole folder goes
    ("orbit", 2, ["000000.mp4"]),  # the input view .png fails
    ("video4d", 1, []),
    ("video4d", 3, ["000000_process_input.mp4", "000000_v001.mp4"]),
]


@pytest.mark.parametrize(("command", "nth", "kept"), SWEEP, ids=[f"{c}-{n}" for c, n, _ in SWEEP])
def test_disk_full_leaves_nothing_half_written(command: str, nth: int, kept: list[str], checkpoints: Path,
                                               frames_folder: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("GM_CHECKPOINTS", str(checkpoints))
    out = tmp_path / "out"
    fail_at_sync(monkeypatch, nth)
    r = CliRunner().invoke(app, argv(command, out, frames_folder))
    assert r.exit_code == 1, r.output
    lines = r.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"gm: error: disk full: no space left on device in {out}/"), r.output
    assert check_nothing_half_written(out) == kept
    if not kept:
        assert not out.exists()  # the folder the run made is removed again


@pytest.mark.parametrize("writer", ["write_png", "write_mp4"])
def test_disk_full_inside_the_encoder(writer: str, checkpoints: Path, tmp_path: Path,
                                      monkeypatch: pytest.MonkeyPatch) -> None:
    """The writer itself fails half-way (bytes already on disk under the temporary name)."""
    import gm.outputs

    def half(path: Path, *args, **kwargs) -> None:
        path.write_bytes(b"\x89PNG\r\n" if writer == "write_png" else b"\x00\x00\x00\x18ftypisom")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(gm.outputs, writer, half)
    monkeypatch.setenv("GM_CHECKPOINTS", str(checkpoints))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, argv("txt2img" if writer == "write_png" else "img2vid-mp4", out, tmp_path))
    assert r.exit_code == 1 and r.output.startswith(f"gm: error: disk full: no space left on device in {out}/")
    assert len(r.output.strip().splitlines()) == 1 and not out.exists(), r.output


def test_training_grid_is_replaced_in_one_step(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from gm.train.samples import save_grid

    path = tmp_path / "run" / "samples.png"
    save_grid(np.zeros((4, 4, 3), np.uint8), path)
    save_grid(np.full((4, 4, 3), 200, np.uint8), path)  # the latest grid replaces the older one
    assert np.asarray(Image.open(path))[0, 0, 0] == 200
    fail_at_sync(monkeypatch, 1)
    with pytest.raises(Exception, match="disk full"):
        save_grid(np.full((4, 4, 3), 90, np.uint8), path)
    assert np.asarray(Image.open(path))[0, 0, 0] == 200  # the old grid stays whole
    assert sorted(p.name for p in path.parent.iterdir()) == ["samples.png"]


def test_sigterm_during_txt2img_exits_143_and_leaves_no_folder(checkpoints: Path, tmp_path: Path) -> None:
    out = tmp_path / "deep" / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1", "GM_CHECKPOINTS": str(checkpoints)}
    cmd = [sys.executable, "-c", "from commands.app import main; main()", "txt2img", "a fox", "-p",
           str(PRESETS / "tiny-sd21.toml"), "--steps", "400", "-n", "50", "--device", "cpu", "-q", "-o", str(out)]
    proc = subprocess.Popen(cmd, env=env, cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not out.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert out.is_dir(), "the output folder is made before loading"
    time.sleep(1.0)  # into loading or sampling
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 143, err
    assert "Traceback" not in err and not out.exists() and not out.parent.exists()


@pytest.mark.parametrize("command", ["img2vid-mp4", "orbit"])
def test_nan_weights_are_an_error_and_write_nothing(command: str, tmp_path: Path,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    from safetensors.torch import load_file, save_file

    name = "tiny-svd" if command.startswith("img2vid") else "tiny-sv3d-u"
    path = make_checkpoint(presets.load(str(PRESETS / f"{name}.toml")), tmp_path / "ckpt")
    state = load_file(str(path))
    key = next(k for k in state if k.startswith("model.diffusion_model.out."))
    state[key] = state[key].clone().fill_(float("nan"))
    save_file(state, str(path))
    monkeypatch.setenv("GM_CHECKPOINTS", str(tmp_path / "ckpt"))
    out = tmp_path / "out"
    r = CliRunner().invoke(app, argv(command, out, tmp_path))
    lines = r.output.strip().splitlines()
    assert r.exit_code == 1 and len(lines) == 1, r.output
    assert "produced NaN or infinite values, so nothing was written" in lines[0], r.output
    assert not out.exists()
