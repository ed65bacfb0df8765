"""Start-up: wall time of `gm --help` and `gm txt2img --help`, and whether either imports torch."""

from __future__ import annotations

import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_PROBE = (
    "import sys; sys.argv = ['gm', *sys.argv[1:]]\n"
    "from commands.app import main\n"
    "try:\n    main()\nexcept SystemExit:\n    pass\n"
    "sys.stderr.write('TORCH=%d\\n' % ('torch' in sys.modules))\n"
)


def _gm() -> list[str]:
    exe = Path(sys.executable).with_name("gm")
    return [str(exe)] if exe.exists() else [sys.executable, "-m", "commands.app"]


def time_command(args: list[str], runs: int = 7) -> dict:
    """Median wall seconds of `gm ARGS` over `runs` runs (after one warm run), torch imported?"""
    cmd = _gm() + args
    subprocess.run(cmd, capture_output=True, cwd=ROOT, check=True)
    times = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(cmd, capture_output=True, cwd=ROOT, check=True)
        times.append(time.perf_counter() - t0)
    probe = subprocess.run([sys.executable, "-c", _PROBE, *args], capture_output=True, text=True, cwd=ROOT)
    return {"command": "gm " + " ".join(args), "median_s": statistics.median(times), "runs": times,
            "imports_torch": "TORCH=1" in probe.stderr}


def slowest_imports(args: list[str], top: int = 8) -> list[tuple[float, str]]:
    """(cumulative seconds, module) of the slowest top-level imports under `python -X importtime`."""
    out = subprocess.run([sys.executable, "-X", "importtime", "-c", _PROBE, *args], capture_output=True,
                         text=True, cwd=ROOT)
    rows = []
    for line in out.stderr.splitlines():
        if not line.startswith("import time:") or "cumulative" in line:
            continue
        _self_us, cum_us, name = line[len("import time:"):].split("|")
        if len(name) - len(name.lstrip()) == 1:  # one space = imported at top level
            rows.append((int(cum_us) / 1e6, name.strip()))
    return sorted(rows, reverse=True)[:top]


def run() -> list[dict]:
    return [time_command(["--help"]), time_command(["txt2img", "--help"])]
