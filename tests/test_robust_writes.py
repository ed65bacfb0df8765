"""Every write path of gm.io and gm.train under an injected failure mid-write (a full disk after some
bytes, Ctrl-C, an encoder dying): no final-name file without complete content, no temporary left."""

from __future__ import annotations

import builtins
import errno
import io
import os
import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from gm.errors import CheckpointError, DiskFullError, GmError
from gm.io import files, media
from gm.train import checkpoint

ROOT = Path(__file__).resolve().parent.parent
ENV = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
FRAMES = [np.full((32, 48, 3), 40 * i, dtype=np.uint8) for i in range(4)]


class _Failing:
    """A file whose writes stop after `limit` bytes with `exc` (what a full disk does to a writer)."""

    def __init__(self, real: io.BufferedIOBase, limit: int, exc: BaseException) -> None:
        self._real, self._left, self._exc = real, limit, exc

    def write(self, data: bytes | str) -> int:
        if len(data) > self._left:
            self._real.write(data[:self._left])
            self._left = 0
            raise self._exc
        self._left -= len(data)
        return self._real.write(data)

    def fileno(self) -> int:  # writers must come through write() (Pillow writes to a fd directly)
        raise io.UnsupportedOperation("fileno")

    def __enter__(self) -> _Failing:
        return self

    def __exit__(self, *exc: object) -> None:
        self._real.close()

    def __getattr__(self, name: str) -> object:
        return getattr(self._real, name)


@pytest.fixture
def failing_open(monkeypatch: pytest.MonkeyPatch) -> Callable[[Path, int, BaseException], None]:
    """Make files opened for writing under `folder` fail after `limit` bytes with `exc`."""
    real_open = builtins.open

    def arm(folder: Path, limit: int, exc: BaseException) -> None:
        def fake(file, mode="r", *args, **kwargs):  # noqa: ANN001, ANN202 - builtins.open's signature
            handle = real_open(file, mode, *args, **kwargs)
            inside = isinstance(file, (str, os.PathLike)) and str(Path(file).parent) == str(folder)
            return _Failing(handle, limit, exc) if inside and any(c in mode for c in "wax+") else handle

        monkeypatch.setattr(builtins, "open", fake)
        monkeypatch.setattr(io, "open", fake)  # pathlib's write_text opens through io.open

    return arm


def _png(p: Path) -> None:
    media.write_png(p, np.full((64, 64, 3), 7, dtype=np.uint8), media.png_info("a fox", {"seed": 1}))


def _gif(p: Path) -> None:
    media.write_gif(p, FRAMES, 10, comment="a fox")


def _jpg(p: Path) -> None:
    Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8)).save(p, format="JPEG", quality=95)


def _frames(folder: Path) -> None:
    for i, frame in enumerate(FRAMES):
        media.write_png(folder / f"{i:03d}.png", frame)


def _text(p: Path) -> None:
    p.write_text("x" * 10_000, encoding="utf-8")


WRITERS = {"png": (_png, False), "gif": (_gif, False), "jpg": (_jpg, False), "frames": (_frames, True),
           "toml": (_text, False)}


@pytest.mark.parametrize("kind", sorted(WRITERS))
@pytest.mark.parametrize("failure", ["disk full", "ctrl-c"])
def test_sweep_file_writers(kind: str, failure: str, tmp_path: Path, failing_open) -> None:
    write, is_dir = WRITERS[kind]
    out = tmp_path / "out"
    out.mkdir()
    final = out / ("000000" if is_dir else f"000000.{kind}")
    exc: BaseException = OSError(errno.ENOSPC, "No space left on device") if failure == "disk full" else KeyboardInterrupt()
    writer = files.write_atomic_dir if is_dir else files.write_atomic
    if is_dir:  # the frames of a folder are written inside the hidden temporary folder
        def armed(tmp: Path) -> None:
            failing_open(tmp, 50, exc)
            write(tmp)
    else:
        failing_open(out, 50, exc)
        armed = write
    with pytest.raises(DiskFullError if failure == "disk full" else KeyboardInterrupt) as info:
        writer(final, armed)
    if failure == "disk full":
        assert str(info.value).startswith(f"disk full: no space left on device in {out}/ (")
    assert list(out.iterdir()) == []  # nothing under the final name, no temporary


@pytest.mark.parametrize("kind", sorted(WRITERS))
def test_sweep_writers_complete_when_nothing_fails(kind: str, tmp_path: Path) -> None:
    write, is_dir = WRITERS[kind]
    final = tmp_path / ("000000" if is_dir else f"000000.{kind}")
    (files.write_atomic_dir if is_dir else files.write_atomic)(final, write)
    assert [p.name for p in tmp_path.iterdir()] == [final.name]
    if kind in ("png", "gif", "jpg"):
        with Image.open(final) as img:
            img.load()
    with pytest.raises(FileExistsError):  # never over an existing name
        (files.write_atomic_dir if is_dir else files.write_atomic)(final, write)
    assert [p.name for p in tmp_path.iterdir()] == [final.name]


def test_write_text_atomic_replace(tmp_path: Path, failing_open) -> None:
    target = tmp_path / "metrics.jsonl"
    files.write_text_atomic(target, "old\n", replace=True)
    failing_open(tmp_path, 2, OSError(errno.ENOSPC, "No space left on device"))
    with pytest.raises(DiskFullError):
        files.write_text_atomic(target, "new content\n", replace=True)
    assert target.read_text() == "old\n" and [p.name for p in tmp_path.iterdir()] == ["metrics.jsonl"]


def test_mp4_same_bytes_as_imageio(tmp_path: Path) -> None:
    """gm runs ffmpeg itself (to see its exit status) with imageio-ffmpeg's command for quality 8."""
    import imageio_ffmpeg

    media.write_mp4(tmp_path / "gm.mp4", FRAMES, 7, {"comment": "x"})
    writer = imageio_ffmpeg.write_frames(str(tmp_path / "ref.mp4"), (48, 32), fps=7, codec="libx264",
                                         pix_fmt_in="rgb24", pix_fmt_out="yuv420p", quality=8, macro_block_size=16,
                                         output_params=["-metadata", "comment=x"], ffmpeg_log_level="error")
    writer.send(None)
    for frame in FRAMES:
        writer.send(frame)
    writer.close()
    assert (tmp_path / "gm.mp4").read_bytes() == (tmp_path / "ref.mp4").read_bytes()


def _run_mp4(tmp_path: Path, prelude: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    out = tmp_path / "out"
    out.mkdir()
    script = prelude + "\n" + textwrap.dedent(f"""
        import numpy as np
        from pathlib import Path
        from gm.errors import GmError
        from gm.io import files, media
        frames = [np.full((256, 256, 3), (i * 37) % 255, dtype=np.uint8) for i in range(30)]
        noise = np.random.default_rng(0)
        frames = [f ^ noise.integers(0, 255, f.shape, dtype=np.uint8) for f in frames]  # incompressible
        try:
            files.write_atomic(Path({str(out)!r}) / "000000.mp4", lambda p: media.write_mp4(p, frames, 10))
        except GmError as err:
            print(type(err).__name__, err)
    """)
    return subprocess.run([sys.executable, "-c", script], env={**ENV, **(env or {})}, capture_output=True,
                          text=True, timeout=120)


def test_mp4_encoder_failing_mid_file(tmp_path: Path) -> None:
    """A real mid-file failure: ffmpeg may write 64 KiB (RLIMIT_FSIZE), then its writes fail."""
    prelude = ("import resource, signal\nsignal.signal(signal.SIGXFSZ, signal.SIG_IGN)\n"
               "resource.setrlimit(resource.RLIMIT_FSIZE, (65536, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))")
    res = _run_mp4(tmp_path, prelude)
    assert res.stdout.startswith("GmError ffmpeg could not write .000000.") and "stopped by SIGXFSZ" in res.stdout, res.stdout
    assert list((tmp_path / "out").iterdir()) == []


def test_mp4_disk_full_named(tmp_path: Path) -> None:
    """An encoder that reports a full disk (a stand-in ffmpeg: half a file, ENOSPC's message, exit 1)."""
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\nfor last; do :; done\nhead -c 5000 > \"$last\"\n"
                    "echo \"av_interleaved_write_frame(): No space left on device\" >&2\nexit 1\n")
    fake.chmod(0o755)
    res = _run_mp4(tmp_path, "", {"IMAGEIO_FFMPEG_EXE": str(fake)})
    assert res.stdout.startswith(f"DiskFullError disk full: no space left on device in {tmp_path / 'out'}/"), res.stdout + res.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_mp4_interrupted(tmp_path: Path) -> None:
    class Interrupting(list):
        def __iter__(self):  # noqa: ANN204
            yield from self[:2]
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        files.write_atomic(tmp_path / "000000.mp4", lambda p: media.write_mp4(p, Interrupting(FRAMES), 10))
    assert list(tmp_path.iterdir()) == []


def _checkpoint_args(step: int) -> tuple:
    lin = torch.nn.Linear(64, 64)
    opt = torch.optim.AdamW(lin.parameters())
    lin(torch.ones(1, 64)).sum().backward()
    opt.step()
    extra = {"rng": checkpoint.rng_state(torch.Generator().manual_seed(0))}
    return checkpoint.Saved(step, 0, step, extra), checkpoint.model_tensors(lin), None, opt


@pytest.mark.parametrize("failure", ["disk full", "ctrl-c", "safetensors"])
def test_sweep_checkpoint(failure: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "checkpoints"
    first = checkpoint.save(folder, *_checkpoint_args(1), keep=2)
    real = checkpoint.save_file

    def half_then_fail(tensors: dict, path: str) -> None:
        real(tensors, path)
        size = os.path.getsize(path)
        os.truncate(path, size // 2)  # what was on disk when the space ran out
        if failure == "disk full":
            raise OSError(errno.ENOSPC, "No space left on device")
        if failure == "ctrl-c":
            raise KeyboardInterrupt
        from safetensors import SafetensorError

        raise SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, '
                              'message: "No space left on device" })')

    monkeypatch.setattr(checkpoint, "save_file", half_then_fail)
    with pytest.raises(KeyboardInterrupt if failure == "ctrl-c" else CheckpointError) as info:
        checkpoint.save(folder, *_checkpoint_args(2), keep=2)
    if failure != "ctrl-c":
        assert "cannot write checkpoint step-00000002: disk full: no space left on device" in str(info.value)
        assert "about 48.8 KiB needed" in str(info.value)  # model + two AdamW moments (+ steps)
    assert [p.name for p in folder.iterdir()] == [first.name]
    assert checkpoint.load(first)[0]["step"] == 1


def test_stale_checkpoint_folders(tmp_path: Path) -> None:
    """A kill -9 leaves `.step-N.tmp-<pid>`: removed when that process is gone, kept while it runs."""
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    dead = folder / f".step-00000008.tmp-{int(done.stdout)}"
    alive = folder / f".step-00000008.tmp-{os.getppid()}"
    for p in (dead, alive):
        p.mkdir()
        (p / "model.safetensors").write_bytes(b"half")
    assert checkpoint.remove_stale(folder) == [dead]
    assert [p.name for p in folder.iterdir()] == [alive.name]


def test_failed_write_is_named_even_without_errno_folder(tmp_path: Path) -> None:
    """ensure_dir under a path that cannot be made: a usage error naming it; nothing left behind."""
    blocker = tmp_path / "file"
    blocker.write_text("x")
    files.forget_created()
    with pytest.raises(GmError, match=f"cannot create output folder {blocker}/sub"):
        files.ensure_dir(blocker / "sub")
    files.remove_created_if_empty()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]
