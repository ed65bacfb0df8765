"""No hidden network: background removal uses the model `gm download rembg-u2net` verified, or
fails at once; rembg is pointed at that folder so that it never starts a download of its own."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from gm import hub
from gm.errors import GmError

ROOT = Path(__file__).resolve().parent.parent


def test_rembg_without_its_model_fails_in_under_two_seconds(tmp_path: Path) -> None:
    """In a fresh process, with every proxy pointing at a port nobody listens on."""
    code = ("import time; t = time.perf_counter()\n"
            "from gm import hub\n"
            "try:\n    hub.rembg_model_dir()\n"
            "except Exception as e:\n    print(type(e).__name__, e, round(time.perf_counter() - t, 3))")
    env = {**{k: v for k, v in os.environ.items() if k not in ("REMBG_HOME", "XDG_DATA_HOME")},
           "U2NET_HOME": str(tmp_path / "u2net"), "PYTHONPATH": str(ROOT),
           "HTTPS_PROXY": "http://127.0.0.1:9", "HTTP_PROXY": "http://127.0.0.1:9"}
    start = time.perf_counter()
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=30).stdout
    wall = time.perf_counter() - start
    assert out.startswith("GmError background removal needs rembg's u2net model"), out
    assert "run `gm download rembg-u2net` once" in out and float(out.split()[-1]) < 2.0 and wall < 10


def test_rembg_uses_the_verified_model_without_network(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from rembg.sessions.u2net import U2netSession

    model = os.urandom(4096)
    fake = hub.Item("rembg-u2net", "aux", (hub.RemoteFile("u2net.onnx", md5=hashlib.md5(model).hexdigest()),))
    monkeypatch.setattr(hub, "AUX", (fake,))
    for name in ("U2NET_HOME", "REMBG_HOME"):
        monkeypatch.setenv(name, "")  # recorded, so that what rembg_model_dir sets is undone afterwards
        monkeypatch.delenv(name)
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "data"))
    folder = tmp_path / "data" / "rembg" / "models" / "u2net"
    folder.mkdir(parents=True)
    (folder / "u2net.onnx").write_bytes(model)
    assert hub.rembg_model_dir() == folder
    assert os.environ["U2NET_HOME"] == str(tmp_path / "data" / "rembg")
    import pooch

    monkeypatch.setattr(pooch, "retrieve", lambda *a, **k: pytest.fail("rembg tried to download"))
    assert U2netSession.download_models() == str(folder / "u2net.onnx")  # rembg takes the file as it is
    (folder / "u2net.onnx").write_bytes(model[:-1] + b"!")  # damaged since: checked again, refused
    with pytest.raises(GmError, match="md5 mismatch"):
        hub.rembg_model_dir()
