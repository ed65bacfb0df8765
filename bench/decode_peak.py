"""Peak memory per output pixel of SVD's temporal VAE decoder (fp32, CPU), the figure behind
`gm.pipelines.video.DECODE_BYTES_PER_PIXEL`: `python bench/decode_peak.py`.

Random decoder weights with the released configuration; each shape is decoded twice and the second
call's resident-set growth is reported (bench/measure.py), divided by frames x height x width.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from bench.cases import _vae  # noqa: E402
from bench.measure import peak_call  # noqa: E402


def main() -> None:
    device = torch.device("cpu")
    vae = _vae("svd", torch.float32, device)
    for frames, (h, w) in [(2, (18, 32)), (4, (18, 32)), (2, (36, 64))]:  # latents of 144x256 and 288x512
        z = torch.randn(frames, 4, h, w, generator=torch.Generator().manual_seed(0))
        peak_call(lambda z=z, n=frames: vae.decode(z, n), device)  # warm-up
        _, seconds, mib = peak_call(lambda z=z, n=frames: vae.decode(z, n), device)
        pixels = frames * 8 * h * 8 * w
        print(f"{frames} frames {8 * h}x{8 * w}: {seconds:.1f} s, peak {mib:.0f} MiB = {mib * 2**20 / pixels:.0f} B/px",
              flush=True)


if __name__ == "__main__":
    main()
