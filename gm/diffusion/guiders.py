"""Classifier-free guidance: plain CFG and the per-frame scale ramps of the video models.

Mirrors sgm `modules/diffusionmodules/guiders.py`. A guider turns one denoising call into a
batched [uc; c] call (`prepare`) and merges the two halves (`combine`):

    out = x_u + scale * (x_c - x_u)

uc comes FIRST in the doubled batch. Only "crossattn", "vector", "concat", the per-video
"image_only_indicator" (b, T) and the guider's `additional_cond_keys` (SV4D: cond_view,
cond_motion) are concatenated; any other key (e.g. num_video_frames) must be the same in c and
uc and is passed once. (The reference passes a pre-doubled (2b, T) indicator outside the
conditioning; here it is an ordinary (b, T) conditioning entry that doubles with the batch.)

The video guiders use one scale per frame; the batch is (b t) frame-major and `scales()`
returns the (1, T) table.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Literal

import torch

from gm.diffusion.denoiser import ROUTED_KEYS, Cond, append_dims
from gm.errors import UsageError

# Conditioning keys that always follow the batch when it is doubled.
GUIDED_KEYS = ROUTED_KEYS + ("image_only_indicator",)


def _double(x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uc: Cond, keys: tuple[str, ...]):
    """[uc; c] along the batch for x, sigma and the keys to guide; others passed once.

    Pass the same object in c and uc for unguided tensors: comparing two different tensors
    costs a host sync per step."""
    out: dict[str, torch.Tensor | int] = {}
    for key, value in cond.items():
        if key in keys:
            other = uc[key]
            assert isinstance(value, torch.Tensor) and isinstance(other, torch.Tensor)
            out[key] = torch.cat((other, value), 0)
        else:
            other = uc.get(key, value)
            same = other is value or (
                torch.equal(other, value) if isinstance(value, torch.Tensor) else other == value
            )
            if not same:
                raise UsageError(
                    f"conditioning key {key!r} differs between cond and uncond but is not guided",
                    hint="list it in the guider's additional_cond_keys",
                )
            out[key] = value
    return torch.cat([x] * 2), torch.cat([sigma] * 2), out


def triangle_wave(values: torch.Tensor, period: float = 1.0) -> torch.Tensor:
    """0 at multiples of `period`, 1 half-way between: 2 |u - floor(u + 1/2)| with u = v/period."""
    return 2 * (values / period - torch.floor(values / period + 0.5)).abs()


@dataclass(frozen=True)
class IdentityGuider:
    """No guidance: a single conditional pass (Turbo, or uc = c)."""

    def prepare(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uc: Cond):
        return x, sigma, dict(cond)

    def combine(self, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        return out


@dataclass(frozen=True)
class VanillaCFG:
    """One global scale. With scale == 1 the result equals the conditional pass, so the uncond
    half is skipped entirely (half the network work; results differ from x_u + 1*(x_c - x_u)
    only by float rounding)."""

    scale: float
    additional_cond_keys: tuple[str, ...] = ()

    @property
    def skips_uncond(self) -> bool:
        return self.scale == 1.0

    def prepare(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uc: Cond):
        if self.skips_uncond:
            return x, sigma, dict(cond)
        return _double(x, sigma, cond, uc, GUIDED_KEYS + self.additional_cond_keys)

    def combine(self, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.skips_uncond:
            return out
        x_u, x_c = out.chunk(2)
        return x_u + self.scale * (x_c - x_u)

    def scales(self) -> torch.Tensor:
        return torch.tensor([[self.scale]])


class _PerFrameGuider:
    """Shared prepare/combine of the per-frame guiders; subclasses define `scales()` and the fields
    num_frames and additional_cond_keys."""

    num_frames: int
    additional_cond_keys: tuple[str, ...]
    scales: Callable[[], torch.Tensor]

    def prepare(self, x: torch.Tensor, sigma: torch.Tensor, cond: Cond, uc: Cond):
        return _double(x, sigma, cond, uc, GUIDED_KEYS + self.additional_cond_keys)

    def combine(self, out: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x_u, x_c = out.chunk(2)
        t = self.num_frames
        x_u = x_u.reshape(-1, t, *x_u.shape[1:])  # (b*t, ...) -> (b, t, ...)
        x_c = x_c.reshape(-1, t, *x_c.shape[1:])
        scale = append_dims(self.scales().to(out.device), x_u.ndim)  # (1, t, 1, ...)
        return (x_u + scale * (x_c - x_u)).reshape(out.shape[0] // 2, *out.shape[1:])  # (b*t, ...)


@dataclass(frozen=True)
class LinearPredictionGuider(_PerFrameGuider):
    """Scale rises linearly over the frames: linspace(min, max, T) (SVD 1.0->2.5, XT 1.5->3.0)."""

    max_scale: float
    num_frames: int
    min_scale: float = 1.0
    additional_cond_keys: tuple[str, ...] = ()

    def scales(self) -> torch.Tensor:
        return torch.linspace(self.min_scale, self.max_scale, self.num_frames).unsqueeze(0)  # (1, T)


@dataclass(frozen=True)
class TrianglePredictionGuider(_PerFrameGuider):
    """min at the ends, max in the middle (SV3D's orbit: 1.0 -> 2.5 at frame 10 -> 1.0)."""

    max_scale: float
    num_frames: int
    min_scale: float = 1.0
    period: float | tuple[float, ...] = 1.0  # one period or several fused (an int works too)
    period_fusing: Literal["mean", "multiply", "max"] = "max"
    additional_cond_keys: tuple[str, ...] = ()

    def scales(self) -> torch.Tensor:
        values = torch.linspace(0, 1, self.num_frames)
        periods = self.period if isinstance(self.period, tuple) else (self.period,)
        waves = torch.stack([triangle_wave(values, float(p)) for p in periods])  # (P, T)
        if self.period_fusing == "mean":
            wave = waves.sum(0) / len(periods)
        elif self.period_fusing == "multiply":
            wave = waves.prod(0)
        else:
            wave = waves.max(0).values
        return (wave * (self.max_scale - self.min_scale) + self.min_scale).unsqueeze(0)  # (1, T)


@dataclass(frozen=True)
class TrapezoidPredictionGuider(_PerFrameGuider):
    """Rise over the first edge_perc of the frames, hold max, fall over the last edge_perc.

    The reference fills the plateau with 1.0 instead of max_scale (a bug); here it is max_scale,
    which is what the name and the ramps on both sides mean.
    """

    max_scale: float
    num_frames: int
    min_scale: float = 1.0
    edge_perc: float = 0.1
    additional_cond_keys: tuple[str, ...] = ()

    def scales(self) -> torch.Tensor:
        edge = int(self.num_frames * self.edge_perc)
        rise = torch.linspace(self.min_scale, self.max_scale, edge)
        plateau = torch.full((self.num_frames - 2 * edge,), float(self.max_scale))
        return torch.cat([rise, plateau, torch.flip(rise, [0])]).unsqueeze(0)  # (1, T)


@dataclass(frozen=True)
class SpatiotemporalPredictionGuider(_PerFrameGuider):
    """SV4D 2.0: over a t-major (T = frames / V, V) grid, w = lin(T)/2 + triangle(V)/2.

    scale = min + (max - min) * w; max is never reached (2.5/1.5 over 5x8 tops out at 2.4286).
    """

    max_scale: float
    num_frames: int
    num_views: int = 1
    min_scale: float = 1.0
    additional_cond_keys: tuple[str, ...] = ()

    def scales(self) -> torch.Tensor:
        v = self.num_views
        t = self.num_frames // v
        grid = torch.zeros(self.num_frames).view(t, v)  # (T, V), frame index = t * V + v
        grid += torch.linspace(0, 1, t)[:, None] * 0.5
        grid += triangle_wave(torch.linspace(0, 1, v))[None, :] * 0.5
        return (grid.flatten() * (self.max_scale - self.min_scale) + self.min_scale).unsqueeze(0)  # (1, T*V)


Guider = (
    IdentityGuider
    | VanillaCFG
    | LinearPredictionGuider
    | TrianglePredictionGuider
    | TrapezoidPredictionGuider
    | SpatiotemporalPredictionGuider
)

# Guider kinds a preset may name (`guider = "linear"`), built with gm.config.from_dict.
GUIDERS: dict[str, type] = {
    "identity": IdentityGuider,
    "vanilla": VanillaCFG,
    "linear": LinearPredictionGuider,
    "triangle": TrianglePredictionGuider,
    "trapezoid": TrapezoidPredictionGuider,
    "spatiotemporal": SpatiotemporalPredictionGuider,
}

Denoise = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def match_text_lengths(cond: Cond, uc: Cond) -> tuple[Cond, Cond]:
    """A long prompt with a short negative (or the reverse) gives crossattn sequences of 77 k and
    77 m tokens; repeat each along the sequence up to lcm(77 k, 77 m). Cross-attention over keys and
    values repeated n times is exactly what it was (every softmax weight splits n ways), so this only
    lets the two batch together (as ComfyUI does)."""
    c, u = cond.get("crossattn"), uc.get("crossattn")
    if not (isinstance(c, torch.Tensor) and isinstance(u, torch.Tensor)) or c.shape[1] == u.shape[1]:
        return cond, uc
    n = math.lcm(c.shape[1], u.shape[1])

    def grow(t: torch.Tensor) -> torch.Tensor:
        return t if t.shape[1] == n else t.repeat(1, n // t.shape[1], 1)

    return {**cond, "crossattn": grow(c)}, {**uc, "crossattn": grow(u)}


# CFG as two network passes (uncond, then cond) instead of one batch of two: the same maths at about
# half the activation memory (`--max-vram` chooses it when the batch of two does not fit).
_TWO_PASS: ContextVar[bool] = ContextVar("gm_two_pass_cfg", default=False)


@contextmanager
def two_pass_cfg(on: bool = True) -> Iterator[None]:
    """Within this block, `guided` denoisers built without an explicit `two_pass` run two passes."""
    token = _TWO_PASS.set(on)
    try:
        yield
    finally:
        _TWO_PASS.reset(token)


def use_two_pass_cfg(on: bool = True) -> None:
    """Set the two-pass default for the rest of the current context (a command run's own copy)."""
    _TWO_PASS.set(on)


def _halves(guider: Guider, cond2: Cond) -> tuple[Cond, Cond]:
    """Split `prepare`'s doubled conditioning into its [uc] and [c] halves (unguided keys shared)."""
    keys = GUIDED_KEYS + getattr(guider, "additional_cond_keys", ())
    u: Cond = {}
    c: Cond = {}
    for key, value in cond2.items():
        if key in keys and isinstance(value, torch.Tensor):
            u[key], c[key] = value.chunk(2)
        else:
            u[key] = c[key] = value
    return u, c


def guided(
    denoiser: Callable[[torch.Tensor, torch.Tensor, Cond], torch.Tensor],
    guider: Guider,
    cond: Cond,
    uc: Mapping[str, torch.Tensor | int] | None = None,
    two_pass: bool | None = None,
) -> Denoise:
    """The sampler-facing `denoise(x, sigma) -> denoised` with guidance applied (uc defaults to cond).
    `two_pass` runs uc and c as two network calls (None: the `two_pass_cfg` context's choice)."""
    uncond = cond if uc is None else uc
    if uc is not None:
        cond, uncond = match_text_lengths(cond, uc)
    passes = _TWO_PASS.get() if two_pass is None else two_pass

    def denoise(x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        x2, sigma2, cond2 = guider.prepare(x, sigma, cond, uncond)
        if not passes or x2.shape[0] != 2 * x.shape[0]:
            return guider.combine(denoiser(x2, sigma2, cond2), sigma)
        (x_u, x_c), (s_u, s_c), (c_u, c_c) = x2.chunk(2), sigma2.chunk(2), _halves(guider, cond2)
        out_u = denoiser(x_u, s_u, c_u)
        return guider.combine(torch.cat((out_u, denoiser(x_c, s_c, c_c))), sigma)

    return denoise


def from_spec(spec, frames: int = 1, scale: float | None = None, extra_keys: tuple[str, ...] = ()):
    """A guider from a preset's [guider] table (read duck-typed); `scale` overrides the maximum (--cfg)
    and `extra_keys` adds conditioning keys that double with the batch (the video indicator)."""
    top = spec.scale if scale is None else scale
    keys = (*spec.additional_keys, *extra_keys)
    if spec.kind not in GUIDERS:
        raise UsageError(f"unknown guider {spec.kind!r}", f"use one of {', '.join(GUIDERS)}")
    if spec.kind == "identity":
        return IdentityGuider()
    if spec.kind == "vanilla":
        return VanillaCFG(scale=top, additional_cond_keys=keys)
    if spec.kind == "spatiotemporal":
        return SpatiotemporalPredictionGuider(max_scale=top, num_frames=frames, num_views=spec.num_views,
                                              min_scale=spec.min_scale, additional_cond_keys=keys)
    return GUIDERS[spec.kind](max_scale=top, num_frames=frames, min_scale=spec.min_scale, additional_cond_keys=keys)


def uses_uncond(guider) -> bool:
    """False where the unconditional branch is never evaluated (identity, CFG at scale 1)."""
    return not (isinstance(guider, IdentityGuider) or (isinstance(guider, VanillaCFG) and guider.scale == 1.0))
