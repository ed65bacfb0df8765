"""The `gm` command line: help, version, start-up without torch, the error boundary."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
import torch
from typer.testing import CliRunner

from commands.app import app

SUBCOMMANDS = ["txt2img", "refine", "turbo", "img2vid", "orbit", "video4d", "train", "detect-watermark", "download"]


def test_help_lists_the_nine_subcommands() -> None:
    result = CliRunner().invoke(app, ["--help"], terminal_width=200)
    assert result.exit_code == 0
    for name in SUBCOMMANDS:
        assert f" {name} " in result.output, name


def test_version() -> None:
    result = CliRunner().invoke(app, ["--version"])
    assert result.exit_code == 0 and result.output.startswith("gm ")


def test_help_imports_no_torch() -> None:
    code = (
        "import sys\n"
        "from commands.app import app\n"
        "try:\n    app(['--help'])\nexcept SystemExit:\n    pass\n"
        "for name in ('txt2img', 'img2vid', 'video4d', 'train', 'download', 'detect-watermark'):\n"
        "    try:\n        app([name, '--help'])\n    except SystemExit:\n        pass\n"
        "print('TORCH' if 'torch' in sys.modules else 'CLEAN', file=sys.stderr)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.stderr.strip().endswith("CLEAN"), proc.stderr[-2000:]


def test_error_boundary_one_line_and_exit_codes() -> None:
    import typer

    from commands._common import run
    from gm.errors import CheckpointError, UsageError

    def fail(exc: Exception):
        def body():
            raise exc
        return body

    runner = CliRunner()
    demo = typer.Typer()

    @demo.command()
    def go(kind: str, debug: bool = False, as_json: bool = False) -> None:
        if kind == "ok":
            run(lambda: __import__("gm.console").console.console.result("out/1.png", seed=3), json_mode=as_json)
            return
        exc = {"ckpt": CheckpointError("checkpoint x not found", "run `gm download x`"),
               "usage": UsageError("steps must be >= 1"),
               "bug": ZeroDivisionError("boom")}[kind]
        run(fail(exc), debug=debug)

    r = runner.invoke(demo, ["ckpt"])
    assert r.exit_code == 1
    assert "gm: error: checkpoint x not found (run `gm download x`)" in r.output
    assert "Traceback" not in r.output
    assert runner.invoke(demo, ["usage"]).exit_code == 2
    r = runner.invoke(demo, ["bug"])
    assert r.exit_code == 1 and "internal error: ZeroDivisionError: boom" in r.output and "--debug" in r.output
    r = runner.invoke(demo, ["bug", "--debug"])
    assert isinstance(r.exception, ZeroDivisionError)
    r = runner.invoke(demo, ["ok"])
    assert r.exit_code == 0 and r.stdout == "out/1.png\n"
    r = runner.invoke(demo, ["ok", "--as-json"])
    assert json.loads(r.stdout) == {"path": "out/1.png", "seed": 3}


def test_log_lines_are_not_wrapped_on_a_narrow_stderr() -> None:
    """A long log/warning line stays one line (grep-able) whatever the console width."""
    import io

    from rich.console import Console as RichConsole

    from gm.console import Console

    buffer = io.StringIO()
    con = Console(err=RichConsole(file=buffer, width=40, highlight=False))
    long_path = "/a/very/long/folder/name/that/goes/on/and/on/input.png"
    con.log(f"{long_path}: 256x144 resized to cover 96x64 and centre-cropped")
    con.warn("frames of 96x64 are too small for the invisible watermark (needs 256x256 pixels)")
    lines = buffer.getvalue().splitlines()
    assert lines == [
        f"{long_path}: 256x144 resized to cover 96x64 and centre-cropped",
        "warning: frames of 96x64 are too small for the invisible watermark (needs 256x256 pixels)",
    ]


@pytest.mark.parametrize(
    ("raised", "expected"),
    [
        (torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB. GPU 0 has a total capacity "
                                     "of 23.6 GiB of which 1.2 GiB is free."),
         "gm: error: out of GPU memory during 'sample': Tried to allocate 20.00 GiB (try --low-vram,"),
        (RuntimeError("[enforce fail at alloc_cpu.cpp:117] data. DefaultCPUAllocator: not enough memory: you tried "
                      "to allocate 800000000000 bytes."),
         "gm: error: out of CPU memory during 'sample': not enough memory: you tried to allocate 800000000000 bytes "
         "(try a smaller size"),
    ],
)
def test_out_of_memory_is_a_one_line_error_naming_the_phase(raised: Exception, expected: str,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    import typer

    from commands._common import run
    from gm.console import console

    def body() -> None:
        with console.task("load x", total=1):
            pass
        with console.task("sample", total=3):
            raise raised

    with pytest.raises(typer.Exit) as exit_:
        run(body)
    assert exit_.value.exit_code == 1
    err = capsys.readouterr().err
    assert err.startswith(expected) and err.count("\n") == 1 and "internal error" not in err
    with pytest.raises(ValueError):  # anything else is still a bug: internal error, or the traceback with --debug
        run(lambda: (_ for _ in ()).throw(ValueError("x")), debug=True)
