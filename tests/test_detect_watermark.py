"""`gm detect-watermark` end to end: images, gif/mp4 frames, folders, stdin, bad inputs, exit codes."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageFilter
from typer.testing import CliRunner

from commands.app import app
from gm.io import watermark as wm

ROOT = Path(__file__).resolve().parent.parent


def textured(seed: int, h: int = 320, w: int = 320) -> np.ndarray:
    """Blurred noise: holds the watermark well in both readings and survives video coding better."""
    rng = np.random.default_rng(seed)
    blurred = np.asarray(Image.fromarray((rng.random((h, w, 3)) * 255).astype(np.uint8))
                         .filter(ImageFilter.GaussianBlur(2)))
    return ((blurred.astype(np.float64) - blurred.mean()) * 4 + 128).clip(0, 255).astype(np.uint8)


def marked(rgb: np.ndarray) -> np.ndarray:
    return wm.to_uint8(wm.embed(rgb.astype(np.float32) / 255)[0])


@pytest.fixture
def files(tmp_path: Path) -> dict[str, Path]:
    out = {
        "marked": tmp_path / "marked.png",
        "plain": tmp_path / "plain.png",
        "small": tmp_path / "small.png",
        "corrupt": tmp_path / "corrupt.png",
        "text": tmp_path / "notes.jpg",
    }
    Image.fromarray(marked(textured(1))).save(out["marked"])
    Image.fromarray(textured(4)).save(out["plain"])  # 24/48 unmarked
    Image.fromarray(textured(3, 100, 120)).save(out["small"])
    png = out["marked"].read_bytes()
    out["corrupt"].write_bytes(png[: len(png) // 3])  # truncated mid-stream
    out["text"].write_text("this is not an image\n")
    return out


def invoke(args: list[str], stdin: str | None = None):
    return CliRunner().invoke(app, ["detect-watermark", *args], input=stdin, terminal_width=200)


def test_marked_and_plain_lines(files: dict[str, Path]) -> None:
    result = invoke([str(files["marked"]), str(files["plain"])])
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].startswith(f"{files['marked']}: very likely watermarked (")
    bits = int(lines[0].split("(")[1].split("/")[0])
    assert bits >= 36
    assert lines[1].startswith(f"{files['plain']}: no watermark detected (")
    assert int(lines[1].split("(")[1].split("/")[0]) <= 27


def test_json_and_require(files: dict[str, Path]) -> None:
    result = invoke(["--json", "--require", str(files["marked"]), str(files["plain"])])
    assert result.exit_code == 3
    records = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["watermarked"] for r in records] == [True, False]
    assert records[0]["verdict"] == "very likely" and records[0]["of"] == 48
    assert records[0]["bits"] == max(records[0]["bits_reference"], records[0]["bits_float"])
    ok = invoke(["--require", str(files["marked"])])
    assert ok.exit_code == 0
    strict = invoke(["--require", "--min-bits", "49", str(files["marked"])])
    assert strict.exit_code == 2  # out of range: usage error


def test_min_bits_threshold(files: dict[str, Path]) -> None:
    result = invoke(["--json", "--min-bits", "0", "--require", str(files["plain"])])
    assert result.exit_code == 0 and json.loads(result.stdout)["watermarked"] is True


def test_bad_inputs_are_listed_and_the_rest_processed(files: dict[str, Path], tmp_path: Path) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    (empty / "readme.txt").write_text("x")
    missing = tmp_path / "missing.png"
    args = [str(files["corrupt"]), str(files["text"]), str(files["small"]), str(empty), str(missing),
            str(files["marked"])]
    result = invoke(args)
    assert result.exit_code == 1
    out, err = result.stdout, result.stderr
    assert f"{files['marked']}: very likely watermarked" in out
    assert f"{files['small']}: too small for the watermark (120x100" in out
    assert f"{files['corrupt']}: not a readable image" in err
    assert f"{files['text']}: not a readable image" in err
    assert f"{empty}: no images or videos in this folder" in err
    assert f"{missing}: no such file or folder" in err
    assert "Traceback" not in result.output
    # A too-small image was read: exit 0 alone, 3 with --require (it carries no watermark).
    assert invoke([str(files["small"])]).exit_code == 0
    assert invoke(["--require", str(files["small"])]).exit_code == 3


def test_usage_errors() -> None:
    assert invoke([]).exit_code == 2
    assert invoke(["--frames", "0", "x.png"]).exit_code == 2


def test_folders_recursive_and_stdin(files: dict[str, Path], tmp_path: Path) -> None:
    nested = tmp_path / "a" / "b"
    nested.mkdir(parents=True)
    Image.fromarray(marked(textured(4))).save(nested / "deep.png")
    flat = invoke([str(tmp_path / "a")])
    assert flat.exit_code == 1 and "use -r" in flat.stderr
    deep = invoke(["-r", "--json", str(tmp_path / "a")])
    assert deep.exit_code == 0
    assert json.loads(deep.stdout)["path"] == str(nested / "deep.png")
    piped = invoke(["-"], stdin=f"{files['marked']}\n\n{nested / 'deep.png'}\n")
    assert piped.exit_code == 0
    assert len(piped.stdout.splitlines()) == 2 and "very likely" in piped.stdout


def test_gif_frames(tmp_path: Path) -> None:
    frames = [Image.fromarray(marked(textured(10 + i, 272, 272))) for i in range(4)]
    gif = tmp_path / "clip.gif"
    # A gif is palettised (256 colours): the mark must survive quantisation to count.
    frames[0].save(gif, save_all=True, append_images=frames[1:], duration=100, loop=0)
    result = invoke(["--json", str(gif)])
    record = json.loads(result.stdout)
    assert result.exit_code == 0
    assert record["type"] == "video" and record["frames"] == 4
    assert record["min_bits"] <= record["median_bits"] and record["bits"] == int(record["median_bits"])
    assert record["bits"] >= 30  # palette quantisation costs bits: measured median 35/48, min 33
    sampled = json.loads(invoke(["--json", "--frames", "2", str(gif)]).stdout)
    assert sampled["frames"] == 2


def test_mp4_frames(tmp_path: Path) -> None:
    from gm.io.media import write_mp4

    video = tmp_path / "clip.mp4"
    frames = [marked(textured(20 + i, 288, 320)) for i in range(6)]
    write_mp4(video, frames, fps=6)
    result = invoke(["--json", "--frames", "3", str(video)])
    assert result.exit_code == 0, result.output
    record = json.loads(result.stdout)
    assert record["frames"] == 3 and record["width"] == 320 and record["height"] == 288
    # H.264 yuv420p at imageio quality 8 keeps this mark (measured 48/48 on every frame).
    assert record["min_bits"] >= 36 and record["verdict"] == "very likely"
    everything = json.loads(invoke(["--json", str(video)]).stdout)
    assert everything["frames"] == 6
    broken = tmp_path / "broken.mp4"
    broken.write_bytes(b"\x00\x00\x00\x18ftypmp42" + b"\x00" * 100)
    bad = invoke([str(broken), str(video)])
    assert bad.exit_code == 1 and f"{broken}:" in bad.stderr and f"{video}:" in bad.stdout


def test_modes_read_as_rgb8(tmp_path: Path) -> None:
    rgb = marked(textured(30, 256, 256))
    rgba = tmp_path / "rgba.png"
    Image.fromarray(np.dstack([rgb, np.full((256, 256), 128, np.uint8)]), "RGBA").save(rgba)
    gray16 = tmp_path / "gray16.png"
    Image.fromarray(rgb[..., 0].astype(np.uint16) * 257).save(gray16)
    result = invoke(["--json", str(rgba), str(gray16)])
    assert result.exit_code == 0, result.output
    first, second = (json.loads(line) for line in result.stdout.splitlines())
    assert first["verdict"] == "very likely"
    assert second["bits"] is not None and second["width"] == 256


def test_detection_and_help_import_no_torch(files: dict[str, Path]) -> None:
    """`gm --help` and a whole detection run start without importing torch."""
    code = (
        "import sys\n"
        "from commands.app import app\n"
        "for argv in (['--help'], ['detect-watermark', '--help'], ['detect-watermark', sys.argv[1]]):\n"
        "    try:\n        app(argv)\n    except SystemExit:\n        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'CLEAN', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-X", "importtime", "-c", code, str(files["marked"])],
                          capture_output=True, text=True, timeout=120, cwd=ROOT)
    assert proc.stderr.strip().endswith("CLEAN"), proc.stderr[-2000:]
    assert "| torch\n" not in proc.stderr
    assert "very likely watermarked" in proc.stdout
