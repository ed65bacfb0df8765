"""Model hash of the file used: A1111's 10 digits, computed once, re-computed when the file changes."""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import pytest

from gm import provenance


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    return tmp_path / "xdg" / "gm" / "hashes.json"


def test_model_hash_is_a1111s_and_cached(tmp_path: Path, cache_home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    data = os.urandom(1 << 20)
    path = tmp_path / "models" / "my_model.safetensors"
    path.parent.mkdir()
    path.write_bytes(data)
    full = hashlib.sha256(data).hexdigest()
    assert provenance.model_hash(path) == full[:10]
    entry = json.loads(cache_home.read_text())[str(path.resolve())]
    assert entry == {"size": len(data), "mtime_ns": path.stat().st_mtime_ns, "sha256": full}
    # Second call: read from the cache, the file is not opened again.
    opened = []
    real_open = Path.open
    monkeypatch.setattr(Path, "open", lambda self, *a, **k: opened.append(self) or real_open(self, *a, **k))
    assert provenance.model_hash(path) == full[:10] and path not in opened
    monkeypatch.undo()
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    # Changed in place (same size, new mtime): hashed again.
    path.write_bytes(data[::-1])
    os.utime(path, ns=(entry["mtime_ns"] + 10**9, entry["mtime_ns"] + 10**9))
    assert provenance.model_hash(path) == hashlib.sha256(data[::-1]).hexdigest()[:10]
    record = provenance.file_record(path)
    assert record == {"path": str(path.resolve()), "name": "my_model.safetensors",
                      "sha256_10": hashlib.sha256(data[::-1]).hexdigest()[:10]}


def test_damaged_or_unwritable_cache_only_costs_a_rehash(tmp_path: Path, cache_home: Path,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    path = tmp_path / "m.safetensors"
    path.write_bytes(b"abc")
    cache_home.parent.mkdir(parents=True)
    cache_home.write_text("{not json")
    assert provenance.model_hash(path) == hashlib.sha256(b"abc").hexdigest()[:10]
    assert json.loads(cache_home.read_text())  # rewritten whole, atomically
    assert not [p for p in cache_home.parent.iterdir() if p.name != "hashes.json"]  # no temp file left
    blocked = tmp_path / "not-a-folder"
    blocked.write_text("")  # the cache folder cannot be created (as with a read-only home)
    monkeypatch.setenv("XDG_CACHE_HOME", str(blocked))
    other = tmp_path / "n.safetensors"
    other.write_bytes(b"xyz")
    assert provenance.model_hash(other) == hashlib.sha256(b"xyz").hexdigest()[:10]
