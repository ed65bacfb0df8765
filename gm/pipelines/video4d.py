"""`gm video4d`: novel-view videos of a moving object with SV4D and SV4D 2.0 (reference
`scripts/sampling/simple_video_sample_4d.py`, `simple_video_sample_4d2.py`, `sv4d_helpers.py`).

The image grid `img[t][v]` (frames x (1 + V), in [-1, 1]) has the input video in view 0.
* SV4D: SV3D orbit of frame 0 -> reference views at t = 0; an anchor pass samples frames
  4, 8, 12, 16, 20; dense windows 0-4, 4-8, ... then alternate per sampler step between a
  backward (descending frames, views of the window's last frame) and a forward conditioning set.
* SV4D 2.0: autoregressive windows; the first one runs with cond_view zeroed (indicator 0), each
  later one conditions on the views decoded at its first frame.
All start noise comes from one CPU generator seeded by --seed.
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Any

import numpy as np
import torch

from gm import device as dev
from gm.console import console
from gm.loader import check_file
from gm.model import geometry
from gm.models.build import Engine
from gm.outputs import finish_frames
from gm.pipelines.common import (
    Runtime,
    denoiser_for,
    guided_denoise,
    guider_for,
    load,
    on_device,
    run_sampler,
    sigmas_for,
)
from gm.pipelines.video4d_camera import (
    SV4D_SUBSET,
    roll_orbit,
    sv4d2_window_starts,
    sv4d_anchor_frames,
    sv4d_dense_starts,
)
from gm.pipelines.video4d_input import preprocess, read_frames, to_tensor
from gm.pipelines.video4d_job import Video4DRequest, check_request, is_sv4d, sv3d_preset
from gm.pipelines.video4d_output import Writer
from gm.presets import Preset

Cond = dict[str, torch.Tensor | int]


def with_encoding_chunk(preset: Preset, encoding_t: int) -> Preset:
    """Set every VAE-encoder embedder's frames per call (the scripts' encoding_t; 0 = all)."""
    tables = tuple(
        {**t, "en_and_decode_n_samples_a_time": encoding_t or None} if t.get("kind") == "vae_encoder" else t
        for t in preset.conditioner
    )
    return dataclasses.replace(preset, conditioner=tables)


def share_identical_encoders(engine: Engine) -> int:
    """The release files carry three copies of a whole KL autoencoder for cond_frames / cond_view /
    cond_motion (loaded strictly); only their encoders ever run. Drop every copy's decoder and, if
    the copies are equal, keep one. Returns how many copies were dropped."""
    assert engine.embedders is not None
    encoders = [e for e in engine.embedders.embedders if hasattr(e, "encoder")]
    first, dropped = encoders[0].encoder, 0
    reference = first.state_dict()
    for emb in encoders[1:]:
        state = emb.encoder.state_dict()
        if state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in reference):
            emb.encoder = first
            dropped += 1
    for emb in encoders:
        for unused in ("decoder", "post_quant_conv"):
            if hasattr(emb.encoder, unused):
                delattr(emb.encoder, unused)
    return dropped


class Alternating:
    """SV4D's dense windows change conditioning every sampler step: even steps (step 0 included) run
    backward — frames descending, the views of the window's last frame — odd steps forward. The
    sampler keeps the window ascending; a backward call flips the frames in and the result back out
    (the sampler's update is elementwise, so this equals sampling the flipped window)."""

    def __init__(self, backward, forward, t: int, v: int) -> None:
        self.backward, self.forward, self.t, self.v = backward, forward, t, v
        self.step = 0

    def flip(self, x: torch.Tensor) -> torch.Tensor:
        return x.view(self.t, self.v, *x.shape[1:]).flip(0).flatten(0, 1)  # (T*V, ...) t-major

    def __call__(self, x: torch.Tensor, sigma: torch.Tensor) -> torch.Tensor:
        if self.step % 2 == 0:
            return self.flip(self.backward(self.flip(x), sigma))
        return self.forward(x, sigma)

    def advance(self, i: int) -> None:
        self.step = i + 1


class Sampler4D:
    """Conditioning and sampling of one loaded SV4D-family engine."""

    def __init__(self, engine: Engine, preset: Preset, runtime: Runtime, request: Video4DRequest,
                 polars: np.ndarray, azimuths: np.ndarray, generator: torch.Generator) -> None:
        self.engine, self.preset, self.runtime, self.request = engine, preset, runtime, request
        self.generator = generator
        self.t, self.v = preset.defaults.window_frames, preset.defaults.views
        self.polars = torch.from_numpy(np.tile(polars, self.t))  # (T*V,) t-major
        self.azimuths = torch.from_numpy(np.tile(azimuths, self.t))
        self.denoiser = denoiser_for(engine, preset, runtime)
        spec = dataclasses.replace(preset.guider, additional_keys=(*preset.guider.additional_keys, "image_only_indicator"))
        self.guider = guider_for(spec, frames=self.t * self.v)
        self.sigmas = sigmas_for(preset.sampler, request.steps)

    def conditioning(self, motion: torch.Tensor, views: torch.Tensor, cond_mv: bool = True) -> tuple[Cond, Cond]:
        """motion (T, 3, H, W) and reference views (V, 3, H, W) in [-1, 1] -> (c, uc)."""
        emb, rt = self.engine.embedders, self.runtime
        assert emb is not None
        batch = {
            "cond_frames_without_noise": motion,
            "cond_frames": motion.repeat_interleave(self.v, dim=0),  # (T*V, 3, H, W)
            "polar_rad": self.polars,
            "azimuth_rad": self.azimuths,
            "cond_view": views,
            "cond_motion": motion,
        }
        batch = {k: v.to(rt.device) for k, v in batch.items()}
        zero_view = () if cond_mv else ("cond_view",)  # SV4D 2.0's first window: no views yet
        with console.task("encode", total=1), on_device(emb, rt), torch.inference_mode():
            c, uc = emb.with_uncond(batch, emb.uc_zero_inputs, force_zero=zero_view, generator=self.generator)
        n = self.t * self.v
        extra: Cond = {"image_only_indicator": torch.full((1, n), float(cond_mv), device=rt.device),
                       "num_video_frames": n}
        return ({**{k: x.float() for k, x in c.items()}, **extra},
                {**{k: x.float() for k, x in uc.items()}, **extra})

    def noise(self, shape: tuple[int, ...]) -> torch.Tensor:
        return torch.randn(shape, generator=self.generator, dtype=torch.float32)  # CPU, as the reference

    def latent_shape(self) -> tuple[int, int, int]:
        return geometry(self.preset).shape(self.request.size, self.request.size)[1:]

    def sample(self, c: Cond, uc: Cond, label: str) -> torch.Tensor:
        """One full sampling run of the T*V window from fresh CPU noise -> latents."""
        x = self.noise((self.t * self.v, *self.latent_shape())).to(self.runtime.device)
        with on_device(self.engine.network, self.runtime), torch.inference_mode():
            return run_sampler(self.preset.sampler, self.denoise(c, uc), x, self.sigmas, self.generator, label=label)

    def sample_window(self, window: torch.Tensor, backward: tuple[Cond, Cond], forward: tuple[Cond, Cond],
                      label: str) -> torch.Tensor:
        """SV4D's dense pass over a (T, V, 4, h, w) window of unit noise (on the device): the preset's
        sampler with the conditioning alternating per step (see `Alternating`) -> latents (T*V, ...)."""
        denoise = Alternating(self.denoise(*backward), self.denoise(*forward), self.t, self.v)
        with on_device(self.engine.network, self.runtime), torch.inference_mode():
            return run_sampler(self.preset.sampler, denoise, window.flatten(0, 1), self.sigmas, self.generator,
                               label=label, on_step=denoise.advance)

    def denoise(self, c: Cond, uc: Cond):
        return guided_denoise(self.denoiser, self.guider, c, uc)

    def decode(self, z: torch.Tensor, label: str = "decode") -> torch.Tensor:
        """Latents -> images in [-1, 1] on the CPU."""
        from gm.pipelines.common import decode

        return decode(self.engine, z, self.runtime, self.request.decoding_t, label=label) * 2.0 - 1.0


def sv3d_reference_views(request: Video4DRequest, runtime_of, frame0: torch.Tensor,
                         sv3d: Preset, checkpoint: str | Path | None, unsafe_pickle: bool = False,
                         engine: Engine | None = None) -> torch.Tensor:
    """SV3D orbit of frame 0 (in [-1, 1], as prepared), rolled so the input comes first: (21, 3, H, W);
    `engine`: SV3D already loaded (a batch of jobs), else it is loaded here."""
    from gm.pipelines.orbit import run_orbit
    from gm.pipelines.video import request_from_preset

    runtime = runtime_of(sv3d)
    engine = engine if engine is not None else load(sv3d, runtime, checkpoint, unsafe_pickle)
    orbit_req = request_from_preset(sv3d, frames=21, steps=request.steps, seed=request.seed,
                                    cond_aug=1e-5, decoding_t=request.decoding_t)
    frames = run_orbit(engine, sv3d, runtime, frame0[None], orbit_req,
                       elevations_deg=request.elevations, azimuths_deg=request.azimuths)
    del engine
    frames = frames * 2.0 - 1.0
    frames[-1] = frame0  # the input itself, not its uint8 copy
    return torch.from_numpy(roll_orbit(frames.clamp(-1, 1).numpy()))


def run_sv4d(s: Sampler4D, img: torch.Tensor, overall) -> None:
    """Anchor pass, then dense windows with the per-step backward/forward alternation."""
    t, v = s.t, s.v
    anchors = sv4d_anchor_frames(img.shape[0], t)
    c, uc = s.conditioning(img[anchors, 0], img[0, 1:])
    z = s.sample(c, uc, "anchor")
    img[anchors, 1:] = s.decode(z, "decode anchor").view(t, v, *img.shape[2:])  # (T, V, 3, H, W)
    overall.advance()
    for t0 in sv4d_dense_starts(img.shape[0], t):
        latents = s.noise((img.shape[0], v + 1, *s.latent_shape()))  # fresh matrix; only the window is used
        window = latents[t0:t0 + t, 1:].to(s.runtime.device)  # (T, V, 4, h, w), ascending; stays on the device
        ascending = list(range(t0, t0 + t))
        forward = s.conditioning(img[ascending, 0], img[t0, 1:])
        backward = s.conditioning(img[ascending[::-1], 0], img[t0 + t - 1, 1:])
        window = s.sample_window(window, backward, forward, f"window {t0}-{t0 + t - 1}")
        img[t0:t0 + t, 1:] = s.decode(window, "decode window").view(t, v, *img.shape[2:])
        overall.advance()


def run_sv4d2(s: Sampler4D, img: torch.Tensor, overall) -> None:
    """Autoregressive windows; the first without reference views."""
    t, v = s.t, s.v
    for t0 in sv4d2_window_starts(img.shape[0], t, v):
        frames = list(range(t0, t0 + t))
        c, uc = s.conditioning(img[frames, 0], img[t0, 1:], cond_mv=t0 != 0)
        z = s.sample(c, uc, f"window {t0}-{t0 + t - 1}")
        img[frames, 1:] = s.decode(z, "decode window").view(t, v, *img.shape[2:])
        overall.advance()


def video4d(preset: Preset, runtime_of, request: Video4DRequest, out_dir: Path,
            checkpoint: str | None = None, sv3d_checkpoint: str | None = None,
            engine: Engine | None = None, unsafe_pickle: bool = False,
            sv3d_engine: Engine | None = None) -> list[Path]:
    """The whole `gm video4d` run: `render`, then write every video under one number. The files are
    written only when all sampling is done (a failed run leaves none). Returns the written files
    (process_input, [t000], v001..., [diag], grid)."""
    writer = Writer(out_dir, preset, request)
    videos = render(preset, runtime_of, request, checkpoint, sv3d_checkpoint, engine, unsafe_pickle, sv3d_engine)
    writer.record.update(files_used(preset, request, checkpoint, sv3d_checkpoint, engine))
    return [writer.video(tag, pixels) for tag, pixels in videos.items()]


def files_used(preset: Preset, request: Video4DRequest, checkpoint: str | Path | None = None,
               sv3d_checkpoint: str | Path | None = None, engine: Engine | None = None) -> dict[str, Any]:
    """The checkpoint files a run loaded, as outputs record them (their hashes were cached at load)."""
    from gm.checkpoint import find_checkpoint
    from gm.provenance import engine_record, file_record

    used: dict[str, Any] = {"checkpoint": engine_record(engine) if engine is not None
                            else file_record(find_checkpoint(preset, checkpoint))}
    if is_sv4d(preset):
        used["sv3d_checkpoint"] = file_record(find_checkpoint(sv3d_preset(request.sv3d_preset), sv3d_checkpoint))
    return used


def render(preset: Preset, runtime_of, request: Video4DRequest, checkpoint: str | None = None,
           sv3d_checkpoint: str | None = None, engine: Engine | None = None,
           unsafe_pickle: bool = False, sv3d_engine: Engine | None = None) -> dict[str, np.ndarray]:
    """Every video of a run as watermarked uint8 frames (N, H, W, 3) by tag; `runtime_of(preset)`
    decides device/dtype per model, `engine` is an already loaded SV4D-family model (`sv3d_engine`
    the SV3D one). Every option,
    input and checkpoint is checked before anything runs."""
    polars, azimuths = check_request(preset, request)
    sv4d = is_sv4d(preset)
    sv3d = sv3d_preset(request.sv3d_preset) if sv4d else None
    # Both checkpoints are matched with their presets from the headers before anything runs: the
    # SV4D file would otherwise be read only after the minutes-long SV3D stage.
    path = check_file(preset, checkpoint, unsafe_pickle) if engine is None else None
    sv3d_path = check_file(sv3d, sv3d_checkpoint, unsafe_pickle, option="--sv3d-checkpoint") if sv3d else None
    images = read_frames(request.source, request.frames, pad=request.pad)
    motion = to_tensor(preprocess(images, request.size, request.frame_ratio, remove_bg=request.remove_bg))
    console.log(f"seed {request.seed}")
    videos: dict[str, torch.Tensor] = {"process_input": motion}
    views = preset.defaults.views
    img = torch.zeros(request.frames, views + 1, *motion.shape[1:])  # (N, 1+V, 3, H, W); SV4D 2.0 starts grey
    img[:, 0] = motion
    passes = (1 + len(sv4d_dense_starts(request.frames, preset.defaults.window_frames))) if sv4d else \
        len(sv4d2_window_starts(request.frames, preset.defaults.window_frames, views))
    with console.task(f"{preset.name} overall", total=passes + (1 if sv4d else 0), unit="pass") as overall:
        if sv3d is not None:
            img[0] = sv3d_reference_views(request, runtime_of, motion[0], sv3d, sv3d_path, unsafe_pickle,
                                          sv3d_engine)[list(SV4D_SUBSET)]
            videos["t000"] = img[0].clone()  # the dense pass overwrites t = 0
            overall.advance()
        runtime = runtime_of(preset)
        if engine is None:
            engine = load(with_encoding_chunk(preset, request.encoding_t), runtime, path, unsafe_pickle)
            dropped = share_identical_encoders(engine)
            if dropped:
                console.log(f"the VAE encoder copies are identical: running one ({dropped} dropped)")
        sampler = Sampler4D(engine, preset, runtime, request, polars, azimuths, dev.cpu_generator(request.seed))
        (run_sv4d if sv4d else run_sv4d2)(sampler, img, overall)
    videos.update({f"v{v:03d}": img[:, v] for v in range(1, views + 1)})
    if sv4d:
        videos["diag"] = Writer.diagonal(img)
    videos["grid"] = Writer.grid(img, columns=math.ceil(math.sqrt(views + 1)))
    return {tag: finish_frames(((frames.float() + 1.0) / 2.0).clamp(0, 1)) for tag, frames in videos.items()}
