"""`gm download`: fetch checkpoints, datasets and auxiliary models (sources: docs/reference.md); --list shows them."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated

import typer

from ._common import MAIN, OUTPUT, DebugOpt, JsonOpt, QuietOpt, run

if TYPE_CHECKING:
    from gm.hub import Item, Status

HELP = """Fetch checkpoints (by preset name), datasets (mnist, cifar10) and auxiliary models
(rembg-u2net, rembg-bria: background removal for orbit/video4d; sdxl-vae, clip-vit-large-patch14:
the frozen parts of the latent training presets), then verify them.

Checkpoints come from the Hugging Face Hub into the Hugging Face cache (HF_HOME, HF_HUB_CACHE;
shared with diffusers and other Hub tools), or into --dir. A checkpoint gm already finds (in the
cache, a $GM_CHECKPOINTS folder or ./checkpoints, subfolders included) is not fetched again.
HF_ENDPOINT and HF_TOKEN are honoured; gated repositories need their licence accepted on the Hub
and HF_TOKEN set. Datasets go to $GM_DATA/NAME or ./.data/NAME, rembg models to rembg's own
folder ($U2NET_HOME, $REMBG_HOME or ~/.rembg); GM_DATA_MIRROR replaces the base URL of those.
Files are checked against their sha256/md5 before they are used.

Examples: gm download sdxl-base-1.0 · gm download mnist cifar10 · gm download --list
"""


def register(app: typer.Typer) -> None:
    @app.command("download", help=HELP, short_help="Fetch checkpoints and datasets; --list shows what is known.")
    def command(
        names: Annotated[list[str] | None, typer.Argument(
            metavar="NAME...", show_default=False,
            help="Preset names (sdxl-base-1.0, svd-xt, ...), mnist, cifar10, rembg-u2net.")] = None,
        dest: Annotated[str | None, typer.Option(
            "--dir", metavar="DIR", help="Destination folder (default: see above).", rich_help_panel=MAIN)] = None,
        verify: Annotated[bool, typer.Option(
            "--verify", help="Re-hash files already present (all present items when no NAME).",
            rich_help_panel=MAIN)] = False,
        force: Annotated[bool, typer.Option(
            "--force", help="Download again even when the file is present.", rich_help_panel=MAIN)] = False,
        show: Annotated[bool, typer.Option(
            "--list", help="List every known item: size, licence, gated, present, verified.",
            rich_help_panel=OUTPUT)] = False,
        json_mode: JsonOpt = False,
        quiet: QuietOpt = False,
        debug: DebugOpt = False,
    ) -> None:
        code = run(lambda: download(names or [], dest, verify, force, show, json_mode),
                   quiet=quiet, debug=debug, json_mode=json_mode)
        raise typer.Exit(code)


def download(names: list[str], dest: str | None, verify: bool, force: bool, show: bool, json_mode: bool) -> int:
    """Run one `gm download`; returns the exit status (1 when some item failed)."""
    from gm import hub
    from gm.console import console
    from gm.errors import GmError, UsageError
    from gm.hub_fetch import download_item

    if show:
        items = [hub.find_item(n) for n in names] if names else hub.catalogue()
        list_items([hub.status(item, dest) for item in items], json_mode)
        return 0
    if not names and not verify:
        raise UsageError("nothing to download", "name presets or datasets (gm download --list shows them)")
    items = [hub.find_item(n) for n in names]  # every name checked before anything is fetched
    if not items:
        items = [s.item for s in (hub.status(i, dest) for i in hub.catalogue()) if s.present]
    failed = 0
    for item in items:
        try:
            state = hub.status(item, dest)
            if not state.present or force:
                paths = download_item(item, dest, force)
            else:
                paths = [state.folder / item.extract] if item.extract else list(state.paths)
                if not verify:
                    where = ", ".join(str(p) for p in paths)
                    console.log(f"{item.name}: already present at {where} (--verify re-hashes, --force fetches again)")
            if verify:
                verify_item(item, dest)
            state = hub.status(item, dest)
            for path in paths:
                console.result(path, name=item.name, kind=item.kind, verified=state.verified)
        except GmError as err:
            console.error(f"{item.name}: {err}")
            failed += 1
    return 1 if failed else 0


def verify_item(item: Item, dest: str | None) -> None:
    from gm import hub
    from gm.console import console

    total = sum(p.stat().st_size for p in hub.status(item, dest).paths)
    with console.task(f"verify {item.name}", total=total / 1e6, unit="MB") as bar:
        checked = hub.verify(item, dest, lambda n: bar.advance(n / 1e6))
    if checked:
        console.log(f"{item.name}: verified {', '.join(checked)}")
    else:
        console.warn(f"{item.name}: no published hash to check against")


def list_items(states: list[Status], json_mode: bool) -> None:
    """`--list`: JSON lines, a Rich table on a terminal, else tab-separated lines."""
    import sys

    from gm.console import console

    def verified_text(v: bool | None) -> str:
        return "-" if v is None else "yes" if v else "MISMATCH"

    for state in states if json_mode else ():
        item = state.item
        console.result(state.folder, name=item.name, kind=item.kind, size_gb=item.size_gb,
                       license=item.license, gated=item.gated, present=state.present,
                       verified=state.verified, files=[f.name for f in item.files],
                       source=item.files[0].repo or item.files[0].url)
    if json_mode:
        return
    if not sys.stdout.isatty():
        for state in states:
            item = state.item
            sys.stdout.write("\t".join([item.name, item.kind, f"{item.size_gb:g}GB" if item.size_gb else "?", "gated" if item.gated else "open",
                                        "present" if state.present else "missing", verified_text(state.verified),
                                        item.license]) + "\n")
        return
    from rich.console import Console
    from rich.table import Table

    table = Table("name", "kind", "size", "licence", "gated", "present", "verified", "where")
    for state in states:
        item = state.item
        table.add_row(item.name, item.kind, f"{item.size_gb:g} GB" if item.size_gb else "?", item.license,
                      "yes" if item.gated else "", "yes" if state.present else "", verified_text(state.verified),
                      str(state.folder))
    Console().print(table)
