"""`gm train`: train a small diffusion model from a preset (replaces the reference's main.py).

Thin: parse options, call gm.train.loop.train, print the run folder and the final grid (stdout).
Under `torchrun --nproc-per-node N gm train ...` the same command runs DDP.
"""

from __future__ import annotations

from typing import Annotated

import typer

from ._common import MAIN, OUTPUT, DebugOpt, DeviceOpt, JsonOpt, QuietOpt, run

TRAIN = "Training"


def register(app: typer.Typer) -> None:
    @app.command("train", help="Train a small diffusion model from a preset (plain PyTorch, DDP-ready). "
                 "Prints the run folder and the final sample grid.")
    def command(
        preset: Annotated[str, typer.Argument(help="Training preset name or .toml path (e.g. digits-demo, mnist-cond).",
                                              show_default=False)] = "",
        out: Annotated[str | None, typer.Option("--out", "-o", help="Run folder (default runs/<time>-<preset>).",
                                                rich_help_panel=OUTPUT)] = None,
        resume: Annotated[str | None, typer.Option("--resume", metavar="RUN|latest",
                                                   help="Continue a run from its newest checkpoint.",
                                                   rich_help_panel=MAIN)] = None,
        max_steps: Annotated[int | None, typer.Option("--max-steps", min=1, help="Stop after this many steps.",
                                                      rich_help_panel=TRAIN)] = None,
        batch_size: Annotated[int | None, typer.Option("--batch-size", "-b", min=1, help="Global batch size.",
                                                       rich_help_panel=TRAIN)] = None,
        lr: Annotated[float | None, typer.Option("--lr", min=0.0, help="Base learning rate.",
                                                 rich_help_panel=TRAIN)] = None,
        seed: Annotated[int | None, typer.Option("--seed", help="Seed (init, data order, noise).",
                                                 rich_help_panel=TRAIN)] = None,
        device: DeviceOpt = "auto",
        set_: Annotated[list[str] | None, typer.Option("--set", metavar="TABLE.KEY=VALUE",
                                                       help="Override a preset value, e.g. --set train.ema=true "
                                                       "(tables: train, data, sampler, guider).",
                                                       rich_help_panel=TRAIN)] = None,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
        json_out: JsonOpt = False,
    ) -> None:
        def body() -> None:
            from gm.console import console
            from gm.errors import UsageError, interruption
            from gm.train.loop import train
            from gm.train.run import TrainOptions

            if not preset and not resume:
                raise UsageError("give a training preset or --resume RUN", "e.g. gm train digits-demo")
            if lr is not None and not 0 < lr < float("inf"):  # NaN fails too; before any data or model
                raise UsageError(f"--lr must be a positive finite number, got {lr}", "e.g. --lr 1e-4")
            result = train(TrainOptions(preset=preset, out=out, resume=resume, max_steps=max_steps,
                                        batch_size=batch_size, lr=lr, seed=seed, device=device,
                                        overrides=tuple(set_ or ())))
            if result.interrupted:
                raise interruption(result.signum)
            if result.grid is None:  # a non-zero DDP rank: rank 0 reports
                return
            accuracy = result.metrics.get("classifier_accuracy")
            if accuracy:
                per_class = ", ".join(f"{k}: {v:.2f}" for k, v in accuracy.items() if k != "mean")
                console.log(f"sample grid: {result.grid} (one row per class)")
                console.log(f"classifier accuracy on the samples: mean {accuracy['mean']:.2f} ({per_class})")
            if json_out:
                console.result(result.run_dir, **result.metrics)
            else:
                console.result(result.run_dir)
                console.result(result.grid)

        run(body, quiet=quiet, debug=debug, json_mode=json_out)

