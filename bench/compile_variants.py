"""How `--compile` was tuned on the CPU (BENCHMARKS.md §7): one SD 2.1 UNet step (the §1 shape) per
inductor setting, each in a fresh process because inductor's config and caches are per process.

    python bench/compile_variants.py [eager eager-cl compile compile-cl compile-nolayout compile-freeze
                                      compile-freeze-discard]

Prints, per variant: the first (compiling) call, the median of 3 later calls, the per-call peak
and the resident-set growth over the first call (what freezing's packed weight copy costs).
"""

from __future__ import annotations

import gc
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = ("eager", "eager-cl", "compile", "compile-cl", "compile-nolayout", "compile-freeze",
            "compile-freeze-discard")


def one(variant: str) -> None:
    sys.path.insert(0, str(ROOT))
    import torch
    from torch._inductor import config as inductor_config

    from bench.cases import CPU_SIZES, _network
    from bench.measure import peak_call, rss_mib

    cpu = torch.device("cpu")
    unet = _network("sd-2.1", torch.float32, cpu)  # gm alone: no peer sharing its weights
    g = torch.Generator().manual_seed(2)
    h = CPU_SIZES.image_latent
    x, t = torch.randn(2, 4, h, h, generator=g), torch.tensor([999.0, 999.0])
    ctx = torch.randn(2, 77, 1024, generator=g)
    if "-cl" in variant:
        unet.to(memory_format=torch.channels_last)
    inductor_config.freezing = "freeze" in variant
    inductor_config.freezing_discard_parameters = "discard" in variant
    inductor_config.layout_optimization = "nolayout" not in variant
    net = torch.compile(unet, dynamic=False) if variant.startswith("compile") else unet

    def fn() -> torch.Tensor:
        return net(x, t, ctx)
    gc.collect()
    before = rss_mib()
    t0 = time.perf_counter()
    peak_call(fn, cpu)
    first = time.perf_counter() - t0
    peak = peak_call(fn, cpu)[2]
    gc.collect()
    grown = rss_mib() - before
    times = []
    with torch.inference_mode():
        for _ in range(3):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
    print(f"{variant:<24} first call {first:6.1f} s   step {statistics.median(times):.3f} s   "
          f"peak/call {peak:5.0f} MiB   RSS +{grown:6.0f} MiB", flush=True)


def main() -> None:
    if len(sys.argv) == 3 and sys.argv[1] == "--one":
        one(sys.argv[2])
        return
    chosen = sys.argv[1:] or list(VARIANTS)
    unknown = sorted(set(chosen) - set(VARIANTS))
    if unknown:
        raise SystemExit(f"unknown variant(s) {unknown}; choose from {', '.join(VARIANTS)}")
    for variant in chosen:
        subprocess.run([sys.executable, __file__, "--one", variant], check=False)


if __name__ == "__main__":
    main()
