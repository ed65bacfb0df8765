"""`gm video4d`: camera maths against REFERENCE §2.5/§2.6, window layout, input errors, and end to
end runs of tiny SV4D / SV4D 2.0 presets on small inputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.io.media import read_video, video_tags
from gm.pipelines.video4d_camera import (
    diagonal_views,
    roll_orbit,
    sv4d2_camera,
    sv4d2_window_starts,
    sv4d_anchor_frames,
    sv4d_camera,
    sv4d_dense_starts,
)
from tests.tiny import make_checkpoint

HERE = Path(__file__).parent
DATA = HERE / "data"
PRESETS = HERE / "presets"


def test_sv4d_novel_view_azimuths() -> None:
    polars, azimuths = sv4d_camera(10.0)
    expected = [34.29, 85.71, 120.0, 154.29, 205.71, 240.0, 274.29, 325.71]
    assert np.allclose(np.rad2deg(azimuths), expected, atol=0.01)
    assert np.allclose(np.rad2deg(polars), 80.0)


def test_roll_puts_the_input_first() -> None:
    orbit = np.arange(21)
    assert roll_orbit(orbit)[0] == 20 and roll_orbit(orbit)[1] == 0


@pytest.mark.parametrize("views, expected", [
    (4, [60, 120, 180, 240]),
    (8, [30, 75, 120, 165, 210, 255, 300, 330]),
])
def test_sv4d2_default_azimuths(views: int, expected: list[int]) -> None:
    polars, azimuths = sv4d2_camera(views)
    assert np.allclose(np.rad2deg(azimuths), expected)
    assert np.allclose(polars, np.pi / 2)


def test_sv4d2_elevations_are_relative_to_the_input() -> None:
    polars, _ = sv4d2_camera(4, [10.0, 10.0, 20.0, 0.0, 10.0])
    assert np.allclose(np.rad2deg(polars), [90.0, 80.0, 100.0, 90.0])


def test_windows() -> None:
    assert sv4d_anchor_frames(21, 5) == [4, 8, 12, 16, 20]
    assert sv4d_dense_starts(21, 5) == [0, 4, 8, 12, 16]
    assert sv4d2_window_starts(21, 12, 4) == [0, 9]
    assert sv4d2_window_starts(21, 5, 8) == [0, 4, 8, 12, 16]
    assert diagonal_views(21, 9)[:6] == [0, 0, 1, 1, 2, 2] and diagonal_views(21, 9)[-3:] == [0, 0, 1]


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    for name in ("tiny-sv4d", "tiny-sv4d2", "tiny-sv4d2-8views", "tiny-sv3d-u"):
        make_checkpoint(presets.load(str(PRESETS / f"{name}.toml")), folder)
    return folder


def gm(args: list[str], checkpoints: Path, monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setenv("GM_CHECKPOINTS", str(checkpoints))
    return CliRunner().invoke(app, ["video4d", *args, "-q"])


@pytest.mark.slow
def test_sv4d2_end_to_end_frame_folder(tmp_path: Path, checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    frames = tmp_path / "frames"
    frames.mkdir()
    for i, frame in enumerate(read_video(DATA / "camel_small.gif")):
        frame.save(frames / f"{i:03d}.png")
    out = tmp_path / "out"
    args = [str(frames), "--preset", str(PRESETS / "tiny-sv4d2.toml"), "--frames", "12", "--img-size", "64",
            "--steps", "1", "--seed", "7", "--out", str(out)]
    result = gm(args, checkpoints, monkeypatch)
    assert result.exit_code == 0, result.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["000000_grid.mp4", "000000_process_input.mp4"] + [f"000000_v00{v}.mp4" for v in range(1, 5)]
    assert len(read_video(out / "000000_v001.mp4")) == 12
    assert read_video(out / "000000_grid.mp4")[0].size == (192, 128)  # 3 x 2 tiles of 64
    record = json.loads(video_tags(out / "000000_v003.mp4")["comment"])
    assert record["request"]["seed"] == 7 and record["preset"] == "tiny-sv4d2"
    again = gm(args, checkpoints, monkeypatch)  # never overwritten: the next number
    assert again.exit_code == 0 and (out / "000001_v004.mp4").is_file()


@pytest.mark.slow
def test_sv4d_end_to_end_mp4(tmp_path: Path, checkpoints: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "out"
    result = gm([str(DATA / "test_video1_small.mp4"), "--preset", str(PRESETS / "tiny-sv4d.toml"),
                 "--sv3d-preset", str(PRESETS / "tiny-sv3d-u.toml"), "--img-size", "64", "--steps", "1",
                 "--out", str(out)], checkpoints, monkeypatch)
    assert result.exit_code == 0, result.output
    tags = ["process_input", "t000", *[f"v{v:03d}" for v in range(1, 9)], "diag", "grid"]
    assert sorted(p.name for p in out.iterdir()) == sorted(f"000000_{t}.mp4" for t in tags)
    assert len(read_video(out / "000000_t000.mp4")) == 9
    assert len(read_video(out / "000000_v008.mp4")) == 21
    assert len(read_video(out / "000000_diag.mp4")) == 21


@pytest.mark.parametrize("make_input, extra, message, code", [
    (lambda d: DATA / "camel_small.gif", [], "12 frames, the model needs 21", 1),
    (lambda d: (d / "notes.txt").write_text("x") and d / "notes.txt", [], "not a video", 1),
    (lambda d: (d / "empty").mkdir() or d / "empty", [], "no frames", 1),
    (lambda d: d / "nothing-*.png", [], "matches no", 1),
    (lambda d: DATA / "camel_small.gif", ["--azimuths", "0,10,20"], "--azimuths needs 21 values", 2),
    (lambda d: DATA / "camel_small.gif", ["--img-size", "100"], "multiple of 64", 2),
])
def test_bad_inputs(tmp_path: Path, checkpoints: Path, monkeypatch: pytest.MonkeyPatch,
                    make_input, extra: list[str], message: str, code: int) -> None:
    source = make_input(tmp_path)
    result = gm([str(source), "--preset", str(PRESETS / "tiny-sv4d.toml"), *extra], checkpoints, monkeypatch)
    assert result.exit_code == code, result.output
    assert message in result.output
    assert len(result.output.strip().splitlines()) <= 2  # one line (may wrap once)


def test_pad_ping_pongs_a_short_input(tmp_path: Path) -> None:
    from gm.pipelines.video4d_input import read_frames

    frames = read_frames(str(DATA / "camel_small.gif"), 21, pad=True)
    assert len(frames) == 21
    assert np.array_equal(np.asarray(frames[12]), np.asarray(frames[11]))  # 0..11, then 11..0


def test_preprocess_non_square_centres_the_object() -> None:
    from gm.pipelines.video4d_input import preprocess

    image = Image.new("RGB", (120, 60), "white")
    image.paste((255, 0, 0), (50, 20, 70, 40))  # a centred red square
    out = np.asarray(preprocess([image], 64, 0.5)[0])
    red = np.argwhere((out[..., 0] > 200) & (out[..., 1] < 80))
    assert abs(red.mean(axis=0) - 31.5).max() < 2  # centred in the square output
