"""Where gm's bundled data files are, in a clone and in an installed wheel.

The repository keeps the presets editable at its top level (`presets/`); the wheel carries the
same files as the package-data folder `gm/_presets/` (setup.py maps one onto the other). Code
asks here instead of computing paths from `__file__`, so both layouts work.
"""

from __future__ import annotations

from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def preset_dir() -> Path:
    """The folder of the presets that ship with gm: `gm/_presets` when installed from a wheel or
    sdist, else the clone's top-level `presets/`."""
    installed = PACKAGE / "_presets"
    if installed.is_dir():
        return installed
    return PACKAGE.parent / "presets"


def user_cache_dir() -> Path:
    """gm's own cache folder ($XDG_CACHE_HOME/gm, else ~/.cache/gm); created on demand by callers."""
    import os

    base = os.environ.get("XDG_CACHE_HOME") or os.path.join("~", ".cache")
    return Path(base).expanduser() / "gm"
