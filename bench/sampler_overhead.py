"""Per-step cost of each sampler outside the network (BENCHMARKS.md, "Sampler overhead").

The denoiser is replaced by one that returns its input (no work), so what is timed is the
sampler's own tensor arithmetic, coefficient math and noise draws on the SD 2.1 latent of the
bench (1 x 4 x 16 x 16 on the CPU, `bench/cases.py` CPU_SIZES; --latent 96 for the 768² release
size). The share is against one SD 2.1 UNet step (CFG batch 2) at the same size, measured here with
the bench's own case (--unet) or given in seconds (--unet-seconds, e.g. from BENCHMARKS.md §1).

    OMP_NUM_THREADS=1 python bench/sampler_overhead.py --steps 50 --unet
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def sampler_seconds_per_step(name: str, latent: int, steps: int, repeats: int) -> float:
    """Median over `repeats` runs of (wall time of a `steps`-step run) / steps, with a no-op denoiser."""
    import torch

    from gm.diffusion.sampler_base import make_noise_fn
    from gm.diffusion.samplers import sample
    from gm.diffusion.schedulers import model_sigmas, scheduler_sigmas

    sigmas = scheduler_sigmas("karras", steps, model_sigmas(True))
    shape = (1, 4, latent, latent)
    noise = torch.randn(shape, generator=torch.Generator().manual_seed(0))
    times = []
    for _ in range(repeats + 1):  # the first run warms up allocator and caches
        fn = make_noise_fn(torch.Generator().manual_seed(1), shape, "cpu", torch.float32)
        start = time.perf_counter()
        sample(name, lambda x, sigma: x, noise, sigmas, noise_fn=fn)
        times.append((time.perf_counter() - start) / steps)
    return statistics.median(times[1:])


def unet_step_seconds(repeats: int) -> float:
    """One SD 2.1 UNet call at the bench's CPU size (the sd21-unet-step case), median of `repeats`."""
    import torch

    from bench.cases import CPU_SIZES, sd21_unet

    case = sd21_unet(CPU_SIZES, torch.float32, torch.device("cpu"))
    with torch.inference_mode():
        case.gm()
        times = []
        for _ in range(repeats):
            start = time.perf_counter()
            case.gm()
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from gm.diffusion.samplers import A1111_SAMPLER_NAMES

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=50)
    parser.add_argument("--latent", type=int, default=16, help="latent side (16 = the CPU bench size)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--unet", action="store_true", help="measure the SD 2.1 UNet step here (16² only)")
    parser.add_argument("--unet-seconds", type=float, default=None, help="or give its time in seconds")
    args = parser.parse_args()
    unet = unet_step_seconds(3) if args.unet else args.unet_seconds
    print(f"torch {torch.__version__}, {torch.get_num_threads()} thread(s), latent 1x4x{args.latent}x{args.latent}, "
          f"{args.steps} karras steps" + (f", SD 2.1 UNet step {unet:.3f} s" if unet else ""))
    print("| sampler | A1111 name | per step, outside the network | share of a UNet step |")
    print("|---|---|---|---|")
    for name, label in A1111_SAMPLER_NAMES.items():
        per_step = sampler_seconds_per_step(name, args.latent, args.steps, args.repeats)
        share = f"{100 * per_step / unet:.3f} %" if unet else "–"
        print(f"| `{name}` | {label} | {per_step * 1e6:.0f} µs | {share} |")


if __name__ == "__main__":
    main()
