"""`make bench`: gm vs diffusers per call, checkpoint loading, CLI start-up; prints a report.

Usage: python bench/run.py [--cases a,b] [--compile] [--load-preset sd-2.1|sdxl-base-1.0|none] [--json out.json]
On a GPU the release resolutions are used (bf16 by default); on the CPU small spatial sizes with
the released channel/depth configurations in fp32 (bench/cases.py).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from bench import loading, startup  # noqa: E402
from bench.cases import CASES, CPU_SIZES, GPU_SIZES  # noqa: E402
from bench.models import CaseResult, run_case  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def machine() -> dict:
    cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo") if line.startswith("model name")),
               platform.processor())
    mem = next(int(line.split()[1]) for line in open("/proc/meminfo") if line.startswith("MemTotal"))
    info = {"cpu": cpu, "cores": torch.get_num_threads(), "ram_gib": round(mem / 2**20, 1),
            "torch": torch.__version__, "python": platform.python_version(),
            "loadavg": open("/proc/loadavg").read().split()[:3]}
    try:
        import diffusers
        import transformers

        info["diffusers"], info["transformers"] = diffusers.__version__, transformers.__version__
    except ImportError:
        pass
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name()
    return info


def print_case(r: CaseResult) -> None:
    g = r.gm
    line = f"{r.name:<20} {r.shape:<34} {r.params_m:7.0f}M  gm {g.median_s:8.3f}s {g.peak_mib:7.0f}MiB"
    if r.peer is not None:
        p = r.peer
        line += (f" | diffusers {p.median_s:8.3f}s {p.peak_mib:7.0f}MiB | gm/peer {g.median_s / p.median_s:5.2f}x"
                 f" | max|diff| {r.max_abs_diff:.2e} (rel {r.rel_diff:.1e})")
    else:
        line += f" | peer skipped: {r.skip_reason}"
    if r.name.endswith("unet-step"):
        line += f" | {1 / g.median_s:.3f} it/s (one CFG step)"
    if r.compiled:
        line += f" | compiled, first call {r.first_call_s:.0f}s"
    print(line + f"  [n={len(g.runs)}, build {r.build_s:.0f}s]", flush=True)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--cases", default=",".join(CASES), help="comma-separated subset of " + ", ".join(CASES))
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtype", choices=list(DTYPES), default=None, help="default: fp32 on CPU, bf16 on GPU")
    ap.add_argument("--budget", type=float, default=20.0, help="seconds of timed calls per model (2-5 calls)")
    ap.add_argument("--load-preset", default="sd-2.1", help="sd-2.1 | sdxl-base-1.0 | none")
    ap.add_argument("--manifests", type=Path, default=ROOT.parent / "shared" / "manifests")
    ap.add_argument("--compile", action="store_true", help="torch.compile gm's calls (the peer stays eager)")
    ap.add_argument("--json", type=Path, default=None, help="also write every figure here")
    args = ap.parse_args()
    device = torch.device(args.device)
    dtype = DTYPES[args.dtype or ("fp32" if device.type == "cpu" else "bf16")]
    sizes = CPU_SIZES if device.type == "cpu" else GPU_SIZES
    tolerance = 1e-4 if dtype == torch.float32 else 2e-2
    report: dict = {"machine": machine(), "device": str(device), "dtype": str(dtype), "sizes": sizes.__dict__}
    print("machine:", json.dumps(report["machine"]), flush=True)
    t_start = time.perf_counter()

    print("\n== start-up (median of 7, goal <= 0.3 s, no torch) ==", flush=True)
    report["startup"] = startup.run()
    for s in report["startup"]:
        print(f"{s['command']:<20} {s['median_s']:.3f}s  imports torch: {s['imports_torch']}", flush=True)
    if any(s["median_s"] > 0.3 for s in report["startup"]):
        report["slowest_imports"] = startup.slowest_imports(["--help"])
        print("slowest top-level imports of `gm --help`:",
              ", ".join(f"{name} {sec:.3f}s" for sec, name in report["slowest_imports"]), flush=True)

    print(f"\n== per call, gm{' (compiled)' if args.compile else ''} vs diffusers, same weights and inputs "
          f"({device}, {dtype}) ==", flush=True)
    report["cases"] = []
    for name in [c for c in args.cases.split(",") if c]:
        result = run_case(name, sizes, dtype, device, args.budget, tolerance, args.compile)
        print_case(result)
        report["cases"].append(result.to_dict())

    if args.load_preset != "none":
        print(f"\n== checkpoint loading ({args.load_preset}, fp16, fresh processes) ==", flush=True)
        res = loading.run(args.load_preset, args.manifests)
        report["loading"] = res
        size = res["file_mib"]
        print(f"file {size:.0f} MiB written in {res['write_s']:.1f}s", flush=True)
        for kind in ("gm", "plain"):
            r = res[kind]
            delta = r["peak_rss_mib"] - r["base_rss_mib"]
            print(f"{kind:<6} load {r['load_s']:7.2f}s  + read all {r['touch_s']:5.2f}s  peak RSS "
                  f"{r['peak_rss_mib']:7.0f} MiB (+{delta:.0f} over imports = {delta / size:.2f}x file)", flush=True)
        gm_total = res["gm"]["load_s"] + res["gm"]["touch_s"]
        plain_total = res["plain"]["load_s"] + res["plain"]["touch_s"]
        print(f"plain/gm time {plain_total / gm_total:.1f}x (goal >= 2x)", flush=True)

    report["machine"]["loadavg_end"] = open("/proc/loadavg").read().split()[:3]
    print(f"\ntotal {time.perf_counter() - t_start:.0f}s; load average at start {report['machine']['loadavg']}, "
          f"at end {report['machine']['loadavg_end']}", flush=True)
    if args.json:
        args.json.write_text(json.dumps(report, indent=1, default=str))


if __name__ == "__main__":
    main()
