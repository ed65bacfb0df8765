"""Tiled VAE decode and encode for large images, and the memory estimate that decides when to tile.

The KL VAE's activation memory grows with the pixel count (the decoder's last levels run 128
channels at full resolution). Tiling runs it on overlapping latent tiles and blends the overlaps
with cosine ramps that sum to one, so no seam shows; each tile's border (where its convolutions saw
zero padding) gets a weight near zero. The VAE's GroupNorms and mid-block attention see one tile
at a time, so a tiled result differs slightly from the untiled one (tests pin how much); when one
tile covers the whole latent the plain call runs and the result is the untiled one, bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# Peak bytes per image pixel of an untiled fp32 call of the SD/SDXL f8 VAE (ch 128, ch_mult
# 1-2-4-4) on the CPU, from `python bench/vae_tiling.py --fit`: the resident-set growth of one call
# at 256², 384² and 512², fitted linearly: decode 3583 B/px + 1 MiB, encode 2560 B/px + 1 MiB
# (the per-size figures agree within 0.5 %). Rounded up for GPU convolution workspaces.
DECODE_BYTES_PER_PIXEL_FP32 = 3600
ENCODE_BYTES_PER_PIXEL_FP32 = 2600
DEFAULT_TILE = 64  # latent pixels (512 image pixels)
DEFAULT_OVERLAP = 16  # latent pixels (128 image pixels)


def decode_bytes(height: int, width: int, dtype: torch.dtype = torch.float32) -> int:
    """Estimated peak activation bytes of an untiled decode to a height x width image."""
    size = torch.empty((), dtype=dtype).element_size()
    return int(DECODE_BYTES_PER_PIXEL_FP32 * height * width * size / 4)


def encode_bytes(height: int, width: int, dtype: torch.dtype = torch.float32) -> int:
    """Estimated peak activation bytes of an untiled encode of a height x width image."""
    size = torch.empty((), dtype=dtype).element_size()
    return int(ENCODE_BYTES_PER_PIXEL_FP32 * height * width * size / 4)


def should_tile(mode: str, height: int, width: int, dtype: torch.dtype, free: int | None,
                estimate: Callable[[int, int, torch.dtype], int] = decode_bytes, budget: int | None = None) -> bool:
    """`--vae-tiling auto|on|off`: auto tiles when the estimate exceeds 90 % of the free memory
    (`free` None = unknown, e.g. the CPU) or the optional `budget` (e.g. the video decode's
    DECODE_BUDGET); with neither known it does not tile."""
    if mode not in ("auto", "on", "off"):
        raise ValueError(f"vae tiling mode must be auto, on or off, not {mode!r}")
    if mode != "auto":
        return mode == "on"
    limits = [int(0.9 * free)] if free is not None else []
    limits += [budget] if budget is not None else []
    return bool(limits) and estimate(height, width, dtype) > min(limits)


def tile_starts(size: int, tile: int, overlap: int) -> list[int]:
    """Start offsets of tiles of `tile` covering [0, size) with at least `overlap` in common,
    spread evenly (the last tile ends at `size`)."""
    if not 0 <= overlap < tile:
        raise ValueError(f"tile overlap must be in [0, tile), got overlap {overlap} for tile {tile}")
    if size <= tile:
        return [0]
    n = math.ceil((size - tile) / (tile - overlap)) + 1
    return [round(i * (size - tile) / (n - 1)) for i in range(n)]


def _ramp(n: int) -> torch.Tensor:
    """n weights rising from ~0 to ~1 along a half cosine; ramp + flipped ramp = 1 exactly."""
    x = (torch.arange(n, dtype=torch.float64) + 0.5) / n
    return (0.5 - 0.5 * torch.cos(math.pi * x)).float()


def _axis_weights(starts: list[int], i: int, tile: int, factor: int) -> torch.Tensor:
    """Blend weights along one axis for tile i (in output pixels)."""
    length = tile * factor
    w = torch.ones(length)
    if i > 0:
        rise = (starts[i - 1] + tile - starts[i]) * factor
        w[:rise] = torch.minimum(w[:rise], _ramp(rise))
    if i < len(starts) - 1:
        fall = (starts[i] + tile - starts[i + 1]) * factor
        w[length - fall:] = torch.minimum(w[length - fall:], _ramp(fall).flip(0))
    return w


def blend_tiles(fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor, tile: int, overlap: int,
                scale: float) -> torch.Tensor:
    """fn applied to overlapping (tile x tile) windows of x (B, C, H, W), outputs blended.

    `scale` = output size / input size (8 for a decode, 1/8 for an encode); `tile` and `overlap` are
    in the units where the tile is smaller (latent pixels), which must map to whole pixels on both
    sides."""
    down = scale < 1
    f = round(1 / scale) if down else round(scale)
    unit = f if down else 1  # input pixels per tile unit
    _, _, h, w = x.shape
    ys = tile_starts(h // unit, tile, overlap)
    xs = tile_starts(w // unit, tile, overlap)
    th, tw = min(tile, h // unit), min(tile, w // unit)
    out = weight = None
    for i, y0 in enumerate(ys):
        for j, x0 in enumerate(xs):
            piece = fn(x[:, :, y0 * unit:(y0 + th) * unit, x0 * unit:(x0 + tw) * unit])
            out_f = 1 if down else f  # output pixels per tile unit
            if out is None:
                out = torch.zeros(*piece.shape[:2], (h // unit) * out_f, (w // unit) * out_f,
                                  dtype=torch.float32, device=piece.device)
                weight = torch.zeros(1, 1, *out.shape[2:], dtype=torch.float32, device=piece.device)
            mask = (_axis_weights(ys, i, th, out_f)[:, None] * _axis_weights(xs, j, tw, out_f)[None, :]).to(piece.device)
            window = (slice(None), slice(None), slice(y0 * out_f, (y0 + th) * out_f), slice(x0 * out_f, (x0 + tw) * out_f))
            out[window] += piece.float() * mask
            weight[window] += mask
            del piece
    assert out is not None and weight is not None
    return out / weight


def decode_tiled(vae, z: torch.Tensor, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP,
                 decode: Callable[[torch.Tensor], torch.Tensor] | None = None) -> torch.Tensor:
    """`vae.decode(z)` in overlapping latent tiles of `tile` with `overlap` (latent pixels).
    One tile covering z: exactly `vae.decode(z)`. `decode` replaces the call (e.g. a compiled one)."""
    decode = vae.decode if decode is None else decode
    if z.shape[-2] <= tile and z.shape[-1] <= tile:
        return decode(z)
    # The output / latent ratio: 2 ** (levels - 1) for the KL VAE (8 for every release).
    factor = 2 ** (len(vae.cfg.ch_mult) - 1)
    return blend_tiles(decode, z, tile, overlap, factor).to(z.dtype)


def encode_tiled(vae, x: torch.Tensor, tile: int = DEFAULT_TILE, overlap: int = DEFAULT_OVERLAP
                 ) -> tuple[torch.Tensor, torch.Tensor]:
    """`vae.encode(x)` -> (mean, logvar) on overlapping image tiles of `tile` latent pixels
    (x 8 image pixels) with `overlap`; the blended moments are clamped as `vae.encode` does. One tile
    covering x: exactly `vae.encode(x)`. x must be a multiple of the VAE factor in size."""
    factor = 2 ** (len(vae.cfg.ch_mult) - 1)
    if x.shape[-2] <= tile * factor and x.shape[-1] <= tile * factor:
        return vae.encode(x)
    if x.shape[-2] % factor or x.shape[-1] % factor:
        raise ValueError(f"tiled encode needs a size divisible by {factor}, got {tuple(x.shape[-2:])}")
    moments = blend_tiles(vae.encode_moments, x, tile, overlap, 1 / factor).to(x.dtype)
    mean, logvar = moments.chunk(2, dim=1)
    return mean, logvar.clamp(-30.0, 20.0)
