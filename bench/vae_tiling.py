"""Peak memory of the image VAE, tiled vs untiled, and the per-pixel constants of
`gm.diffusion.tiling` (SDXL VAE configuration, random weights, fp32, CPU).

    python bench/vae_tiling.py --fit          # decode/encode at 256², 384², 512²: linear fit -> bytes/pixel
    python bench/vae_tiling.py --latent 128   # one 1024² decode untiled, then tiled (BENCHMARKS.md)

Peak memory is the resident-set growth of one call (bench/measure.py), after a warm-up call.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.cases import _vae  # noqa: E402
from bench.measure import peak_call  # noqa: E402
from gm.diffusion.tiling import DEFAULT_OVERLAP, DEFAULT_TILE, decode_tiled  # noqa: E402

CPU = torch.device("cpu")


def _fit(points: list[tuple[int, float]]) -> tuple[float, float]:
    """Least-squares (slope bytes/pixel, intercept MiB) of peak MiB against pixels."""
    n = len(points)
    mx = sum(p for p, _ in points) / n
    my = sum(m for _, m in points) / n
    slope = sum((p - mx) * (m - my) for p, m in points) / sum((p - mx) ** 2 for p, _ in points)
    return slope * 2**20, my - slope * mx


def fit(vae) -> None:
    for what in ("decode", "encode"):
        points = []
        for side in (32, 48, 64):
            if what == "decode":
                x = torch.randn(1, 4, side, side, generator=torch.Generator().manual_seed(0))
                call = lambda x=x: vae.decode(x)  # noqa: E731
            else:
                x = torch.rand(1, 3, 8 * side, 8 * side, generator=torch.Generator().manual_seed(0)) * 2 - 1
                call = lambda x=x: vae.encode_moments(x)  # noqa: E731
            peak_call(call, CPU)  # warm-up
            _, seconds, mib = peak_call(call, CPU)
            pixels = (8 * side) ** 2
            points.append((pixels, mib))
            print(f"{what} {8 * side}²: {seconds:.1f} s, peak {mib:.0f} MiB = {mib * 2**20 / pixels:.0f} B/px", flush=True)
        slope, intercept = _fit(points)
        print(f"{what}: linear fit {slope:.0f} B/px + {intercept:.0f} MiB", flush=True)


def compare(vae, latent: int, tile: int, overlap: int, untiled: bool = True) -> None:
    z = torch.randn(1, 4, latent, latent, generator=torch.Generator().manual_seed(0))
    small = z[:, :, :tile, :tile]
    peak_call(lambda: vae.decode(small), CPU)  # warm-up (one tile)
    tiled, t_tiled, mib_tiled = peak_call(lambda: decode_tiled(vae, z, tile=tile, overlap=overlap), CPU)
    print(f"tiled {tile}/{overlap} {8 * latent}²: {t_tiled:.1f} s, peak {mib_tiled:.0f} MiB", flush=True)
    if not untiled:
        return
    plain, t_plain, mib_plain = peak_call(lambda: vae.decode(z), CPU)
    print(f"untiled {8 * latent}²: {t_plain:.1f} s, peak {mib_plain:.0f} MiB", flush=True)
    diff = (tiled - plain).abs()
    print(f"max |tiled - untiled| {float(diff.max()):.4f}, mean {float(diff.mean()):.5f} "
          f"(output range {float(plain.min()):.2f}..{float(plain.max()):.2f})", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fit", action="store_true", help="measure the per-pixel constants")
    parser.add_argument("--latent", type=int, default=128, help="latent side of the large decode (128 = 1024²)")
    parser.add_argument("--tile", type=int, default=DEFAULT_TILE)
    parser.add_argument("--overlap", type=int, default=DEFAULT_OVERLAP)
    parser.add_argument("--tiled-only", action="store_true", help="skip the untiled decode")
    args = parser.parse_args()
    torch.set_grad_enabled(False)
    vae = _vae("sdxl-base-1.0", torch.float32, CPU).eval()
    if args.fit:
        fit(vae)
    else:
        compare(vae, args.latent, args.tile, args.overlap, untiled=not args.tiled_only)


if __name__ == "__main__":
    main()
