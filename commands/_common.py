"""Shared CLI pieces: option types, the error boundary, preset handling.

Commands stay thin: parse options -> a Job -> run -> print. `command` registers a body with the
options every generating command shares (--preset, --set, device and precision, checkpoint, output
switches), handed to it as one `Common`. Heavy imports (torch, models) happen inside command bodies
so that `gm --help` stays fast.
"""

from __future__ import annotations

import contextvars
import inspect
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Annotated, Any, TypeVar

import typer

T = TypeVar("T")

MAIN, SAMPLING, PERF, OUTPUT = "Main", "Sampling", "Performance", "Output"

QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress or logs on stderr.", rich_help_panel=OUTPUT)]
DebugOpt = Annotated[bool, typer.Option("--debug", help="Show full tracebacks on errors.", rich_help_panel=OUTPUT)]
JsonOpt = Annotated[bool, typer.Option("--json", help="One JSON object per result on stdout.", rich_help_panel=OUTPUT)]
SetOpt = Annotated[
    list[str] | None,
    typer.Option("--set", metavar="TABLE.KEY=VALUE",
                 help="Override a preset value, e.g. --set sampler.steps=30 (tables: sampler, guider, defaults, perf).",
                 rich_help_panel=SAMPLING),
]
ShowPresetOpt = Annotated[bool, typer.Option("--show-preset", help="Print the effective preset as TOML and exit.",
                                             rich_help_panel=OUTPUT)]
DeviceOpt = Annotated[str, typer.Option("--device", help="auto, cuda, cuda:N, mps or cpu.", rich_help_panel=PERF)]
DtypeOpt = Annotated[str, typer.Option("--dtype", help="Network precision: auto (fp16 on GPU, fp32 on CPU), fp16, bf16, fp32.",
                                       rich_help_panel=PERF)]
LowVramOpt = Annotated[bool, typer.Option("--low-vram", help="Keep only the running stage on the GPU.", rich_help_panel=PERF)]
CompileOpt = Annotated[bool, typer.Option("--compile", help="torch.compile the denoiser and VAE decode (slow first run; "
                                                            "on the CPU it also holds a second copy of the weights).",
                                          rich_help_panel=PERF)]
CheckpointOpt = Annotated[
    str | None,
    typer.Option("--checkpoint", metavar="FILE",
                  help="Checkpoint file (default: $GM_CHECKPOINTS, ./checkpoints, then the Hugging Face cache).",
                  rich_help_panel=MAIN),
]
UnsafePickleOpt = Annotated[bool, typer.Option("--unsafe-pickle", help="Allow loading a pickle .ckpt (weights only).",
                                               rich_help_panel=MAIN)]
SeedOpt = Annotated[str | None, typer.Option("--seed", metavar="N|-1|preset", help="Random seed (default or -1: a fresh one, "
                                             "printed and recorded; preset: the preset's).", rich_help_panel=SAMPLING)]
OutOpt = Annotated[str, typer.Option("--out", "-o", help="Output folder.", rich_help_panel=OUTPUT)]
PlanOpt = Annotated[bool, typer.Option("--plan", help="Print the GPU memory plan of this run (per phase: weights, "
                                        "activations, peak; --json for one JSON object) and exit; loads nothing.",
                                        rich_help_panel=PERF)]
MaxVramOpt = Annotated[float | None, typer.Option("--max-vram", metavar="GB", help="Fit the run in this much GPU "
                                                  "memory (default: the CUDA device's free memory): fewer frames per "
                                                  "VAE call, CFG in two passes, --low-vram staging, as the plan needs.",
                                                  rich_help_panel=PERF)]


def run(fn: Callable[[], T], *, quiet: bool = False, debug: bool = False, json_mode: bool = False) -> T:
    """Run a command body: GmError -> one line + hint and its exit code; no traceback unless --debug."""
    from gm.console import console
    from gm.errors import GmError, explain, install_sigterm

    console.configure(quiet=quiet, json_mode=json_mode)
    install_sigterm()  # SIGTERM ends like Ctrl-C: tidy folders, exit 143
    try:
        return run_or_tidy(fn)
    except GmError as err:
        if debug:
            raise
        console.error(str(err))
        raise typer.Exit(err.exit_code) from None
    except KeyboardInterrupt as err:
        console.error(str(err) or "interrupted")
        raise typer.Exit(getattr(err, "exit_code", 130)) from None
    except BrokenPipeError:  # stdout closed early (`gm ... | head`): stop quietly, like a SIGPIPE
        import os

        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        raise typer.Exit(141) from None
    except typer.Exit:
        raise
    except Exception as err:  # a bug: say so in one line, the traceback is behind --debug
        if debug:
            raise
        from gm.errors import out_of_memory

        oom = out_of_memory(err, console.failed_phase) or explain(err)
        if oom is not None:
            console.error(str(oom))
            raise typer.Exit(oom.exit_code) from None
        console.error(f"internal error: {type(err).__name__}: {err} (run again with --debug for the traceback)")
        raise typer.Exit(1) from None


def run_or_tidy(fn: Callable[[], T]) -> T:
    """fn(); if it fails, the output folders it created and left empty are removed (rmdir only)."""
    from gm.io import files

    files.forget_created()
    try:
        return fn()
    except BaseException:
        files.remove_created_if_empty()
        raise


@dataclass(frozen=True)
class Common:
    """The shared options of one command line."""

    preset: str
    overrides: list[str] | None
    device: str
    dtype: str
    low_vram: bool
    compile_: bool
    checkpoint: str | None
    unsafe_pickle: bool
    show_preset: bool
    json_mode: bool
    quiet: bool
    debug: bool
    plan: bool = False
    max_vram: float | None = None

    def load_preset(self, family: str, expected: str, hint: str, name: str | None = None) -> Any:
        """The preset with --set applied, of the command's family (UsageError otherwise); with
        --show-preset it is printed and the command stops."""
        from gm import presets
        from gm.errors import UsageError

        preset = presets.load(name or self.preset, self.overrides or [])
        if preset.family != family:
            raise UsageError(f"preset '{preset.name}' is a {preset.family} model, not {expected}", hint)
        if self.show_preset:
            sys.stdout.write(presets.to_toml(preset))
            raise typer.Exit(0)
        return preset

    def runtime(self, preset: Any) -> Any:
        """The performance options -> a Runtime; `auto` / off defer to the preset's [perf] table."""
        from gm.device import runtime_for

        return runtime_for(preset.perf, self.device, None if self.dtype == "auto" else self.dtype,
                           self.low_vram or None, self.compile_ or None)


def _common_parameters(preset_default: str, preset_help: str) -> list[inspect.Parameter]:
    options: list[tuple[str, Any, Any]] = [
        ("preset", Annotated[str | None, typer.Option("--preset", "-p", rich_help_panel=MAIN, help=(
            f"{preset_help} Default: {preset_default}, or with --checkpoint the preset whose architecture the "
            "file's tensors match."))], None),
        ("checkpoint", CheckpointOpt, None), ("unsafe_pickle", UnsafePickleOpt, False), ("overrides", SetOpt, None),
        ("device", DeviceOpt, "auto"), ("dtype", DtypeOpt, "auto"), ("low_vram", LowVramOpt, False),
        ("compile_", CompileOpt, False), ("show_preset", ShowPresetOpt, False), ("json_mode", JsonOpt, False),
        ("quiet", QuietOpt, False), ("debug", DebugOpt, False), ("plan", PlanOpt, False),
        ("max_vram", MaxVramOpt, None),
    ]
    return [inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, annotation=tp, default=default)
            for name, tp, default in options]


def command(app: typer.Typer, name: str, *, help: str, preset: str, preset_help: str,
            short_help: str | None = None) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """Register `body(common, **own_options)` as `gm NAME` with the shared options added; the body
    runs inside the error boundary (`run`)."""

    def decorate(body: Callable[..., None]) -> Callable[..., None]:
        own = [p for p in inspect.signature(body, eval_str=True).parameters.values() if p.name != "common"]
        shared = _common_parameters(preset, preset_help)
        names = [p.name for p in shared]

        def cli(**values: Any) -> None:
            common = Common(**{n: values.pop(n) for n in names})
            # In a copy of the context: settings a run chooses for itself (two-pass CFG) end with it.
            run(lambda: contextvars.copy_context().run(body, with_preset(common, name, preset), **values),
                quiet=common.quiet, debug=common.debug, json_mode=common.json_mode)

        cli.__signature__ = inspect.Signature(own + shared)  # type: ignore[attr-defined]
        cli.__name__ = name.replace("-", "_")
        app.command(name, help=help, short_help=short_help)(cli)
        return body

    return decorate


FAMILY_COMMAND = {"image": "txt2img", "video": "img2vid", "orbit": "orbit", "video4d": "video4d"}
PREFER = {"turbo": ("sdxl-turbo", "sd-turbo")}  # presets a command assumes among same-tensor ones


def with_preset(common: Common, command: str, default: str) -> Common:
    """`common` with its preset decided: -p as given; without -p, the preset --checkpoint's file
    fits (said on stderr), else the command's default."""
    import dataclasses

    if common.preset is not None:
        return common
    return dataclasses.replace(common, preset=detected_preset(command, default, common.checkpoint))


def detected_preset(command: str, default: str, checkpoint: str | None) -> str:
    """The preset of `checkpoint` from its header (gm.detect), or `default` without one; a file of
    another command's family is a usage error naming that command and preset."""
    if not checkpoint:
        return default
    from gm import presets
    from gm.checkpoint import PICKLE_SUFFIXES, find_checkpoint
    from gm.console import console
    from gm.detect import detect_preset
    from gm.errors import UsageError

    path = find_checkpoint(presets.load(default), checkpoint)  # a path, or a name in the checkpoint folders
    if path.suffix in PICKLE_SUFFIXES:  # its tensors are only known after unpickling it
        console.warn(f"{path.name}: the model family of a pickle file is not detected; assuming -p {default}")
        return default
    name, note = detect_preset(path, PREFER.get(command, ()))
    family = presets.load(name).family
    if family != presets.load(default).family:
        label = note.split(" checkpoint: ")[0]
        article = "an" if label[0] in "AEFHILMNORSX" else "a"
        right = FAMILY_COMMAND.get(family, "")
        raise UsageError(f"{path.name} is {article} {label} checkpoint: use gm {right} -p {name}")
    console.log(f"{path.name}: {note}")
    return name
