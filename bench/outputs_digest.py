"""Pixel digests of every tiny command's outputs, to show a refactor changed no output bit.

Runs txt2img (SDXL, SD 2.1, with a refiner), refine, turbo, img2vid, orbit (SV3D_u/p) and video4d
(SV4D, SV4D 2.0) in-process on the tiny test presets with fixed seeds (every run passes --seed: without
it a run draws a fresh one) and tiny random checkpoints, and
hashes the decoded pixels of every file written (PNG/JPG/GIF pixel arrays, decoded mp4 frames), not the
bytes, so a change of metadata schema does not count as a change of output.

    PYTHONPATH=$PWD .venv/bin/python bench/outputs_digest.py --write   # record bench/outputs_digest.json
    PYTHONPATH=$PWD .venv/bin/python bench/outputs_digest.py           # compare with it (exit 1 on a change)
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parent.parent
TESTS = ROOT / "tests"
PRESETS = TESTS / "presets"
RECORD = Path(__file__).resolve().parent / "outputs_digest.json"
CKPTS = ("tiny-sdxl-base", "tiny-sdxl-refiner", "tiny-sdxl-turbo", "tiny-sd21", "tiny-svd", "tiny-sv3d-u",
         "tiny-sv3d-p", "tiny-sv4d", "tiny-sv4d2")


def p(name: str) -> str:
    return str(PRESETS / f"{name}.toml")


def runs(work: Path) -> list[tuple[str, list[str]]]:
    """(name, argv) of every command run, in order (refine reads txt2img's first output)."""
    obj = work / "object.png"
    img = Image.new("RGBA", (120, 80), (0, 0, 0, 0))
    ImageDraw.Draw(img).ellipse((70, 10, 109, 69), fill=(200, 30, 30, 255))
    img.save(obj)
    still = str(TESTS / "data" / "test_image_256x144.png")
    common = ["--device", "cpu", "-q"]
    return [
        ("txt2img", ["txt2img", "a red fox", "-p", p("tiny-sdxl-base"), "--steps", "2", "--seed", "7", "-n", "2",
                     "-W", "256", "-H", "256"]),
        ("txt2img-sd21", ["txt2img", "a cat", "-p", p("tiny-sd21"), "--steps", "2", "--seed", "3"]),
        ("txt2img-refiner", ["txt2img", "a fox", "-p", p("tiny-sdxl-base"), "--refiner", p("tiny-sdxl-refiner"),
                             "--steps", "4", "--refiner-strength", "0.5", "--seed", "2"]),
        ("refine", ["refine", str(work / "txt2img" / "000000.png"), "-p", p("tiny-sdxl-refiner"), "--prompt", "a fox",
                    "--steps", "4", "--seed", "3", "--strength", "0.5"]),
        ("turbo", ["turbo", "a cat", "-p", p("tiny-sdxl-turbo"), "--steps", "2", "--seed", "4", "-W", "256",
                   "-H", "256"]),
        ("img2vid", ["img2vid", still, "-p", p("tiny-svd"), "--seed", "5"]),
        ("orbit-u", ["orbit", str(obj), "-p", p("tiny-sv3d-u"), "--steps", "1", "--seed", "6"]),
        ("orbit-p", ["orbit", str(obj), "-p", p("tiny-sv3d-p"), "--steps", "1", "--seed", "6", "--elevation", "20"]),
        ("video4d-sv4d2", ["video4d", str(TESTS / "data" / "camel_small.gif"), "-p", p("tiny-sv4d2"), "--frames", "12",
                           "--img-size", "64", "--steps", "1", "--seed", "7"]),
        ("video4d-sv4d", ["video4d", str(TESTS / "data" / "test_video1_small.mp4"), "-p", p("tiny-sv4d"),
                          "--sv3d-preset", p("tiny-sv3d-u"), "--img-size", "64", "--steps", "1", "--seed", "23"]),
    ], common


def pixel_digest(path: Path) -> str:
    from gm.io.media import read_video

    h = hashlib.sha256()
    if path.suffix == ".mp4" or path.suffix == ".gif":
        frames = read_video(path)
        h.update(str(len(frames)).encode())
        for frame in frames:
            h.update(np.asarray(frame.convert("RGB")).tobytes())
    else:
        with Image.open(path) as im:
            h.update(f"{im.mode}{im.size}".encode())
            h.update(np.asarray(im).tobytes())
    return h.hexdigest()


def collect() -> dict[str, str]:
    from typer.testing import CliRunner

    from commands.app import app
    from gm import presets
    sys.path.insert(0, str(ROOT))
    from tests.tiny import make_checkpoint

    torch.set_num_threads(1)
    digests: dict[str, str] = {}
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        for name in CKPTS:
            make_checkpoint(presets.load(p(name)), work / "ckpt")
        import os
        os.environ["GM_CHECKPOINTS"] = str(work / "ckpt")
        commands, common = runs(work)
        for name, argv in commands:
            out = work / name
            result = CliRunner().invoke(app, [*argv, *common, "--out", str(out)])
            if result.exit_code != 0:
                raise SystemExit(f"{name} failed ({result.exit_code}): {result.output}")
            for file in sorted(out.iterdir()):
                digests[f"{name}/{file.name}"] = pixel_digest(file)
            print(f"{name}: {len(list(out.iterdir()))} files", file=sys.stderr)
    return digests


def main() -> int:
    digests = collect()
    if "--write" in sys.argv:
        RECORD.write_text(json.dumps(digests, indent=1, sort_keys=True) + "\n")
        print(f"wrote {len(digests)} digests to {RECORD}")
        return 0
    old = json.loads(RECORD.read_text())
    changed = sorted(k for k in old.keys() | digests.keys() if old.get(k) != digests.get(k))
    for key in changed:
        print(f"changed: {key} ({old.get(key, 'missing')[:12]} -> {digests.get(key, 'missing')[:12]})")
    print(f"{len(digests)} files, {len(changed)} changed")
    return 1 if changed else 0


if __name__ == "__main__":
    raise SystemExit(main())
