"""The repository stands alone: nothing points outside it, and the files the README's examples
and the docs name are in it."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SCANNED = ("README.md", "BENCHMARKS.md", "gm", "commands", "docs", "tests", "presets", "bench", "Makefile",
           "pyproject.toml", "setup.py")
OUTSIDE = re.compile("|".join([r"\.\./" + "shared", "/work/" + "shared", "REFERENCE" + r"(\.md)? §"]))


def text_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else [p for p in path.rglob("*") if p.is_file()]
        files += [p for p in candidates if p.suffix in (".py", ".md", ".toml", ".sh", "") and "__pycache__" not in p.parts]
    return files


def test_nothing_refers_outside_the_repository() -> None:
    hits = []
    for path in text_files():
        for n, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(ROOT)}:{n}: {line.strip()[:80]}")
    assert not hits, "\n".join(hits)


def test_readme_example_inputs_and_cited_docs_exist() -> None:
    readme = (ROOT / "README.md").read_text()
    named = set(re.findall(r"\b((?:docs|presets|tests|bench)/[\w./-]+\.\w+)", readme))
    assert "docs/media/camel.gif" in named and "docs/reference.md" in named
    missing = sorted(n for n in named if not (ROOT / n.rstrip(".")).exists())
    assert not missing, missing
    sections = set(re.findall(r"^#+ (\d+(?:\.\d+)?)\.? ", (ROOT / "docs" / "reference.md").read_text(), re.M))
    cited = set()
    for path in text_files():
        cited |= set(re.findall(r"docs/reference\.md §(\d+(?:\.\d+)?)", path.read_text(errors="replace")))
    dangling = sorted(c for c in cited if c not in sections and c.split(".")[0] != "8")
    assert not dangling, f"cited sections missing from docs/reference.md: {dangling}"
