"""gm.errors.explain and friends on real failures: each nameable cause becomes one line with a fix."""

from __future__ import annotations

import errno
import json
import os
import signal
import struct
import subprocess
import sys
import textwrap
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gm import presets
from gm.errors import (
    CheckpointError,
    DiskFullError,
    GmError,
    InputError,
    StdoutClosed,
    Terminated,
    check_finite,
    explain,
)
from gm.io import media

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}


def _caught(fn) -> BaseException:
    try:
        fn()
    except BaseException as err:  # noqa: BLE001 - the test looks at what came out
        return err
    raise AssertionError("no error")


def test_permission_denied_names_the_file() -> None:
    """A chmod 000 checkpoint, read by an unprivileged process (root reads anything: drop to nobody)."""
    import shutil
    import tempfile

    folder = Path(tempfile.mkdtemp(dir="/tmp" if Path("/tmp").is_dir() else None))  # a folder nobody may enter
    folder.chmod(0o755)
    secret = folder / "model.safetensors"
    secret.write_bytes(b"x" * 16)
    secret.chmod(0)
    try:
        _check_permission_denied(secret)
    finally:
        shutil.rmtree(folder)


def _check_permission_denied(secret: Path) -> None:
    script = textwrap.dedent(f"""
        import os
        from gm.errors import explain  # imported first: the interpreter may live where nobody can read
        if os.geteuid() == 0:
            os.setgid(65534); os.setuid(65534)
        try:
            open({str(secret)!r}, "rb")
        except OSError as err:
            print(explain(err))
    """)
    out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.stdout.strip() == f"{secret}: permission denied (check its permissions (ls -l {secret}; chmod u+rw {secret}))", out.stderr


def test_unwritable_and_read_only_folders(tmp_path: Path) -> None:
    err = explain(PermissionError(errno.EACCES, "Permission denied", str(tmp_path)))
    assert str(err).startswith(f"{tmp_path}: permission denied (cannot write in this folder)")
    assert f"chmod u+w {tmp_path}" in str(err)
    err = explain(OSError(errno.EROFS, "Read-only file system", "/ro/out"))
    assert str(err) == "/ro/out: read-only file system (write somewhere else (e.g. --out in your home folder))"
    assert str(explain(_caught(lambda: open(tmp_path / "missing.png", "rb")))).startswith(
        f"{tmp_path / 'missing.png'}: no such file or folder")


def test_disk_full_names_the_folder_and_space(tmp_path: Path) -> None:
    target = tmp_path / "out.bin"

    def write() -> None:
        with open(target, "wb") as f:  # noqa: F841 - the open file in the frame names the folder
            raise OSError(errno.ENOSPC, "No space left on device")

    err = explain(_caught(write))
    assert isinstance(err, DiskFullError) and err.exit_code == 1
    assert str(err).startswith(f"disk full: no space left on device in {tmp_path}/ (")
    assert " free)" in str(err) and "nothing was left half-written" in str(err)
    from gm.errors import disk_full

    assert "about 2.0 MiB needed" in str(disk_full(tmp_path, 2 * 2**20))


def test_preset_not_utf8_names_the_file(tmp_path: Path) -> None:
    bad = tmp_path / "latin.toml"
    bad.write_bytes('name = "caf\xe9"\nfamily = "train"\n'.encode("latin-1"))
    err = explain(_caught(lambda: presets.load(str(bad))))
    assert isinstance(err, InputError)
    assert str(err) == f"{bad}: preset file is not UTF-8 text (byte 0xe9 at offset 11) (save it as UTF-8)"


def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares width x height (1-bit) and holds no pixel data: enough for Pillow's guard."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"")) + chunk(b"IEND", b"")


def test_decompression_bomb_limit_and_raising_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bomb = tmp_path / "huge.png"
    bomb.write_bytes(_png_header(20000, 20000))
    saved = Image.MAX_IMAGE_PIXELS
    try:
        with pytest.raises(InputError) as info:
            media.open_image(bomb)
        assert str(info.value) == (f"{bomb}: image of 400000000 pixels is over the limit of 178956970 pixels "
                                   "(Pillow's decompression-bomb guard) (if you trust the file, raise the limit "
                                   "deliberately: GM_MAX_IMAGE_PIXELS=400000000 gm ...)")
        err = explain(_caught(lambda: Image.open(bomb)))  # any other reader's bomb: the same line
        assert str(err).startswith(f"{bomb}: image of 400000000 pixels is over the limit")
        monkeypatch.setenv("GM_MAX_IMAGE_PIXELS", "400000000")  # raised deliberately: the guard lets it through
        media.apply_pixel_limit()
        with pytest.raises(InputError, match="not a readable image"):  # (the fake file has no pixels)
            media.open_image(bomb)
        monkeypatch.setenv("GM_MAX_IMAGE_PIXELS", "1000")
        media.apply_pixel_limit()
        small = tmp_path / "small.png"
        Image.new("RGB", (40, 40)).save(small)
        with pytest.raises(InputError, match=r"1600 pixels is over the limit of 1000 pixels"):
            media.open_image(small)
        monkeypatch.setenv("GM_MAX_IMAGE_PIXELS", "lots")
        with pytest.raises(GmError, match="GM_MAX_IMAGE_PIXELS='lots': expected a whole number"):
            media.apply_pixel_limit()
    finally:
        Image.MAX_IMAGE_PIXELS = saved


def test_safetensors_header_json_but_not_tensor_table(tmp_path: Path) -> None:
    from gm.checkpoint import read_header

    path = tmp_path / "odd.safetensors"
    header = json.dumps({"weight": 1}).encode()
    path.write_bytes(struct.pack("<Q", len(header)) + header)
    err = explain(_caught(lambda: read_header(path)))
    assert isinstance(err, CheckpointError)
    assert str(err).startswith(f"{path}: safetensors header is JSON but not a tensor table (tensor 'weight': a int,")
    from safetensors import safe_open

    err = explain(_caught(lambda: safe_open(str(path), framework="pt")))
    assert isinstance(err, CheckpointError) and str(err).startswith(f"{path}: not a valid safetensors file (")


def test_safetensors_disk_full_text() -> None:
    from safetensors import SafetensorError

    full = SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                           'message: "No space left on device" })')
    assert isinstance(explain(full), DiskFullError)


def test_bugs_stay_bugs() -> None:
    assert explain(RuntimeError("shape mismatch")) is None
    assert explain(ZeroDivisionError()) is None
    assert explain(KeyError("x")) is None  # a KeyError outside the safetensors header reader


def test_check_finite() -> None:
    check_finite(torch.ones(3), "decode")
    check_finite(torch.arange(3), "decode")  # integers are always finite
    check_finite(np.zeros(2), "pixels")
    for bad in (torch.tensor([1.0, float("nan")]), np.array([np.inf]), float("nan"), torch.tensor([float("-inf")]).half()):
        with pytest.raises(GmError) as info:
            check_finite(bad, "sampling", "the checkpoint may hold NaN weights")
        assert str(info.value) == "non-finite values (NaN/Inf) in sampling (the checkpoint may hold NaN weights)"
        assert info.value.exit_code == 1


def test_closed_stdout_ends_quietly() -> None:
    """`gm ... | head -1`: the command ends with 141 and nothing on stderr (no 'Exception ignored')."""
    script = ("import sys, typer\nfrom commands._common import run\nfrom gm.console import console\n"
              "try:\n    run(lambda: [console.result(f'/out/{i:06d}.png') for i in range(200000)])\n"
              "except typer.Exit as done:\n    sys.exit(done.exit_code)\n")
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout.readline() == b"/out/000000.png\n"
    proc.stdout.close()  # the reader goes away
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 141 and err == b""
    script = ("import sys\nfrom gm.errors import explain\nerr = explain(BrokenPipeError())\n"
              "print('lost')\nsys.stderr.write(f'{type(err).__name__} {err.exit_code} {err.quiet}')\n")
    out = subprocess.run([sys.executable, "-c", script], env=ENV, capture_output=True, text=True, timeout=60)
    assert out.stderr == "StdoutClosed 141 True" and out.stdout == ""  # stdout now goes to /dev/null
    assert StdoutClosed.exit_code == 141


def test_sigterm_is_an_interrupt_that_tidies(tmp_path: Path) -> None:
    """install_sigterm: SIGTERM raises Terminated (a KeyboardInterrupt, exit code 143) where the
    process is, so write_atomic drops its temporary and the empty output folder goes."""
    script = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from gm.errors import Terminated, install_sigterm
        from gm.io import files
        install_sigterm()
        files.forget_created()
        out = files.ensure_dir({str(tmp_path / 'out' / 'deep')!r})
        def slow(tmp):
            tmp.write_bytes(b"partial")
            print("writing", flush=True)
            time.sleep(30)
        try:
            files.write_atomic(out / "000000.png", slow)
        except KeyboardInterrupt as err:
            files.remove_created_if_empty()
            print(type(err).__name__, isinstance(err, Terminated), err.exit_code, err, flush=True)
            sys.exit(err.exit_code)
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], env=ENV, stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline() == "writing\n"
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert proc.returncode == 143 and out == "Terminated True 143 terminated (SIGTERM)\n"
    assert list(tmp_path.iterdir()) == []  # no temporary, no empty folders
    assert issubclass(Terminated, KeyboardInterrupt)


def test_sigterm_handler_only_from_main_thread() -> None:
    import threading

    from gm.errors import install_sigterm

    before = signal.getsignal(signal.SIGTERM)
    thread = threading.Thread(target=install_sigterm)
    thread.start()
    thread.join()
    assert signal.getsignal(signal.SIGTERM) is before


def test_interruption_by_signal() -> None:
    from gm.errors import interruption

    assert isinstance(interruption(signal.SIGTERM), Terminated) and interruption(signal.SIGTERM).exit_code == 143
    assert type(interruption(signal.SIGINT)) is KeyboardInterrupt


def test_image_reader_names_missing_and_bad_files(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=f"^{tmp_path / 'gone.png'}: no such file or folder"):
        media.open_image(tmp_path / "gone.png")
    (tmp_path / "text.png").write_text("hello")
    with pytest.raises(InputError, match="text.png: not a readable image"):
        media.open_image(tmp_path / "text.png")
