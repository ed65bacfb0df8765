"""gm as users install it: sdist -> wheel -> a fresh venv, run from a folder outside the clone.

The sdist is built from a copy of the package sources (not the clone itself, which would gain a
build/ folder), the wheel from the unpacked sdist (so the sdist is proven complete). The fresh
venv borrows the test venv's dependencies through a .pth line; such a path is appended after the
venv's own site-packages and its .pth files (the editable install of the clone) are not run, so
the gm that answers is the wheel's. PYTHONPATH is dropped for the same reason.
"""

from __future__ import annotations

import json
import os
import shutil
import site
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SOURCES = ("gm", "commands", "presets", "setup.py", "pyproject.toml", "README.md")
pytestmark = pytest.mark.slow


def _build(tmp: Path) -> Path:
    """sdist from a copy of the sources, then a wheel from the unpacked sdist; returns the wheel."""
    src = tmp / "src"
    src.mkdir()
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for name in SOURCES:
        (shutil.copytree if (ROOT / name).is_dir() else shutil.copy2)(ROOT / name, src / name, **(
            {"ignore": ignore} if (ROOT / name).is_dir() else {}))
    dist = tmp / "dist"
    py = "from setuptools import build_meta as b; import sys; print(getattr(b, sys.argv[1])(sys.argv[2]))"
    name = subprocess.run([sys.executable, "-c", py, "build_sdist", str(dist)], cwd=src, check=True,
                          capture_output=True, text=True).stdout.split()[-1]
    with tarfile.open(dist / name) as tar:
        tar.extractall(tmp / "sdist", filter="data")
    unpacked = next((tmp / "sdist").iterdir())
    wheel = subprocess.run([sys.executable, "-c", py, "build_wheel", str(dist)], cwd=unpacked, check=True,
                           capture_output=True, text=True).stdout.split()[-1]
    return dist / wheel


def clean_env() -> dict[str, str]:
    """The environment without what would let the clone's gm answer (or change what gm finds)."""
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "GM_PRESETS", "GM_CHECKPOINTS")}


def _venv(tmp: Path, wheel: Path) -> Path:
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    purelib = subprocess.run([str(venv / "bin" / "python"), "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                             check=True, capture_output=True, text=True).stdout.strip()
    subprocess.run([sys.executable, "-m", "pip", "--python", str(venv / "bin" / "python"), "install", "--quiet",
                    "--no-deps", "--no-index", str(wheel)], check=True, capture_output=True, env=clean_env())
    # After the install: pip would otherwise see the test venv's gm and call the wheel installed.
    (Path(purelib) / "gm_test_deps.pth").write_text("\n".join(site.getsitepackages()) + "\n")
    return venv


def test_wheel_installs_and_runs_outside_the_clone(tmp_path: Path) -> None:
    wheel = _build(tmp_path)
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/")[0] for n in names} == {"gm", wheel.name.split("-")[0] + "-" + wheel.name.split("-")[1] + ".dist-info"}
    shipped = {Path(n).name for n in names if n.startswith("gm/_presets/")}
    assert shipped == {p.name for p in (ROOT / "presets").glob("*.toml")}
    assert not [n for n in names if "__pycache__" in n]

    venv = _venv(tmp_path, wheel)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = clean_env()
    env.update(OMP_NUM_THREADS="1", HF_HUB_OFFLINE="1", HF_HOME=str(tmp_path / "hf"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
    gm = str(venv / "bin" / "gm")

    def run(*args: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run([gm, *args], cwd=work, env={**env, **extra}, capture_output=True, text=True, timeout=120)

    where = subprocess.run([str(venv / "bin" / "python"), "-c", "import gm, gm.commands; print(gm.__file__)"],
                           cwd=work, env=env, capture_output=True, text=True, check=True).stdout.strip()
    assert Path(where).is_relative_to(venv), where  # the wheel's gm, not the clone's
    helped = run("--help")
    assert helped.returncode == 0, helped.stderr
    for sub in ("txt2img", "refine", "turbo", "img2vid", "orbit", "video4d", "train", "detect-watermark", "download"):
        assert sub in helped.stdout
    shown = run("txt2img", "a fox", "--show-preset")
    assert shown.returncode == 0 and 'name = "sdxl-base-1.0"' in shown.stdout, shown.stderr
    listed = run("download", "--list", "--json")
    assert listed.returncode == 0, listed.stderr
    records = {r["name"]: r for r in map(json.loads, listed.stdout.splitlines())}
    release = {"sdxl-base-1.0", "sdxl-refiner-1.0", "sd-2.1", "sd-2.1-768", "sdxl-turbo", "sd-turbo", "svd", "svd-xt",
               "sv3d-u", "sv3d-p", "sv4d", "sv4d2", "mnist", "rembg-u2net"}
    assert release <= set(records), sorted(records)
    assert not [n for n, r in records.items() if r["present"]], [(n, r["path"]) for n, r in records.items() if r["present"]]

    # One real run: a tiny SD 2.1 preset file and its random checkpoint, made by the test venv.
    from gm import presets
    from tests.tiny import make_checkpoint

    preset = work / "tiny.toml"
    shutil.copy(ROOT / "tests" / "presets" / "tiny-sd21.toml", preset)
    ckpt = make_checkpoint(presets.load(str(preset)), tmp_path / "models" / "sub")
    made = run("txt2img", "a cat", "-p", str(preset), "--steps", "1", "-o", "out", "--quiet",
               GM_CHECKPOINTS=str(tmp_path / "models"))
    assert made.returncode == 0, made.stderr
    from PIL import Image

    out = [work / line for line in made.stdout.split()]
    assert len(out) == 1 and out[0].is_relative_to(work / "out") and Image.open(out[0]).size == (64, 64)
    assert ckpt.is_file()
