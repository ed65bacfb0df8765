"""Package layout that pyproject.toml alone cannot state: the repository keeps `commands/` and
`presets/` at its top level, the wheel installs them inside gm (`gm.commands`, `gm/_presets`),
so site-packages gets one top-level name, `gm`. Everything else is in pyproject.toml."""

from setuptools import find_namespace_packages, setup

PACKAGES = find_namespace_packages(include=["gm", "gm.*"], exclude=["*.__pycache__"])

setup(
    packages=[*PACKAGES, "gm.commands", "gm._presets"],
    package_dir={"gm.commands": "commands", "gm._presets": "presets"},
    package_data={"gm._presets": ["*.toml"]},
)
