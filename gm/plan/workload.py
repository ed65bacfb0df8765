"""The phases of a run, executed for real on meta tensors: encode, one sample step, one decode call.

Nothing here builds its own copy of a network: the engine is the preset's `Engine` (built on the
meta device, as loading does before it materialises), cast to the run's dtypes, and the phases call
its real modules (embedders, the denoiser wrapper, the autoencoder) on meta inputs of the requested
sizes. The conditioning batch is synthesised from the embedder configs, with the row counts the
pipelines use: one image/prompt per sample, video vectors per frame, crossattn and concat repeated
over the frames for the video UNet, SV4D's per-frame tensors as they are.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from gm.models.build import Engine, build_engine, precision_map
from gm.models.conditioner import CAT_DIMS

META = torch.device("meta")
Cond = dict[str, Any]


@dataclass(frozen=True)
class Workload:
    """Sizes of one run: pixels, frames per network call (frames x views; 1 for images), samples."""

    height: int
    width: int
    frames: int = 1  # latents per network call per sample (SV4D: window_frames x views)
    batch: int = 1  # samples per call (images: -n)
    cfg: bool = True  # classifier-free guidance (an uncond branch)
    steps: int = 1  # sampler steps (for the whole-run FLOP floor)
    decode_total: int = 0  # frames decoded in all (0 = frames x batch)
    text_tokens: int = 77
    init_image: bool = False  # img2img (refine): the VAE also encodes the input image(s)

    @property
    def latent(self) -> tuple[int, int]:
        return self.height // 8, self.width // 8

    @property
    def rows(self) -> int:
        return self.frames * self.batch


def meta_engine(preset: Any, dtype: torch.dtype, vae_dtype: torch.dtype) -> Engine:
    """The preset's engine on the meta device, each tensor in the dtype loading would give it."""
    with META:
        engine = build_engine(preset)
    return cast_engine(engine, dtype, vae_dtype)


def cast_engine(engine: Engine, dtype: torch.dtype, vae_dtype: torch.dtype) -> Engine:
    """Cast a meta engine's floating parameters and buffers as `precision_map` does when loading."""
    dtype_for = precision_map(dtype, vae_dtype)
    for name, module in engine.named_modules():
        prefix = f"{name}." if name else ""
        for store in (module._parameters, module._buffers):
            for key, t in list(store.items()):
                if t is None or not t.is_floating_point():
                    continue
                new = t.detach().to(dtype_for(prefix + key))
                store[key] = nn.Parameter(new, requires_grad=False) if isinstance(t, nn.Parameter) else new
    return engine.eval().requires_grad_(False)


def module_names(engine: nn.Module) -> dict[int, str]:
    return {id(m): name for name, m in engine.named_modules()}


def _scalar_width(name: str) -> int:
    """SDXL's size/crop inputs are (height, width) pairs; every other scalar input is one number."""
    return 2 if ("tuple" in name or "coords" in name) else 1


def _embedder_input(emb: nn.Module, w: Workload, video: bool, dev: torch.device) -> torch.Tensor:
    cfg = emb.config
    kind = type(emb).__name__
    if kind in ("CLIPTextEmbedder", "OpenCLIPTextEmbedder"):
        return torch.zeros(w.batch, w.text_tokens, dtype=torch.long, device=dev)
    if kind in ("OpenCLIPImageEmbedder", "VAEEncoderEmbedder"):
        return torch.zeros(w.batch * cfg.n_cond_frames, 3, w.height, w.width, device=dev)
    if kind == "ClassEmbedder":
        return torch.zeros(w.batch, dtype=torch.long, device=dev)
    rows = w.rows if video else w.batch
    return torch.zeros(rows, _scalar_width(cfg.input), device=dev)


def encode_init_image(engine: Engine, w: Workload, vae_dtype: torch.dtype, dev: torch.device = META) -> Any:
    """The VAE posterior of the img2img input, as gm.pipelines.common.posterior runs it (fp32 out)."""
    assert engine.vae is not None
    mean, logvar = engine.vae.encode(torch.zeros(w.batch, 3, w.height, w.width, device=dev).to(vae_dtype))
    return mean.float(), logvar.float()


def encode_chunked(engine: Engine, chunk: int | None) -> None:
    """Set every VAE-encoder embedder's frames per call (None: the preset's own), on the meta engine."""
    if engine.embedders is None:
        return
    for emb in engine.embedders.embedders:
        if type(emb).__name__ == "VAEEncoderEmbedder":
            own = emb.__dict__.setdefault("_preset_config", emb.config)
            emb.config = own if chunk is None else dataclasses.replace(own, en_and_decode_n_samples_a_time=chunk)


def run_embedders(engine: Engine, w: Workload, dev: torch.device = META) -> Cond:
    """Every embedder once (the uncond branch reuses or zeroes these shapes), concatenated by
    destination like the conditioner; then the rows the network call needs."""
    video = _network_kind(engine) != "unet"
    out: Cond = {}
    if engine.embedders is None:
        return out
    for emb in engine.embedders.embedders:
        if type(emb).__name__ == "VAEEncoderEmbedder" and emb.config.n_cond_frames == 1:
            emb.config = dataclasses.replace(emb.config, n_copies=1)
        x = _embedder_input(emb, w, video, dev)
        for dest, t in zip(emb.outputs(), emb(x)):
            t = t.float()
            out[dest] = t if dest not in out else torch.cat((out[dest], t), dim=CAT_DIMS[dest])
    if _network_kind(engine) == "video_unet":
        for key in ("crossattn", "concat"):
            if key in out and out[key].shape[0] != w.rows:
                out[key] = out[key].repeat_interleave(w.rows // out[key].shape[0], dim=0)
    return out


def _network_kind(engine: Engine) -> str:
    name = type(engine.network).__name__
    return {"VideoUNet": "video_unet", "SV4DUNet": "sv4d_unet"}.get(name, "unet")


def _extras(engine: Engine, w: Workload, rows: int, dev: torch.device) -> Cond:
    if _network_kind(engine) == "unet":
        return {}
    return {"image_only_indicator": torch.zeros(rows // w.frames, w.frames, device=dev), "num_video_frames": w.frames}


def sample_step(engine: Engine, w: Workload, cond: Cond, preset: Any, two_pass: bool,
                dtype: torch.dtype, dev: torch.device = META) -> torch.Tensor:
    """One Euler step through the real Denoiser: CFG as one batch of 2 (the guiders' layout) or as
    two passes (one branch, then the other with the first output held)."""
    from gm.diffusion.denoiser import make_denoiser, unet_network

    spec = preset.denoiser
    denoiser = make_denoiser(unet_network(engine.network), spec.scaling, spec.kind == "discrete",
                             sigma_data=spec.sigma_data, device=dev, dtype=dtype)
    x = torch.zeros(w.rows, _latent_channels(engine), *w.latent, device=dev)
    sigma = torch.ones(w.rows, device=dev)
    c = {**cond, **_extras(engine, w, w.rows, dev)}
    if not w.cfg:
        denoised = denoiser(x, sigma, c)
    elif two_pass:
        out_c = denoiser(x, sigma, c)
        out_u = denoiser(x, sigma, c)  # uc has the shapes of c
        denoised = out_u + 2.0 * (out_c - out_u)
    else:
        doubled: Cond = {k: torch.cat((v, v)) if isinstance(v, torch.Tensor) else v for k, v in cond.items()}
        doubled.update(_extras(engine, w, 2 * w.rows, dev))
        out = denoiser(torch.cat((x, x)), torch.cat((sigma, sigma)), doubled)
        out_u, out_c = out.chunk(2)
        denoised = out_u + 2.0 * (out_c - out_u)
    d = (x - denoised) / sigma.view(-1, 1, 1, 1)
    return x + 0.5 * d


def decode_call(engine: Engine, w: Workload, frames: int, tile: int | None, vae_dtype: torch.dtype,
                dev: torch.device = META) -> torch.Tensor:
    """One autoencoder call on `frames` latents (or one `tile`-square latent tile), as
    gm.pipelines.common.decode runs it: scaled fp32 latents cast to the VAE dtype, output to fp32."""
    vae = engine.vae
    assert vae is not None
    h, wd = (tile, tile) if tile else w.latent
    z = torch.zeros(frames, _latent_channels(engine), h, wd, device=dev) / engine.scale_factor
    part = z.to(vae_dtype)
    images = vae.decode(part, num_frames=frames) if _takes_frames(vae) else vae.decode(part)
    return ((images.float() + 1.0) / 2.0).clamp(0, 1)


def _latent_channels(engine: Engine) -> int:
    """Channels of the sampled latent: the network's output (its input adds the concat channels)."""
    return int(engine.network.cfg.out_channels)


def _takes_frames(vae: nn.Module) -> bool:
    return type(vae).__name__ == "VideoAutoencoder"


def decoder_frames(engine: Engine) -> bool:
    """Whether the decoder mixes frames (temporal decoder): then a chunk changes the result."""
    return engine.vae is not None and _takes_frames(engine.vae)



def workload_for(preset: Any, height: int | None = None, width: int | None = None, frames: int | None = None,
                 batch: int = 1, steps: int | None = None, cfg: bool | None = None) -> Workload:
    """A preset's run at its default size (or the given one): SV4D windows of window_frames x views
    latents per network call, decoding frames x views in all; CFG unless the guider is identity
    (Turbo) or a vanilla scale of 1."""
    d = preset.defaults
    h, w = height or d.height, width or d.width
    n = frames or getattr(d, "frames", 1)  # image presets have no frames
    guider = preset.guider
    if cfg is None:
        cfg = guider.kind != "identity" and not (guider.kind == "vanilla" and guider.scale == 1.0)
    steps = steps or preset.sampler.steps
    if getattr(d, "window_frames", 0) and getattr(d, "views", 0):
        return Workload(h, w, frames=d.window_frames * d.views, batch=batch, cfg=cfg, steps=steps,
                        decode_total=n * d.views * batch)
    return Workload(h, w, frames=max(1, n), batch=batch, cfg=cfg, steps=steps)
