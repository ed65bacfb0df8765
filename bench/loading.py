"""Checkpoint loading: gm's meta-build + mmap `load_engine` against the plain path, fresh processes.

A full-size random checkpoint in the released layout is streamed to a temporary folder from a
manifest (fp16, like the released files). Each way of loading runs in its own Python process,
which reports its wall time, its RSS after imports and its peak RSS (VmHWM; ru_maxrss too):
* gm:    `load_engine(preset, file, dtype=fp16, vae_dtype=fp16)` (meta build, strict mmap load),
  then one read of every weight (so that lazily mapped pages are really in memory);
* plain: `build_engine(preset)` with random init in fp16, `safetensors.torch.load_file`,
  `load_state_dict(strict=True)` of the keys the model has.
Run as `python bench/loading.py WORKER PRESET FILE` for one worker (prints one JSON line).
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MANIFESTS = {"sdxl-base-1.0": "sdxl-base.json", "sd-2.1": "sd-2.1.json"}


def _status_mib(field: str) -> float:
    """VmRSS / VmHWM of this process. (ru_maxrss is not used: Linux carries the forking parent's
    peak over into the child, which inflates a child's baseline.)"""
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(field + ":")) / 1024


def _touch(module) -> float:
    """Read every weight once (sum of the first element of each 4 KiB page); returns seconds."""
    import torch

    t0 = time.perf_counter()
    with torch.inference_mode():
        for p in module.state_dict().values():
            flat = p.reshape(-1)
            flat[:: max(1, 4096 // p.element_size())].float().sum()
    return time.perf_counter() - t0


def worker(kind: str, preset_name: str, path: Path) -> dict:
    import torch

    from gm import presets
    from gm.loader import load_engine
    from gm.models.build import build_engine

    preset = presets.load(preset_name)
    base = _status_mib("VmRSS")
    t0 = time.perf_counter()
    if kind == "gm":
        engine = load_engine(preset, path, dtype=torch.float16, vae_dtype=torch.float16)
    else:
        from safetensors.torch import load_file

        torch.set_default_dtype(torch.float16)
        engine = build_engine(preset)
        state = load_file(str(path))
        keys = set(engine.state_dict())
        engine.load_state_dict({k: v for k, v in state.items() if k in keys}, strict=True)
        del state
    load_s = time.perf_counter() - t0
    touch_s = _touch(engine)
    return {"kind": kind, "load_s": load_s, "touch_s": touch_s, "base_rss_mib": base,
            "peak_rss_mib": _status_mib("VmHWM"),
            "ru_maxrss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def _run_worker(kind: str, preset_name: str, path: Path) -> dict:
    out = subprocess.run([sys.executable, __file__, kind, preset_name, str(path)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def run(preset_name: str, manifest_dir: Path, tmp_root: str | None = None) -> dict:
    """Write the random checkpoint, then time gm's and the plain load in fresh processes."""
    from bench.weights import write_random_checkpoint

    with tempfile.TemporaryDirectory(prefix="gm-bench-", dir=tmp_root) as tmp:
        path = Path(tmp) / "random.safetensors"
        t0 = time.perf_counter()
        size = write_random_checkpoint(manifest_dir / MANIFESTS[preset_name], path)
        write_s = time.perf_counter() - t0
        results = {kind: _run_worker(kind, preset_name, path) for kind in ("gm", "plain")}
    return {"preset": preset_name, "file_mib": size / 2**20, "write_s": write_s, **results}


if __name__ == "__main__":
    sys.path.insert(0, str(ROOT))
    print(json.dumps(worker(sys.argv[1], sys.argv[2], Path(sys.argv[3]))))
