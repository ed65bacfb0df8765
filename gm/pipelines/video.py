"""Image -> video sampling of SVD / SVD-XT (and the shared core that SV3D's orbit runs on).

Mirrors `scripts/sampling/simple_video_sample.py`:

1. values: `cond_frames_without_noise` = the image in [-1, 1]; `cond_frames` = image + cond_aug * eps;
   the scalars (fps_id, motion_bucket_id, cond_aug; SV3D_p: polars_rad, azimuths_rad) one per frame;
2. c and uc from the conditioner, uc zeroing both image conditionings;
3. crossattn (1, 1, D) and concat (1, 4, h, w) repeated over the T frames;
4. start noise (T, 4, h, w); eps and the start noise come from one CPU generator seeded with
   `seed`, in that order (the reference draws them from the device RNG, so only CPU runs of the
   reference give the very same numbers);
5. EulerEDM on EDM(0.002, 700, 7) with the per-frame guider; image_only_indicator zeros (one
   (1, T) row per CFG branch) and num_video_frames = T go to the UNet by name;
6. decode `decoding_t` frames per VAE call; the temporal decoder sees the chunk length as its
   number of frames.

Engine functions return frames as float tensors (T, 3, H, W) in [0, 1]; writing files is
gm.outputs' job.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gm import device as dev
from gm.console import console
from gm.errors import InputError, PresetError, UsageError
from gm.io.media import IMAGE_SUFFIXES, VIDEO_SUFFIXES, open_image, to_rgb
from gm.model import geometry
from gm.models.build import Engine
from gm.outputs import OutputSpec, finish_frames, save_clip
from gm.pipelines.common import (
    Runtime,
    decode,
    denoiser_for,
    guided_denoise,
    guider_for,
    on_device,
    run_sampler,
    sigmas_for,
    weight_bytes,
)
from gm.presets import Preset

# Peak bytes per output pixel of one frame in the fp32 temporal VAE decoder: measured 3590 B/px on
# the CPU (peak RSS growth of one decode call, the same for 2 and 4 frames at 144x256 and 2 at
# 288x512; bench/decode_peak.py), rounded up to 4096 for GPU convolution workspaces, i.e. ~2.3 GiB per
# 576x1024 frame. Auto --decoding-t takes as many frames as 90 % of the free memory holds, but no
# more than DECODE_BUDGET: SVD-XT then stays near its ~12 GB sampling peak by default instead of
# growing to whatever the card has (the reference's 14-frame chunks OOM on 40 GB cards).
DECODE_BYTES_PER_PIXEL = 4096
DECODE_BUDGET = 8 * 2**30


@dataclass(frozen=True)
class VideoRequest:
    """What to sample for one input (defaults come from the preset, see `request_from_preset`)."""

    frames: int
    steps: int
    seed: int
    cond_aug: float
    decoding_t: int = 0  # frames per VAE decode call; 0 = automatic
    fps_id: int = 6
    motion_bucket_id: int = 127


def request_from_preset(preset: Preset, frames: int | None = None, steps: int | None = None,
                        seed: int | None = None, cond_aug: float | None = None, decoding_t: int | None = None,
                        fps_id: int | None = None, motion_bucket_id: int | None = None) -> VideoRequest:
    """Command-line values over the preset's defaults, checked (frames >= 1, steps >= 1, ...)."""
    d = preset.defaults
    req = VideoRequest(
        frames=d.frames if frames is None else frames,
        steps=preset.sampler.steps if steps is None else steps,
        seed=d.seed if seed is None else seed,
        cond_aug=d.cond_aug if cond_aug is None else cond_aug,
        decoding_t=preset.perf.decoding_t if decoding_t is None else decoding_t,
        fps_id=getattr(d, "fps_id", 6) if fps_id is None else fps_id,  # orbit presets have none (unused)
        motion_bucket_id=getattr(d, "motion_bucket_id", 127) if motion_bucket_id is None else motion_bucket_id,
    )
    if req.frames < 1:
        raise UsageError(f"--frames must be at least 1, got {req.frames}", f"{preset.name} was trained on {d.frames}")
    if req.steps < 1:
        raise UsageError(f"--steps must be at least 1, got {req.steps}", "e.g. --steps 25")
    if req.decoding_t < 0:
        raise UsageError(f"--decoding-t must be 0 (automatic) or more, got {req.decoding_t}")
    if not 0 <= req.cond_aug < float("inf"):  # NaN fails too
        raise UsageError(f"--cond-aug must be a finite number >= 0, got {req.cond_aug}", "the reference uses 0.02")
    if not 0 <= req.fps_id <= 239:
        raise UsageError(f"--fps-id must be in [0, 239], got {req.fps_id}", "e.g. --fps-id 6 (the video plays at "
                         "fps-id + 1)")
    if not 0 <= req.motion_bucket_id <= 255:
        raise UsageError(f"--motion-bucket-id must be in [0, 255], got {req.motion_bucket_id}",
                         "e.g. --motion-bucket-id 127")
    if not 0 <= req.seed < 2**64:
        raise UsageError(f"--seed must be in [0, 2^64), got {req.seed}")
    return req


def check_size(preset: Preset, height: int, width: int) -> None:
    m = geometry(preset).grid
    if height <= 0 or width <= 0 or height % m or width % m:
        raise UsageError(f"size {height}x{width} is not a multiple of {m}",
                         f"set --set defaults.height=... / defaults.width=... to multiples of {m}")


def fit_image(image: Image.Image, height: int, width: int) -> tuple[Image.Image, bool]:
    """RGB (alpha composited on white) resized to cover height x width (LANCZOS) and centre-cropped,
    as the demos do; returns (image, whether it had to change)."""
    rgb = to_rgb(image)
    if rgb.size == (width, height):
        return rgb, False
    scale = max(width / rgb.width, height / rgb.height)
    w, h = max(width, round(rgb.width * scale)), max(height, round(rgb.height * scale))
    resized = rgb.resize((w, h), Image.Resampling.LANCZOS)
    left, top = (w - width) // 2, (h - height) // 2
    return resized.crop((left, top, left + width, top + height)), True


def image_tensor(image: Image.Image) -> torch.Tensor:
    """PIL RGB -> (1, 3, H, W) float32 in [-1, 1] (torchvision ToTensor * 2 - 1)."""
    arr = np.asarray(image.convert("RGB"), dtype=np.float32) / 255.0  # (H, W, 3)
    return torch.from_numpy(arr).permute(2, 0, 1)[None] * 2.0 - 1.0


def build_batch(engine: Engine, image: torch.Tensor, cond_frames: torch.Tensor,
                scalars: dict[str, torch.Tensor], frames: int) -> dict[str, torch.Tensor]:
    """The conditioner's inputs: the two images once, every scalar one value per frame."""
    assert engine.embedders is not None
    values: dict[str, torch.Tensor] = {"cond_frames_without_noise": image, "cond_frames": cond_frames}
    for key, value in scalars.items():
        v = torch.as_tensor(value, dtype=torch.float64).reshape(-1)
        values[key] = v.repeat(frames) if v.numel() == 1 else v  # (T,)
    missing = [k for k in engine.embedders.input_keys if k not in values]
    if missing:
        raise PresetError(f"this pipeline has no value for conditioner input(s) {', '.join(missing)}",
                          "an img2vid/orbit preset conditions on images, fps_id, motion_bucket_id, "
                          "cond_aug and the camera only")
    return {k: values[k] for k in engine.embedders.input_keys}


def conditioning(engine: Engine, runtime: Runtime, batch: dict[str, torch.Tensor],
                 frames: int) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """(c, uc) with crossattn / concat repeated over the frames, uc zeroing the image inputs."""
    emb = engine.embedders
    assert emb is not None
    on_dev = {k: v.to(runtime.device) for k, v in batch.items()}
    with console.task("encode", total=1), on_device(emb, runtime), torch.inference_mode():
        c, uc = emb.with_uncond(on_dev, emb.uc_zero_inputs)  # CLIP and VAE encoder run once
    out = []
    for branch in (c, uc):
        branch = {k: v.float() for k, v in branch.items()}
        for key in ("crossattn", "concat"):
            if key in branch and branch[key].shape[0] == 1:
                branch[key] = branch[key].repeat_interleave(frames, dim=0)  # (1, ...) -> (T, ...)
        out.append(branch)
    return out[0], out[1]


def decode_chunk(engine: Engine, runtime: Runtime, requested: int, frames: int, height: int, width: int) -> int:
    """--decoding-t, or (0) the largest chunk whose decoder activations fit DECODE_BUDGET and, on a
    GPU, 90 % of its free memory. The temporal decoder mixes only the frames of one call, so the
    chunk changes the video: without a memory limit (the CPU, a roomy GPU) the chunk is the same
    everywhere, and a seed gives the same video on any device."""
    if requested > 0:
        return min(requested, frames)
    budget = DECODE_BUDGET
    free = dev.free_memory(runtime.device)
    if free is not None:
        if runtime.low_vram and engine.vae is not None:  # the VAE still has to move in
            free -= weight_bytes(engine.vae)
        budget = min(int(0.9 * free), DECODE_BUDGET)
    chunk = max(1, min(frames, budget // (DECODE_BYTES_PER_PIXEL * height * width)))
    if free is not None:
        console.log(f"decoding {chunk} frame(s) per VAE call ({free / 2**30:.1f} GiB free; set --decoding-t to choose)")
    return chunk


def sample_clip(engine: Engine, preset: Preset, runtime: Runtime, image: torch.Tensor,
                scalars: dict[str, torch.Tensor], request: VideoRequest) -> torch.Tensor:
    """The shared SVD/SV3D run: image (1, 3, H, W) in [-1, 1] -> frames (T, 3, H, W) in [0, 1]."""
    t = request.frames
    _, _, height, width = image.shape
    check_size(preset, height, width)
    generator = dev.cpu_generator(request.seed)
    eps = torch.randn(image.shape, generator=generator, dtype=torch.float32)  # (1, 3, H, W)
    batch = build_batch(engine, image, image + request.cond_aug * eps, scalars, t)
    c, uc = conditioning(engine, runtime, batch, t)
    # The indicator is guided like the image conditionings: one zero row per branch.
    extra = {"image_only_indicator": torch.zeros(1, t, device=runtime.device), "num_video_frames": t}
    c, uc = {**c, **extra}, {**uc, **extra}
    spec = dataclasses.replace(preset.guider, additional_keys=(*preset.guider.additional_keys, "image_only_indicator"))
    guider = guider_for(spec, frames=t)
    noise = torch.randn(geometry(preset).shape(height, width, t), generator=generator, dtype=torch.float32)
    denoiser = denoiser_for(engine, preset, runtime)
    with on_device(engine.network, runtime), torch.inference_mode():
        z = run_sampler(preset.sampler, guided_denoise(denoiser, guider, c, uc), noise.to(runtime.device),
                        sigmas_for(preset.sampler, request.steps), generator)
    chunk = decode_chunk(engine, runtime, request.decoding_t, t, height, width)
    temporal = (preset.vae or {}).get("arch") == "video_kl"
    if temporal:
        return decode(engine, z, runtime, chunk, num_frames=chunk)
    return decode(engine, z, runtime, chunk)


def animate(engine: Engine, preset: Preset, runtime: Runtime, image: Image.Image,
            request: VideoRequest) -> torch.Tensor:
    """SVD: a prepared RGB image at the model size -> frames (T, 3, H, W) in [0, 1]."""
    scalars = {
        "fps_id": torch.tensor(float(request.fps_id)),
        "motion_bucket_id": torch.tensor(float(request.motion_bucket_id)),
        "cond_aug": torch.tensor(request.cond_aug),
    }
    return sample_clip(engine, preset, runtime, image_tensor(image), scalars, request)


@dataclass(frozen=True)
class ClipResult:
    """One finished clip: where it was written (None: not written) and its watermarked frames."""

    path: Path | None
    record: dict[str, Any]
    pixels: Any = None  # (T, H, W, 3) uint8


def finish_clip(frames: Any, still: Image.Image, output: OutputSpec, record: dict[str, Any]) -> ClipResult:
    """Watermark the frames and, when the output has a folder, write the clip and its still."""
    pixels = finish_frames(frames)
    path = save_clip(pixels, still, output, record) if output.out_dir is not None else None
    return ClipResult(path, record, pixels)


def open_input(path: Path) -> Any:
    """The image at `path`; videos (animated gifs included) and other files are one-line InputErrors."""
    suffix = path.suffix.lower()
    if suffix in VIDEO_SUFFIXES and suffix != ".gif":
        raise InputError(f"{path}: is a video, not an image", "pass a .png/.jpg image; gm video4d takes videos")
    if suffix not in IMAGE_SUFFIXES and suffix != ".gif":
        raise InputError(f"{path}: not an image file ({suffix or 'no suffix'})",
                         f"pass one of {', '.join(IMAGE_SUFFIXES)}")
    image = open_image(path)
    if suffix == ".gif":
        with Image.open(path) as gif:
            frames = getattr(gif, "n_frames", 1)
        if frames > 1:
            raise InputError(f"{path}: is an animated gif ({frames} frames), not an image",
                             "pass one frame as a .png/.jpg image; gm video4d takes videos")
    return image
