"""Choosing settings from the plan: the least costly ones whose peak fits a budget.

The knobs act on separate phases, so each is chosen on its own phase, cheapest first:
* decode (and VAE-encode) chunk: the largest number of frames per call that fits (fewer calls);
  for image VAEs, tiles (latent side 64, then 32) only when one whole image does not fit;
* CFG: one batch of 2 when it fits, else two passes (same maths, about the same time on a busy GPU);
* staging (low-VRAM): only when some phase does not fit with every module resident; it costs a
  host-to-device copy of each module per phase.
If even the cheapest-in-memory settings exceed the budget, a GmError names the smallest budget.
"""

from __future__ import annotations

from collections.abc import Callable

from gm.errors import GmError
from gm.plan.planner import Plan, Planner, Settings

TILES = (64, 32)  # latent tile sides tried for image decode (512 and 256 pixels)
GB = 1e9


def _largest(lo: int, hi: int, fits: Callable[[int], bool]) -> int | None:
    """The largest n in [lo, hi] with fits(n), assuming fits is monotone (True below some n)."""
    if not fits(lo):
        return None
    while lo < hi:
        mid = (lo + hi + 1) // 2
        if fits(mid):
            lo = mid
        else:
            hi = mid - 1
    return lo


def decode_frames_that_fit(planner: Planner, budget: int, staging: bool = False, most: int = 0,
                           count_weights: bool = True) -> int:
    """Largest decode chunk (frames per call, at most `most` or all) whose decode phase fits `budget`
    bytes; 0 when not even one frame fits. With `count_weights` the budget covers the resident weights
    too (a plan before loading); without, only what the call adds (the device's free memory once the
    weights are loaded). Replaces the bytes-per-pixel constant: the decoder's own live set at this
    size and dtype."""
    top = planner.total_frames() if most <= 0 else min(most, planner.total_frames())

    def fits(n: int) -> bool:
        phase = planner.decode_phase(Settings(decode_chunk=n, staging=staging))
        return planner.phase_peak(phase) - (0 if count_weights else phase.weights) <= budget

    return _largest(1, top, fits) or 0


def _encode_chunk(planner: Planner, budget: int, staging: bool, top: int | None) -> int | None | bool:
    """Largest VAE-encode chunk that fits (None = the preset's own fits; False = nothing fits)."""
    def fits(n: int | None) -> bool:
        return planner.phase_peak(planner.encode_phase(Settings(encode_chunk=n, staging=staging))) <= budget

    if fits(None):
        return None
    if not top:
        return False
    found = _largest(1, top, fits)
    return False if found is None else found


def _encoder_frames(planner: Planner) -> int:
    """Frames of the largest VAE-encoder input (0 when the conditioner has no VAE encoder)."""
    emb = planner.engine.embedders
    if emb is None:
        return 0
    sizes = [e.config.n_cond_frames * planner.work.batch for e in emb.embedders
             if type(e).__name__ == "VAEEncoderEmbedder"]
    return max(sizes, default=0)


def _try(planner: Planner, budget: int, staging: bool, base: Settings,
         tiles: tuple[int, ...] = TILES) -> Settings | None:
    s = Settings(decode_chunk=base.decode_chunk, staging=staging)
    enc = _encode_chunk(planner, budget, staging, _encoder_frames(planner))
    if enc is False:
        return None
    s = Settings(decode_chunk=s.decode_chunk, encode_chunk=enc, staging=staging)
    if planner.phase_peak(planner.sample_phase(s)) > budget:
        if not planner.work.cfg:
            return None
        s = Settings(decode_chunk=s.decode_chunk, encode_chunk=enc, two_pass_cfg=True, staging=staging)
        if planner.phase_peak(planner.sample_phase(s)) > budget:
            return None
    if planner.engine.vae is None:
        return s
    chunk = decode_frames_that_fit(planner, budget, staging, most=base.decode_chunk)
    if chunk:
        return Settings(chunk, s.encode_chunk, s.two_pass_cfg, staging)
    if planner.work.rows > 1 and _temporal(planner):
        return None
    for tile in tiles:
        if tile >= max(planner.work.latent):
            continue
        t = Settings(1, s.encode_chunk, s.two_pass_cfg, staging, tile)
        if planner.phase_peak(planner.decode_phase(t)) <= budget:
            return t
    return None


def _temporal(planner: Planner) -> bool:
    from gm.plan.workload import decoder_frames

    return decoder_frames(planner.engine)


def smallest(planner: Planner, tiles: tuple[int, ...] = TILES) -> Settings:
    """The settings with the least memory: staging, two passes, one frame (smallest tile) per call."""
    tile = None if _temporal(planner) else min((t for t in tiles if t < max(planner.work.latent)), default=None)
    return Settings(decode_chunk=1, encode_chunk=1 if _encoder_frames(planner) else None,
                    two_pass_cfg=planner.work.cfg, staging=True, decode_tile=tile)


def fit(planner: Planner, budget: int, base: Settings | None = None, tiles: tuple[int, ...] = TILES) -> Plan:
    """The plan with the least costly settings whose every phase fits `budget` bytes (`tiles`: the
    latent tile sides the run can decode with; () where it has no tiled decode)."""
    base = base or planner.default_settings()
    for staging in (True,) if base.staging else (False, True):
        chosen = _try(planner, budget, staging, base, tiles)
        if chosen is not None:
            plan = planner.plan(chosen, budget)
            plan.notes.extend(describe(planner, base, chosen))
            return plan
    need = planner.plan(smallest(planner, tiles)).peak
    raise GmError(
        f"no settings fit {budget / GB:.1f} GB: the smallest plan needs {need / GB:.1f} GB "
        f"(staging, two-pass CFG, one frame per VAE call)",
        f"use --max-vram {need / GB + 0.05:.1f} or more, or lower the size/frames",
    )


def describe(planner: Planner, base: Settings, s: Settings) -> list[str]:
    """One line per setting the fitter changed from the preset's."""
    out = []
    total = planner.total_frames()
    if (s.decode_chunk or total) < (base.decode_chunk or total):
        out.append(f"decode {s.decode_chunk} frame(s) per call (of {total})")
    if s.encode_chunk is not None and s.encode_chunk != base.encode_chunk:
        out.append(f"VAE-encode {s.encode_chunk} frame(s) per call")
    if s.two_pass_cfg:
        out.append("CFG as two passes (uncond, then cond) instead of one batch of 2")
    if s.staging and not base.staging:
        out.append("staging: only the active phase's weights on the device (--low-vram)")
    if s.decode_tile:
        out.append(f"tiled decode: {8 * s.decode_tile}px tiles")
    return out
