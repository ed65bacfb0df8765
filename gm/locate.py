"""Where model files are: the folders people already keep them in, and the Hugging Face cache.

One set of rules serves both `gm download` (what is present, what not to fetch again) and
loading (which file a preset uses), so the two never disagree:

1. every folder of $GM_CHECKPOINTS (an os.pathsep list), searched recursively, so a ComfyUI
   `models/checkpoints` tree with subfolders or an A1111/Forge `models/Stable-diffusion` folder
   can be named as it is;
2. ./checkpoints (recursively), the folder older gm versions downloaded into;
3. the Hugging Face cache ($HF_HUB_CACHE, else $HF_HOME/hub, else ~/.cache/huggingface/hub),
   where `gm download` puts Hub files by default, shared with diffusers and every other Hub tool.

A file is matched by its exact name; a name the user typed (`--checkpoint NAME`) also matches a
file's stem, so `--checkpoint juggernautXL_v9` finds `sdxl/juggernautXL_v9.safetensors`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

MODEL_SUFFIXES = (".safetensors", ".ckpt", ".pt", ".pth", ".bin")


def checkpoint_folders() -> list[Path]:
    """$GM_CHECKPOINTS' folders in order, then ./checkpoints (only those that exist)."""
    listed = [Path(p).expanduser() for p in os.environ.get("GM_CHECKPOINTS", "").split(os.pathsep) if p.strip()]
    seen: set[Path] = set()
    folders = []
    for folder in [*listed, Path.cwd() / "checkpoints"]:
        key = folder.resolve()
        if folder.is_dir() and key not in seen:
            seen.add(key)
            folders.append(folder)
    return folders


def walk_files(folder: Path) -> Iterator[Path]:
    """Files under `folder`, shallow ones first, following links to folders but never in a loop;
    hidden folders (download staging, .git) are skipped."""
    visited: set[str] = set()
    level = [folder]
    while level:
        deeper = []
        for current in sorted(level):
            real = os.path.realpath(current)
            if real in visited:
                continue
            visited.add(real)
            try:
                entries = sorted(os.scandir(current), key=lambda e: e.name)
            except OSError:  # unreadable folder: skip it, as a file browser would
                continue
            for entry in entries:
                if entry.name.startswith("."):
                    continue
                if entry.is_dir():
                    deeper.append(Path(entry.path))
                elif entry.is_file():
                    yield Path(entry.path)
        level = deeper


def find_in_folders(name: str, by_stem: bool = False, folders: list[Path] | None = None) -> Path | None:
    """The first file called `name` in the checkpoint folders (by folder order, then depth);
    with `by_stem`, a model file whose name without suffix is `name` counts too."""
    stem_hit = None
    for folder in checkpoint_folders() if folders is None else folders:
        for path in walk_files(folder):
            if path.name == name:
                return path
            if by_stem and stem_hit is None and path.stem == name and path.suffix in MODEL_SUFFIXES:
                stem_hit = path
    return stem_hit


def hf_cache_dir() -> Path:
    """The Hugging Face Hub cache, by the rules huggingface_hub applies (read at call time)."""
    for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
        if os.environ.get(var):
            return Path(os.environ[var]).expanduser()
    home = os.environ.get("HF_HOME") or os.path.join(os.environ.get("XDG_CACHE_HOME") or "~/.cache", "huggingface")
    return Path(home).expanduser() / "hub"


def hf_cached(repo: str, filename: str) -> Path | None:
    """`repo/filename` in the Hugging Face cache (the main revision), or None."""
    if not repo:
        return None
    from huggingface_hub import try_to_load_from_cache

    hit = try_to_load_from_cache(repo, filename, cache_dir=hf_cache_dir())
    return Path(hit) if isinstance(hit, str) and Path(hit).is_file() else None


def find_model_file(filename: str, repo: str = "", path_in_repo: str = "") -> Path | None:
    """A release file wherever gm looks: checkpoint folders by name, then the Hugging Face cache."""
    return find_in_folders(filename) or hf_cached(repo, path_in_repo or filename)
