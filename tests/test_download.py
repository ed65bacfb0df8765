"""`gm download` against a fake Hugging Face Hub and a fake dataset mirror on 127.0.0.1.

The fake Hub speaks the URL layout and headers hf_hub_download relies on (huggingface_hub
file_download.py / utils/_http.py): HEAD and GET `/{repo}/resolve/{revision}/{filename}`,
`X-Repo-Commit`, `ETag` (the LFS sha256), `Content-Length`, HTTP Range (206), and errors with
`X-Error-Code` (GatedRepo, EntryNotFound). gm runs in a subprocess so that HF_ENDPOINT, HF_HOME
and HF_HUB_OFFLINE are read the way a user's shell sets them.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import subprocess
import sys
import tarfile
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAYLOAD = os.urandom(300_000)  # a "checkpoint"
SHA = hashlib.sha256(PAYLOAD).hexdigest()
# huggingface_hub resumes after a drop from the last whole 10 MiB chunk it wrote
# (constants.DOWNLOAD_CHUNK_SIZE), so the dropped file must be bigger than that.
BIG = os.urandom(24 << 20)
BIG_SHA = hashlib.sha256(BIG).hexdigest()


class FakeServer:
    """Files by URL path; misbehaviour per path: gated (401/403), drop once mid-body, wrong bytes."""

    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.etags: dict[str, str] = {}
        self.status: dict[str, tuple[int, str]] = {}  # path -> (HTTP status, X-Error-Code)
        self.drop_once: set[str] = set()
        self.requests: list[tuple[str, str, str]] = []  # (method, path, Range)
        server = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args: object) -> None:
                pass

            def do_HEAD(self) -> None:
                self.answer(body=False)

            def do_GET(self) -> None:
                self.answer(body=True)

            def answer(self, body: bool) -> None:
                path = self.path.split("?")[0]
                server.requests.append((self.command, path, self.headers.get("Range", "")))
                if path in server.status:
                    code, error = server.status[path]
                    self.send_response(code)
                    self.send_header("X-Error-Code", error)
                    self.send_header("X-Repo-Commit", COMMIT)
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                data = server.files.get(path)
                if data is None:
                    self.send_response(404)
                    self.send_header("X-Error-Code", "EntryNotFound")
                    self.send_header("Content-Length", "0")
                    self.end_headers()
                    return
                start = 0
                rng = self.headers.get("Range", "")
                if rng.startswith("bytes=") and body:
                    start = int(rng[6:].split("-")[0])
                    if start >= len(data):
                        self.send_response(416)
                        self.send_header("Content-Length", "0")
                        self.end_headers()
                        return
                self.send_response(206 if start else 200)
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                self.send_header("Content-Length", str(len(data) - start))
                self.send_header("X-Repo-Commit", COMMIT)
                self.send_header("ETag", f'"{server.etags.get(path, hashlib.sha256(data).hexdigest())}"')
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                if not body:
                    return
                if path in server.drop_once and not start:
                    server.drop_once.discard(path)
                    self.wfile.write(data[: len(data) * 2 // 3])
                    self.wfile.flush()
                    self.close_connection = True
                    self.connection.shutdown(2)  # the connection dies mid-body
                    return
                self.wfile.write(data[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True)
        self.watchdog = threading.Timer(120, self.httpd.shutdown)  # bounded: stops itself

    def __enter__(self) -> FakeServer:
        self.thread.start()
        self.watchdog.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.watchdog.cancel()
        self.httpd.shutdown()
        self.httpd.server_close()


PRESET = """name = "{name}"
family = "image"
[checkpoint]
file = "{file}"
repo = "{repo}"
sha256 = "{sha}"
gated = {gated}
license = "test licence"
size_gb = 0.0003
[network]
arch = "unet"
"""


@pytest.fixture
def env(tmp_path: Path) -> Iterator[tuple[FakeServer, dict[str, str], Path]]:
    presets = tmp_path / "presets"
    presets.mkdir()
    for name, file, repo, sha, gated in [
        ("fake-ok", "ok.safetensors", "org/ok", SHA, "false"),
        ("fake-nohash", "nohash.safetensors", "org/nohash", "", "false"),
        ("fake-gated", "gated.safetensors", "org/gated", "", "true"),
        ("fake-forbidden", "forbidden.safetensors", "org/forbidden", "", "true"),
        ("fake-missing", "missing.safetensors", "org/ok", "", "false"),
        ("fake-corrupt", "corrupt.safetensors", "org/corrupt", SHA, "false"),
        ("fake-drop", "drop.safetensors", "org/drop", BIG_SHA, "false"),
    ]:
        (presets / f"{name}.toml").write_text(PRESET.format(name=name, file=file, repo=repo, sha=sha, gated=gated))
    work = tmp_path / "work"
    work.mkdir()
    with FakeServer() as server:
        for repo, file in [("org/ok", "ok.safetensors"), ("org/nohash", "nohash.safetensors")]:
            server.files[f"/{repo}/resolve/main/{file}"] = PAYLOAD
        server.files["/org/drop/resolve/main/drop.safetensors"] = BIG
        server.files["/org/corrupt/resolve/main/corrupt.safetensors"] = PAYLOAD[::-1]
        server.status["/org/gated/resolve/main/gated.safetensors"] = (401, "GatedRepo")
        server.status["/org/forbidden/resolve/main/forbidden.safetensors"] = (403, "GatedRepo")
        server.drop_once.add("/org/drop/resolve/main/drop.safetensors")
        environ = {k: v for k, v in os.environ.items() if not k.startswith(("HF_", "GM_", "HUGGING"))}
        environ.update(HF_ENDPOINT=server.url, HF_HOME=str(tmp_path / "hf"), HF_HUB_DISABLE_XET="1",
                       HF_HUB_OFFLINE="0", GM_PRESETS=str(presets), GM_DATA_MIRROR=f"{server.url}/mirror",
                       PYTHONPATH=str(ROOT), U2NET_HOME=str(tmp_path / "u2net"), XDG_CACHE_HOME=str(tmp_path / "xdg"))
        yield server, environ, work


def gm(environ: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "commands.app", "download", *args], env=environ, cwd=cwd,
                          capture_output=True, text=True, timeout=120)


def snapshot(environ: dict[str, str], repo: str, name: str) -> Path:
    """Where huggingface_hub keeps `repo/name` in the cache of this test's HF_HOME."""
    return Path(environ["HF_HOME"]) / "hub" / f"models--{repo.replace('/', '--')}" / "snapshots" / COMMIT / name


def lookup(environ: dict[str, str], cwd: Path, preset: str) -> str:
    """The file gm would load for `preset` (gm.checkpoint.find_checkpoint, in a subprocess)."""
    code = f"from gm import presets; from gm.checkpoint import find_checkpoint as f; print(f(presets.load({preset!r})))"
    return subprocess.run([sys.executable, "-c", code], env=environ, cwd=cwd, capture_output=True, text=True,
                          timeout=60, check=True).stdout.strip()


def test_checkpoint_into_the_hf_cache_verified_and_found(env) -> None:
    server, environ, work = env
    proc = gm(environ, work, "fake-ok", "--json")
    assert proc.returncode == 0, proc.stderr
    record = json.loads(proc.stdout)
    final = snapshot(environ, "org/ok", "ok.safetensors")
    assert record == {"path": str(final), "name": "fake-ok", "kind": "checkpoint", "verified": True}
    assert final.read_bytes() == PAYLOAD and final.resolve().name == SHA  # the Hub's own blob layout
    assert not (work / "checkpoints").exists() and not list(final.parent.glob(".gm-*"))  # nothing of gm's in there
    assert ("HEAD", "/org/ok/resolve/main/ok.safetensors", "") in server.requests
    assert lookup(environ, work, "fake-ok") == str(final)  # loading finds what download fetched
    # Present: no second GET; --verify re-hashes and still says verified; the hash is cached for provenance.
    gets = sum(1 for r in server.requests if r[0] == "GET")
    again = gm(environ, work, "fake-ok", "--verify", "--json")
    assert again.returncode == 0 and json.loads(again.stdout)["verified"] is True
    assert sum(1 for r in server.requests if r[0] == "GET") == gets
    hashes = json.loads((Path(environ["XDG_CACHE_HOME"]) / "gm" / "hashes.json").read_text())
    assert hashes[str(final.resolve())]["sha256"] == SHA
    # A file changed behind gm's back: --verify finds it, exit 1, names the file.
    final.resolve().write_bytes(PAYLOAD[:-1] + b"\0")
    bad = gm(environ, work, "fake-ok", "--verify")
    assert bad.returncode == 1 and "sha256 mismatch" in bad.stderr and "ok.safetensors" in bad.stderr


def test_file_in_a_checkpoint_folder_is_not_fetched_again(env, tmp_path: Path) -> None:
    """A ComfyUI-style tree in GM_CHECKPOINTS already holds the file: --list, lookup and download agree."""
    server, environ, work = env
    comfy = tmp_path / "ComfyUI" / "models" / "checkpoints"
    (comfy / "sdxl").mkdir(parents=True)
    (comfy / "sdxl" / "ok.safetensors").write_bytes(PAYLOAD)
    environ = {**environ, "GM_CHECKPOINTS": os.pathsep.join([str(tmp_path / "nowhere"), str(comfy)])}
    listed = {r["name"]: r for r in map(json.loads, gm(environ, work, "--list", "--json").stdout.splitlines())}
    assert listed["fake-ok"]["present"] is True and listed["fake-ok"]["path"] == str(comfy / "sdxl")
    assert listed["fake-ok"]["verified"] is None  # not hashed yet: --list never reads 7 GB files
    proc = gm(environ, work, "fake-ok", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["path"] == str(comfy / "sdxl" / "ok.safetensors")
    assert "already present at" in proc.stderr and not server.requests
    assert lookup(environ, work, "fake-ok") == str(comfy / "sdxl" / "ok.safetensors")
    verified = gm(environ, work, "fake-ok", "--verify", "--json")
    assert json.loads(verified.stdout)["verified"] is True and not server.requests


def test_hub_etag_used_when_no_published_hash(env, tmp_path: Path) -> None:
    _, environ, work = env
    target = tmp_path / "elsewhere"
    proc = gm(environ, work, "fake-nohash", "--dir", str(target), "--json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["verified"] is True
    assert (target / "nohash.safetensors").read_bytes() == PAYLOAD
    cache = json.loads((target / ".gm-verified.json").read_text())
    assert cache["nohash.safetensors"]["expected"] == SHA


def test_gated_404_and_sha_mismatch(env) -> None:
    """One run, four failures: each named on stderr, exit 1, no traceback, no file left behind."""
    _, environ, work = env
    proc = gm(environ, work, "fake-gated", "fake-forbidden", "fake-missing", "fake-corrupt")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    lines = proc.stderr.splitlines()
    gated, forbidden, missing, corrupt = (next(line for line in lines if f"{n}:" in line) for n in
                                          ("fake-gated", "fake-forbidden", "fake-missing", "fake-corrupt"))
    for line, repo, code in ((gated, "org/gated", 401), (forbidden, "org/forbidden", 403)):
        assert f"accept the licence at https://huggingface.co/{repo} and set HF_TOKEN" in line
        assert f"HTTP {code}" in line and "not found" not in line
    assert "missing.safetensors not found in org/ok (HTTP 404)" in missing
    assert "the preset's checkpoint.file or checkpoint.repo no longer matches the Hub" in missing
    assert "sha256 mismatch" in corrupt
    cache = Path(environ["HF_HOME"])
    assert not [p for p in cache.rglob("*") if p.is_file() and p.read_bytes() == PAYLOAD[::-1]]  # bad blob removed
    assert not list(cache.rglob("corrupt.safetensors*")) and not (work / "checkpoints").exists()


def test_training_encoder_in_the_cache_or_under_the_preset_name(env) -> None:
    """clip-vit-large-patch14: the Hub's model.safetensors stays as it is in the cache (found by
    hub.installed_path); with --dir it is saved under the name txt2img-clipl's preset uses."""
    server, environ, work = env
    server.files["/openai/clip-vit-large-patch14/resolve/main/model.safetensors"] = PAYLOAD
    proc = gm(environ, work, "clip-vit-large-patch14", "--json")
    assert proc.returncode == 0, proc.stderr
    cached = snapshot(environ, "openai/clip-vit-large-patch14", "model.safetensors")
    assert json.loads(proc.stdout) == {"path": str(cached), "name": "clip-vit-large-patch14", "kind": "checkpoint",
                                       "verified": True}
    code = "from gm import hub; print(hub.installed_path('clip-vit-large-patch14'))"
    found = subprocess.run([sys.executable, "-c", code], env=environ, cwd=work, capture_output=True, text=True, timeout=60)
    assert found.stdout.strip() == str(cached)
    named = gm(environ, work, "clip-vit-large-patch14", "--dir", "checkpoints", "--force", "--json")
    final = work / "checkpoints" / "clip-vit-large-patch14.safetensors"
    assert named.returncode == 0 and json.loads(named.stdout)["path"] == str(final), named.stderr
    assert final.read_bytes() == PAYLOAD and not (work / "checkpoints" / "model.safetensors").exists()
    assert 'clip_checkpoint = "checkpoints/clip-vit-large-patch14.safetensors"' in (
        ROOT / "presets" / "txt2img-clipl.toml").read_text()
    vae = gm(environ, work, "sdxl-vae")  # not on the fake Hub: the error names the file and repo
    assert vae.returncode == 1 and "sdxl_vae.safetensors not found in stabilityai/sdxl-vae (HTTP 404)" in vae.stderr
    assert "gm's entry for sdxl-vae no longer matches the Hub" in vae.stderr  # not a preset: no preset keys named


def test_connection_drop_resumes(env) -> None:
    server, environ, work = env
    proc = gm(environ, work, "fake-drop", "--json")
    assert proc.returncode == 0, proc.stderr
    assert snapshot(environ, "org/drop", "drop.safetensors").read_bytes() == BIG
    gets = [r for r in server.requests if r[0] == "GET" and r[1].endswith("drop.safetensors")]
    assert len(gets) == 2 and gets[0][2] == "" and gets[1][2] == f"bytes={10 << 20}-"


def mnist_files() -> dict[str, bytes]:
    return {name: gzip.compress(name.encode() * 50, mtime=0) for name in
            ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
             "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}


def test_dataset_checksum_and_resume(env, monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Engine-level (the real MNIST md5s are fixed): fake files + their md5 through gm.fetch."""
    from gm import fetch

    server, _, _ = env
    data = mnist_files()["train-images-idx3-ubyte.gz"] * 200
    server.files["/mirror/a.gz"] = data
    server.drop_once.add("/mirror/a.gz")
    dest = tmp_path / "data" / "a.gz"
    md5 = hashlib.md5(data).hexdigest()
    monkeypatch.setattr(fetch.time, "sleep", lambda s: None)
    fetch.http_download(f"{server.url}/mirror/a.gz", dest, md5=md5, size=len(data))
    assert dest.read_bytes() == data and fetch.cached_digest(dest, "md5") == md5
    ranges = [r[2] for r in server.requests if r[1] == "/mirror/a.gz"]
    assert ranges == ["", f"bytes={len(data) * 2 // 3}-"]
    # A partial file from an earlier run is resumed, not restarted.
    part = dest.parent / ".b.gz.part"
    server.files["/mirror/b.gz"] = data
    part.write_bytes(data[:1000])
    fetch.http_download(f"{server.url}/mirror/b.gz", dest.parent / "b.gz", md5=md5)
    assert (dest.parent / "b.gz").read_bytes() == data and not part.exists()
    assert server.requests[-1][2] == "bytes=1000-"
    # Wrong checksum: an error, no final file, no part file to resume from.
    with pytest.raises(Exception, match="md5 mismatch"):
        fetch.http_download(f"{server.url}/mirror/a.gz", dest.parent / "c.gz", md5="0" * 32)
    assert not (dest.parent / "c.gz").exists() and not (dest.parent / ".c.gz.part").exists()


def test_mnist_cli_with_real_checksums_reports_mismatch(env) -> None:
    """The CLI checks the published md5s: the fake mirror's files fail them, and nothing is kept."""
    server, environ, work = env
    for name, blob in mnist_files().items():
        server.files[f"/mirror/{name}"] = blob
    proc = gm(environ, work, "mnist")
    assert proc.returncode == 1 and "size 57 bytes, expected 9912422" in proc.stderr
    assert not [p for p in (work / ".data" / "mnist").iterdir() if p.name.endswith(".gz")]


def test_cifar_extract_safely(tmp_path: Path) -> None:
    from gm import fetch

    def tar_with(entries: dict[str, bytes]) -> Path:
        path = tmp_path / f"t{len(list(tmp_path.iterdir()))}.tar.gz"
        with tarfile.open(path, "w:gz") as tar:
            for name, blob in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(blob)
                tar.addfile(info, io.BytesIO(blob))
        return path

    good = tar_with({"cifar-10-batches-py/data_batch_1": b"x", "cifar-10-batches-py/test_batch": b"y"})
    out = fetch.safe_extract_tar(good, tmp_path / "cifar10", "cifar-10-batches-py")
    assert (out / "data_batch_1").read_bytes() == b"x"
    evil = tar_with({"cifar-10-batches-py/../../escape": b"!"})
    with pytest.raises(Exception, match="unsafe"):
        fetch.safe_extract_tar(evil, tmp_path / "cifar10b", "cifar-10-batches-py")
    assert not (tmp_path / "escape").exists() and not (tmp_path / "cifar10b" / "cifar-10-batches-py").exists()


def test_list_json(env) -> None:
    _, environ, work = env
    assert gm(environ, work, "fake-ok").returncode == 0
    proc = gm(environ, work, "--list", "--json")
    assert proc.returncode == 0, proc.stderr
    records = {r["name"]: r for r in map(json.loads, proc.stdout.splitlines())}
    assert {"fake-ok", "fake-gated", "mnist", "cifar10", "rembg-u2net"} <= set(records)
    ok = records["fake-ok"]
    assert ok["present"] is True and ok["verified"] is True and ok["gated"] is False
    assert ok["files"] == ["ok.safetensors"] and ok["source"] == "org/ok" and ok["license"] == "test licence"
    assert records["fake-gated"]["gated"] is True and records["fake-gated"]["present"] is False
    assert records["svd-xt"]["license"] == "see https://huggingface.co/stabilityai/stable-video-diffusion-img2vid-xt"
    assert records["mnist"]["kind"] == "dataset" and records["mnist"]["path"] == str(work / ".data" / "mnist")
    assert records["rembg-u2net"]["path"].endswith(os.path.join("u2net", "models", "u2net"))
    plain = gm(environ, work, "--list")
    assert any(line.startswith("fake-ok\tcheckpoint") and "present" in line for line in plain.stdout.splitlines())


def test_usage_errors(env) -> None:
    _, environ, work = env
    assert gm(environ, work, "no-such-thing").returncode == 2
    assert gm(environ, work).returncode == 2


def test_rembg_home_matches_rembg(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    from rembg.sessions.u2net import U2netSession

    from gm import hub

    item = hub.find_item("rembg-u2net")
    for env_name in ("U2NET_HOME", "REMBG_HOME", "XDG_DATA_HOME"):
        monkeypatch.delenv(env_name, raising=False)
    assert hub.destination(item) == Path(U2netSession.model_dir())
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg"))
    assert hub.destination(item) == Path(U2netSession.model_dir())
    monkeypatch.setenv("U2NET_HOME", str(tmp_path / "u2"))
    assert hub.destination(item) == Path(U2netSession.model_dir())
