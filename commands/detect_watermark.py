"""`gm detect-watermark`: check images and videos for the invisible watermark (scripts/demo/detect.py)."""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import MAIN, DebugOpt, JsonOpt, QuietOpt, run

HELP = """Check images and videos for the invisible watermark that SDXL, SVD and gm embed.

Reads the 48-bit message 0xB3EC907BB19E (invisible-watermark, dwtDct) and prints one line per
file: how many bits match and a verdict. 36 or more matching bits: very likely watermarked;
34-35: likely; 28-33: cannot decide; 27 or fewer: no watermark detected.

[bold]"No watermark" is not proof that an image is not generated[/bold]: it may come from a tool
that embeds no watermark (the reference's API, turbo and SV4D scripts do not), or the mark may
have been destroyed by editing, resizing, cropping, or recompression (JPEG with chroma
subsampling erases it even at high quality). Smooth, flat or near-white images hold the mark
poorly. Images smaller than 256x256 pixels carry no watermark at all.

Exit status: 0 when every input was read (whatever the verdicts), 1 when some input could not
be read (listed on stderr, the rest are still checked), 2 on usage errors, 3 with --require
when some input has fewer than --min-bits matching bits.

Example: gm txt2img "a red fox" | gm detect-watermark -
"""


def register(app: typer.Typer) -> None:
    @app.command("detect-watermark", help=HELP, short_help="Check images and videos for the invisible watermark.")
    def command(
        paths: Annotated[list[str], typer.Argument(
            metavar="PATH...", show_default=False,
            help="Images (png/jpg/webp), videos (mp4/gif), folders, or - to read paths from stdin.")],
        recursive: Annotated[bool, typer.Option("--recursive", "-r", help="Look into sub-folders too.",
                                                rich_help_panel=MAIN)] = False,
        frames: Annotated[int | None, typer.Option(
            "--frames", metavar="K", help="Videos: check K evenly spaced frames (default: every frame).",
            rich_help_panel=MAIN)] = None,
        min_bits: Annotated[int, typer.Option(
            "--min-bits", metavar="N", help="Matching bits (of 48) that count as watermarked.",
            rich_help_panel=MAIN)] = 36,
        require: Annotated[bool, typer.Option(
            "--require", help="Exit 3 when some input has no watermark (fewer than --min-bits bits).",
            rich_help_panel=MAIN)] = False,
        json_mode: JsonOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        code = run(lambda: detect(paths, recursive, frames, min_bits, require, json_mode),
                   quiet=quiet, debug=debug, json_mode=json_mode)
        raise typer.Exit(code)


def detect(paths: list[str], recursive: bool, frames: int | None, min_bits: int, require: bool,
           json_mode: bool) -> int:
    """Check every input, print a line (or JSON object) per file; returns the exit status."""
    from gm.console import console
    from gm.errors import UsageError
    from gm.io import watermark as wm
    from gm.io.watermark_files import FileReport, check_file, gather

    if frames is not None and frames < 1:
        raise UsageError(f"--frames must be at least 1 (got {frames})")
    if not 0 <= min_bits <= wm.NUM_BITS:
        raise UsageError(f"--min-bits must be between 0 and {wm.NUM_BITS} (got {min_bits})")
    files, problems = gather(paths, recursive)
    if not files and not problems:
        raise UsageError("no input given", "pass image or video files, folders, or - to read paths from stdin")
    for problem in problems:
        report_problem(problem.path, problem.reason, json_mode)
    unreadable = len(problems)
    unmarked = 0
    with console.task("detect watermark", total=len(files), unit="file") as bar:
        for path in files:
            report = check_file(path, frames)
            if isinstance(report, FileReport):
                unmarked += not report.watermarked(min_bits)
                if json_mode:
                    console.result(report.path, **report.record(min_bits))
                else:
                    console.result(f"{report.path}: {report.text()}")
            else:
                unreadable += 1
                report_problem(report.path, report.reason, json_mode)
            bar.advance()
    if unreadable:
        return 1
    return 3 if require and unmarked else 0


def report_problem(path: str, reason: str, json_mode: bool) -> None:
    """An unreadable input: one line on stderr (and an {"path", "error"} object with --json)."""
    from gm.console import console

    console.error(f"{path}: {reason}")
    if json_mode:
        console.result(path, error=reason)
