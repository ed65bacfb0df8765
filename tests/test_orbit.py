"""`gm orbit` (SV3D): camera arrays (docs/reference.md §2.2), object centring, end to end on tiny presets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from commands.app import app
from gm import presets
from gm.errors import InputError, UsageError
from gm.io.media import probe_video, video_tags
from gm.models.build import load_engine
from gm.pipelines import objects
from gm.pipelines.common import Runtime
from gm.pipelines.orbit import camera, default_azimuths, run_orbit
from gm.pipelines.video import VideoRequest, image_tensor
from tests.tiny import make_checkpoint

HERE = Path(__file__).parent
CPU = Runtime(device=torch.device("cpu"), dtype=torch.float32, vae_dtype=torch.float32)


def tiny(name: str) -> presets.Preset:
    return presets.load(str(HERE / "presets" / f"{name}.toml"))


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("ckpt")
    for name in ("tiny-sv3d-u", "tiny-sv3d-p"):
        make_checkpoint(tiny(name), folder)
    return folder


def object_image(size: tuple[int, int] = (120, 80), mode: str = "RGBA") -> Image.Image:
    """A red disc in the right part of a non-square canvas (transparent, or grey when RGB)."""
    img = Image.new("RGBA", size, (0, 0, 0, 0) if mode == "RGBA" else (128, 128, 128, 255))
    ImageDraw.Draw(img).ellipse((70, 10, 109, 69), fill=(200, 30, 30, 255))  # 40 x 60 box
    return img.convert(mode)


# ---------------------------------------------------------------- camera (§2.2)


def test_default_camera_matches_the_reference() -> None:
    az = default_azimuths(21)
    assert az[0] == pytest.approx(17.142857) and az[1] == pytest.approx(34.285714)
    assert az[-2] == pytest.approx(342.857143) and az[-1] == 0.0
    polars, azimuths = camera(21, 10.0)
    np.testing.assert_allclose(polars, np.full(21, np.deg2rad(80.0)))
    assert polars[0] == pytest.approx(1.3962634)
    np.testing.assert_allclose(azimuths, np.deg2rad(az))  # the last entry is 0: relative = absolute
    assert azimuths.dtype == np.float64


def test_camera_lists_are_relative_to_the_last_view() -> None:
    elev = np.linspace(-20, 40, 21)
    az = (np.arange(21) * 17.0 + 5.0) % 360  # last = 345
    polars, azimuths = camera(21, list(elev), list(az))
    np.testing.assert_allclose(polars, np.deg2rad(90.0 - elev))
    np.testing.assert_allclose(azimuths, np.deg2rad((az - 345.0) % 360))
    assert azimuths[-1] == 0.0 and azimuths[0] == pytest.approx(np.deg2rad(20.0))


@pytest.mark.parametrize(
    "elevations, azimuths, message",
    [
        ([10.0] * 20, None, "needs 21 values"),
        (10.0, [0.0] * 22, "needs 21 values"),
        (95.0, None, "outside [-90, 90]"),
        ([0.0] * 20 + [-91.0], None, "outside [-90, 90]"),
        (10.0, [0.0] * 20 + [360.0], "outside [0, 360)"),
        (10.0, [-1.0] + [0.0] * 20, "outside [0, 360)"),
    ],
)
def test_camera_validation(elevations, azimuths, message: str) -> None:
    with pytest.raises(UsageError, match=message.replace("[", r"\[").replace("(", r"\(").replace(")", r"\)")):
        camera(21, elevations, azimuths)


# ---------------------------------------------------------------- object preparation


def test_centre_object_on_non_square_rgba() -> None:
    img = object_image((120, 80))
    assert objects.object_bbox(np.asarray(img)) == (10, 70, 60, 40)  # top, left, height, width
    square = objects.centre_object(img)
    assert square.size == (120, 120)  # the longer side: the object always fits
    alpha = np.asarray(square)[..., 3]
    rows, cols = np.flatnonzero(alpha.any(1)), np.flatnonzero(alpha.any(0))
    assert (rows[0], rows[-1]) == (30, 89) and (cols[0], cols[-1]) == (40, 79)  # centred: 60 - 60//2, 60 - 40//2
    ratio = objects.centre_object(img, frame_ratio=0.5)
    assert ratio.size == (120, 120)  # max(60, 40) / 0.5
    tall = objects.centre_object(object_image((80, 120)).transpose(Image.Transpose.TRANSPOSE))
    assert tall.size == (120, 120)
    with pytest.raises(UsageError):
        objects.centre_object(img, frame_ratio=1.5)
    with pytest.raises(InputError, match="no object"):
        objects.centre_object(Image.new("RGBA", (10, 10)))


def test_prepare_object_white_background_and_segmentation() -> None:
    view = objects.prepare_object(object_image(), size=64)
    arr = np.asarray(view)
    assert view.mode == "RGB" and view.size == (64, 64)
    assert tuple(arr[0, 0]) == (255, 255, 255) and tuple(arr[32, 32]) == (200, 30, 30)
    calls = []

    def segment(rgba: Image.Image) -> Image.Image:
        calls.append(rgba.size)
        out = rgba.copy()
        out.putalpha(Image.fromarray((np.asarray(rgba)[..., 0] > 150).astype(np.uint8) * 255))
        return out

    rgb = object_image((1000, 800), mode="RGB")  # grey background, no alpha: removed
    view = objects.prepare_object(rgb, size=64, segment=segment)
    assert calls == [(768, 614)]  # thumbnail to 768 before segmenting, as the reference
    assert tuple(np.asarray(view)[0, 0]) == (255, 255, 255)
    objects.prepare_object(object_image(), size=64, segment=segment)
    assert len(calls) == 1  # RGBA input keeps its alpha
    kept = objects.prepare_object(rgb, size=64, remove_bg=False)
    assert tuple(np.asarray(kept)[32, 2]) == (128, 128, 128)  # opaque image = its own object


def test_composite_white_truncates_like_the_reference() -> None:
    rgba = Image.fromarray(np.array([[[100, 0, 255, 128]]], dtype=np.uint8), "RGBA")
    a = 128 / 255.0
    expected = [int((v / 255.0 * a + 1 - a) * 255) for v in (100, 0, 255)]
    assert list(np.asarray(objects.composite_white(rgba))[0, 0]) == expected


# ---------------------------------------------------------------- sampling and end to end


def test_run_orbit_puts_the_input_view_last(checkpoints: Path) -> None:
    preset = tiny("tiny-sv3d-p")
    engine = load_engine(preset, checkpoints / "tiny_sv3d_p.safetensors")
    view = objects.prepare_object(object_image(), size=64)
    req = VideoRequest(frames=21, steps=1, seed=3, cond_aug=1e-5, decoding_t=21)
    frames = run_orbit(engine, preset, CPU, view, req, elevations_deg=10.0)
    assert frames.shape == (21, 3, 64, 64)
    torch.testing.assert_close(frames[-1], (image_tensor(view)[0] + 1) / 2)
    other = run_orbit(engine, preset, CPU, view, req, elevations_deg=30.0)
    assert (frames[:-1] - other[:-1]).abs().max() > 1e-4  # the camera reaches the network


def orbit(checkpoints: Path, out: Path, image: Path, *extra: str, preset: str = "tiny-sv3d-p"):
    ckpt = checkpoints / f"{preset.replace('-', '_')}.safetensors"
    result = CliRunner().invoke(app, ["orbit", str(image), "--preset", str(HERE / "presets" / f"{preset}.toml"),
                                      "--checkpoint", str(ckpt), "--device", "cpu", "--out", str(out),
                                      "--steps", "1", *extra])
    return result.exit_code, result.stdout, result.stderr


def test_orbit_with_camera_lists_and_injected_segmentation(checkpoints: Path, tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    segmented = []

    def fake_rembg(rgba: Image.Image) -> Image.Image:
        segmented.append(rgba.size)
        out = rgba.copy()
        out.putalpha(Image.fromarray((np.asarray(rgba)[..., 0] > 150).astype(np.uint8) * 255))
        return out

    monkeypatch.setattr(objects, "rembg_segment", fake_rembg)
    src = tmp_path / "object.jpg"
    object_image((300, 200), mode="RGB").save(src)
    elevations = ",".join(str(e) for e in range(0, 42, 2))
    azimuths = ",".join(str(a) for a in range(5, 360, 17))
    code, out, err = orbit(checkpoints, tmp_path / "out", src, "--elevations", elevations, "--azimuths", azimuths)
    assert code == 0, err
    assert segmented == [(300, 200)]
    path = Path(out.strip())
    assert path.name == "000000.mp4" and (path.parent / "000000.png").is_file()
    meta = probe_video(path)
    assert meta["fps"] == 10.0 and meta["size"] == (64, 64)
    assert abs(meta["duration"] - 2.1) < 0.051  # 21 frames at 10 fps
    record = json.loads(video_tags(path)["comment"])
    assert record["command"] == "orbit" and record["frames"] == 21
    assert record["elevations_deg"] == [float(e) for e in range(0, 42, 2)]
    assert record["azimuths_deg"] == [float(a) for a in range(5, 360, 17)]
    with Image.open(path.parent / "000000.png") as view:
        assert view.size == (64, 64) and tuple(view.getpixel((0, 0))) == (255, 255, 255)


def test_orbit_u_gif_with_rgba_input(checkpoints: Path, tmp_path: Path) -> None:
    src = tmp_path / "object.png"
    object_image().save(src)
    code, out, err = orbit(checkpoints, tmp_path, src, "--format", "gif", "--elevation", "20", preset="tiny-sv3d-u")
    assert code == 0, err
    assert "no camera input" in err
    with Image.open(out.strip()) as gif:
        assert gif.n_frames == 21 and gif.size == (64, 64)


def one_line_error(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("gm: error:"), err
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--elevations", "1,2,3"], "--elevations needs 21 values"),
        (["--azimuths", ",".join(["10"] * 20 + ["360"])], "azimuth 360 is outside [0, 360)"),
        (["--elevation", "100"], "elevation 100 is outside"),
        (["--elevations", "a,b"], "expects numbers"),
        (["--elevation", "5", "--elevations", ",".join(["5"] * 21)], "not both"),
        (["--image-frame-ratio", "2"], "--image-frame-ratio must be in (0, 1]"),
        (["--preset", "svd"], "not an orbit one"),
    ],
)
def test_orbit_bad_inputs_exit_2(checkpoints: Path, tmp_path: Path, args: list[str], message: str) -> None:
    src = tmp_path / "object.png"
    object_image().save(src)
    if args[0] == "--preset":
        result = CliRunner().invoke(app, ["orbit", str(src), *args, "--device", "cpu"])
        code, err = result.exit_code, result.stderr
    else:
        code, _, err = orbit(checkpoints, tmp_path / "out", src, *args)
    assert code == 2
    assert message in one_line_error(err)
    assert not (tmp_path / "out").exists()


def test_orbit_video_input_is_named_as_such(checkpoints: Path, tmp_path: Path) -> None:
    code, out, err = orbit(checkpoints, tmp_path / "out", HERE / "data" / "test_video1_small.mp4")
    assert code == 1 and out == ""
    line = one_line_error(err)
    assert "is a video, not an image" in line and "img2vid" not in line and "gm video4d" in line
    assert not (tmp_path / "out").exists()
