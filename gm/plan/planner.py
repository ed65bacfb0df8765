"""Per-phase plans of one run and the settings that make it fit a memory budget.

`Planner` runs each phase once per setting that changes it (cached: the sample step with CFG as a
batch of 2 or as two passes; the decode at each chunk size or tile), and `plan(settings)` composes
the phases with the weights resident in each: all of them, or with staging (low-VRAM) only the
active phase's module. `fit(budget)` picks the least costly settings whose peak fits.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch

from gm.models.build import Engine
from gm.plan import workload as wl
from gm.plan.tracker import Tracked, total_flops, track

# Dense peak of one H100 SXM (FLOP/s): tensor cores in fp16/bf16, plain fp32.
H100_PEAK = {torch.float16: 989e12, torch.bfloat16: 989e12, torch.float32: 67e12}
GROUPS = {"encode": "conditioner", "sample": "network", "decode": "vae"}


@dataclass(frozen=True)
class Settings:
    """The knobs fitting may turn, cheapest first: chunk sizes, CFG passes, staging, tiles."""

    decode_chunk: int = 0  # frames per decode call (0 = all)
    encode_chunk: int | None = None  # frames per VAE-encoder call in the conditioner (None = preset's)
    two_pass_cfg: bool = False
    staging: bool = False  # low-VRAM: only the active phase's weights on the device
    decode_tile: int | None = None  # latent tile side for image decode (None = whole image)


@dataclass(frozen=True)
class Phase:
    """The peak of one phase and what holds it (bytes)."""

    name: str
    weights: int  # resident weights
    held: int  # tensors kept from earlier phases (conditioning, latents)
    activations: int
    workspace: int  # fused attention's log-sum-exp (and the like) at the peak op
    peak: int
    peak_math: int  # the same with the math attention path (score matrix + softmax)
    scores: int  # largest single attention score matrix (math path)
    at: str  # module and op at the peak
    flops: int
    floor_s: float  # flops at an H100's dense peak
    calls: int = 1  # how many such calls the run makes


@dataclass
class Plan:
    preset: str
    device: str
    dtype: str
    vae_dtype: str
    workload: wl.Workload
    settings: Settings
    weights: list[tuple[str, str, int]]  # (module, dtype, bytes)
    phases: list[Phase]
    attention: str = "fused"
    budget: int | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def peak(self) -> int:
        return max(p.peak_math if self.attention == "math" else p.peak for p in self.phases)

    @property
    def weight_bytes(self) -> int:
        return sum(b for _, _, b in self.weights)

    def floor_s(self) -> float:
        return sum(p.floor_s * p.calls for p in self.phases)


def _group_of(name: str) -> str:
    if name.startswith("model."):
        return "network"
    if name.startswith("first_stage_model."):
        return "vae"
    if name.startswith("conditioner.embedders."):
        return "conditioner." + name.split(".")[2]
    return "other"


def weights_by_module(engine: Engine) -> list[tuple[str, str, int]]:
    """Bytes of every distinct weight storage, by module group and dtype (shared tensors once)."""
    seen: set[int] = set()
    sums: dict[tuple[str, str], int] = {}
    for name, t in [*engine.named_parameters(remove_duplicate=False), *engine.named_buffers(remove_duplicate=False)]:
        key = t.untyped_storage()._cdata
        if key in seen:
            continue
        seen.add(key)
        group = (_group_of(name), str(t.dtype).removeprefix("torch."))
        sums[group] = sums.get(group, 0) + t.untyped_storage().nbytes()
    return [(g, d, b) for (g, d), b in sorted(sums.items())]


def _dtype_name(dtype: torch.dtype) -> str:
    return {torch.float16: "fp16", torch.bfloat16: "bf16", torch.float32: "fp32"}.get(dtype, str(dtype))


class Planner:
    """Phase plans of one engine (on meta, in the run's dtypes) at one workload."""

    def __init__(self, engine: Engine, preset: Any, work: wl.Workload, *, dtype: torch.dtype,
                 vae_dtype: torch.dtype, device: str = "cuda", attention: str | None = None) -> None:
        self.engine, self.preset, self.work = engine, preset, work
        self.dtype, self.vae_dtype, self.device = dtype, vae_dtype, device
        self.attention = attention or {"mps": "math", "cpu": "cpu"}.get(device, "fused")
        self.names = wl.module_names(engine)
        self.weights = weights_by_module(engine)
        self._cache: dict[tuple, tuple[Tracked, int]] = {}
        self._cond: dict[str, torch.Tensor] | None = None

    # -- raw phases ---------------------------------------------------------------------------
    def _run(self, key: tuple, fn: Any) -> tuple[Tracked, int]:
        if key not in self._cache:
            with track(self.names, self.attention) as (result, counter):
                out = fn()
                del out
            self._cache[key] = (result, total_flops(result, counter))
        return self._cache[key]

    def conditioning(self) -> dict[str, torch.Tensor]:
        if self._cond is None:
            with torch.inference_mode():
                self._cond = wl.run_embedders(self.engine, self.work)
        return self._cond

    def encode(self, chunk: int | None) -> tuple[Tracked, int]:
        def run() -> Any:
            wl.encode_chunked(self.engine, chunk)
            cond = wl.run_embedders(self.engine, self.work)
            if self.work.init_image:
                return cond, wl.encode_init_image(self.engine, self.work, self.vae_dtype)
            return cond

        return self._run(("encode", chunk), run)

    def sample(self, two_pass: bool) -> tuple[Tracked, int]:
        cond = self.conditioning()
        return self._run(("sample", two_pass),
                         lambda: wl.sample_step(self.engine, self.work, cond, self.preset, two_pass, self.dtype))

    def decode(self, frames: int, tile: int | None = None) -> tuple[Tracked, int]:
        return self._run(("decode", frames, tile),
                         lambda: wl.decode_call(self.engine, self.work, frames, tile, self.vae_dtype))

    # -- composition --------------------------------------------------------------------------
    def resident(self, group: str | None, staging: bool) -> int:
        """Weights on the device during a phase of `group` (all of them without staging)."""
        return sum(b for g, _, b in self.weights if not staging or group is None or g.startswith(group))

    def total_frames(self) -> int:
        return self.work.decode_total or self.work.rows

    def cond_bytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.conditioning().values())

    def latent_bytes(self, frames: int) -> int:
        h, w = self.work.latent
        return frames * int(self.engine.network.cfg.out_channels) * h * w * 4

    def _phase(self, name: str, raw: tuple[Tracked, int], weights: int, held: int, dtype: torch.dtype,
               calls: int = 1) -> Phase:
        r, flops = raw
        pk, pm = r.peak, r.peak_math
        return Phase(name, weights, held, pk.activations, pk.workspace, weights + held + pk.bytes,
                     weights + held + pm.bytes, r.largest_scores, f"{pk.module} ({pk.op})".strip(),
                     flops, flops / H100_PEAK.get(dtype, H100_PEAK[torch.float32]), calls)

    def encode_phase(self, s: Settings) -> Phase | None:
        if self.engine.embedders is None:
            return None
        weights = self.resident("conditioner", s.staging)
        if self.work.init_image and s.staging:  # img2img: the VAE encodes the input in this phase too
            weights += self.resident("vae", True)
        return self._phase("encode", self.encode(s.encode_chunk), weights, 0, self.dtype)

    def sample_phase(self, s: Settings) -> Phase:
        held = 2 * self.cond_bytes() + self.latent_bytes(self.work.rows)
        return self._phase("sample", self.sample(s.two_pass_cfg and self.work.cfg),
                           self.resident("network", s.staging), held, self.dtype, self.work.steps)

    def decode_phase(self, s: Settings) -> Phase:
        n = self.total_frames()
        chunk = n if s.decode_chunk <= 0 else min(s.decode_chunk, n)
        calls = -(-n // chunk)
        if s.decode_tile:
            h, w = self.work.latent
            calls *= -(-h // s.decode_tile) * -(-w // s.decode_tile)
        return self._phase("decode", self.decode(chunk, s.decode_tile), self.resident("vae", s.staging),
                           self.latent_bytes(n), self.vae_dtype, calls)

    def load_phase(self, s: Settings) -> Phase:
        held = 0 if s.staging else self.resident(None, False)
        return Phase("load", held, 0, 0, 0, held, held, 0, "weights", 0, 0.0, 0)

    def plan(self, s: Settings = Settings(), budget: int | None = None) -> Plan:
        phases = [self.load_phase(s), self.encode_phase(s), self.sample_phase(s)]
        if self.engine.vae is not None:
            phases.append(self.decode_phase(s))
        return Plan(getattr(self.preset, "name", "?"), self.device, _dtype_name(self.dtype),
                    _dtype_name(self.vae_dtype), self.work, s, self.weights, [p for p in phases if p],
                    self.attention, budget)

    def phase_peak(self, phase: Phase | None) -> int:
        if phase is None:
            return 0
        return phase.peak_math if self.attention == "math" else phase.peak

    def default_settings(self) -> Settings:
        """The preset's own settings: its decoding_t (0 = all frames in one call) and low_vram."""
        perf = getattr(self.preset, "perf", None)
        return Settings(decode_chunk=int(getattr(perf, "decoding_t", 0) or 0),
                        staging=bool(getattr(perf, "low_vram", False)))
