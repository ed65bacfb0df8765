"""Text-to-image, image-to-image, the base -> refiner hand-off and Turbo.

Mirrors `sgm/inference/api.py` (`text_to_image`, `image_to_image`), the streamlit demo's img2img
and refiner path (`scripts/demo/sampling.py`, `discretization.py`) and `scripts/demo/turbo.py`:

* txt2img: unit noise from a CPU generator seeded with seed + k (image k of -n N), scaled by
  sqrt(1 + sigma_0^2) inside the sampler; CFG runs as one [uc; c] batch. `--batch-size B` samples
  B images in one call, each still drawing all its noise from its own generator, so a batched image
  equals the one made alone up to float rounding.
* img2img (--init-image, gm refine): VAE encode with a posterior *sample* (as AutoencoderKL does),
  schedule pruned by `img2img_sigmas(strength)`, start z + sigma_0 * eps
* refiner hand-off: the base stops at the non-zero sigma_asc[p] of `txt2noisy_sigmas`; the
  refiner continues from exactly that sigma with `img2img_sigmas` and no fresh noise. Both use the
  same N so the two schedules meet. `finish=False`: the base runs to 0 and the refiner SDEdits the
  clean latent with fresh noise.
* turbo: `turbo_sigmas(n)`, ancestral Euler, no guidance (uc = c, one batch). Noise as the demo
  draws it, so a seed gives the demo's image: the start from numpy's RandomState(seed) (float64 ->
  float32), the i-th ancestral draw from RandomState(seed + 1 + i); device-independent as well.
  Turbo img2img (--init-image) is the img2img path above on the turbo schedule.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Iterable, Iterator

import torch

from gm import addons as addon_files
from gm import device as dev
from gm import presets
from gm.console import console
from gm.diffusion import guiders
from gm.diffusion.samplers import Denoise, NoiseFn, make_noise_fn
from gm.diffusion.schedules import img2img_sigmas, start_scale, turbo_sigmas, txt2noisy_sigmas
from gm.errors import UsageError
from gm.io.files import ensure_dir
from gm.loader import check_addons, check_file
from gm.model import geometry
from gm.models.build import Engine
from gm.outputs import ImageResult, a1111_fields, image_results, run_record
from gm.pipelines.common import (
    Runtime,
    decode,
    denoiser_for,
    guided_denoise,
    guider_for,
    load,
    noise_like,
    on_device,
    posterior,
    posterior_latent,
    run_sampler,
    sigmas_for,
)
from gm.pipelines.image_batch import joined, numpy_noise, repeat_cond, turbo_noise_fn
from gm.pipelines.image_cond import (
    TextCondition,
    aspect_size,
    check_size,
    conditioning,
    size_grid,
)
from gm.pipelines.image_input import input_prompt, load_image, native_size
from gm.pipelines.image_job import ImageJob, RefinerPlan, check_strength
from gm.pipelines.seeds import announce
from gm.presets import Preset
from gm.provenance import engine_record


def _uses_uc(guider: object) -> bool:
    return not (isinstance(guider, guiders.IdentityGuider) or (isinstance(guider, guiders.VanillaCFG) and guider.scale == 1.0))


def _cfg_label(preset: Preset) -> float:
    return preset.guider.scale if preset.guider.kind != "identity" else 1.0


def _renoise(z: torch.Tensor, sigmas: torch.Tensor, generator: torch.Generator, runtime: Runtime) -> torch.Tensor:
    """Unit-scale start for the sampler so that it begins at z + sigma_0 * eps."""
    eps = noise_like(tuple(z.shape), generator, runtime)
    return (z + sigmas[0].item() * eps) / start_scale(sigmas).item()


def _img2img(full: torch.Tensor, strength: float, option: str) -> torch.Tensor:
    """`img2img_sigmas`, with a warning when the strength keeps no step (the reference then just
    round-trips the image through the VAE)."""
    sigmas = img2img_sigmas(full, strength)
    if len(sigmas) == 1:
        console.warn(f"{option} {strength} keeps no step of the {len(full) - 1}-step schedule, so the image only "
                     f"goes through the VAE; raise {option} or --steps")
    return sigmas


def _check_common(preset: Preset, job: ImageJob) -> None:
    if job.count < 1:
        raise UsageError(f"-n must be at least 1, got {job.count}")
    images = len(job.init_images) if job.command == "refine" else job.count  # image k uses seed + k
    if job.seed < 0 or job.seed + images - 1 >= 2**64:
        raise UsageError(f"--seed must be in [0, 2^64) for every image (seed + k), got {job.seed}", "e.g. --seed 42")
    if job.command == "turbo":
        turbo_sigmas(preset.sampler.steps)  # 1..4 or a UsageError
    else:
        sigmas_for(preset.sampler)  # steps in range or a UsageError
    if job.out_dir is not None:
        ensure_dir(job.out_dir)


def _negative_for(preset: Preset, negative: str) -> str:
    """The negative prompt actually used: none without guidance (Turbo, CFG 1), which has no
    unconditional branch to put it in (said once); otherwise encoded (gm.pipelines.image_cond)."""
    if negative and not _uses_uc(guider_for(preset.guider)):
        console.warn_once(f"the negative prompt is unused: {preset.name} runs without guidance "
                          f"({'CFG scale 1' if preset.guider.kind != 'identity' else 'no uc'})")
        return ""
    return negative


def _schedule(preset: Preset, job: ImageJob) -> torch.Tensor:
    return turbo_sigmas(preset.sampler.steps) if job.command == "turbo" else sigmas_for(preset.sampler)


def _sample_all(preset: Preset, runtime: Runtime, engine: Engine, denoise: Callable[[int], Denoise],
                starts: Iterable[torch.Tensor], sigmas: torch.Tensor, generators: list[torch.Generator], label: str,
                noise_fns: list[NoiseFn] | None = None, batch: int = 1) -> list[torch.Tensor]:
    """Sample each start (image k with generators[k], or noise_fns[k]), `batch` images per sampler
    call (`denoise(b)`: the guided denoiser for b images); returns one (1, ...) latent per image. The
    UNet is moved on and off the device once for all of them in --low-vram mode."""
    out: list[torch.Tensor] = []
    n = len(generators)
    pending = iter(starts)
    with on_device(engine.network, runtime), torch.inference_mode():
        for k in range(0, n, batch):
            part = range(k, min(k + batch, n))
            x = torch.cat([next(pending) for _ in part])
            fns = None if noise_fns is None else [noise_fns[j] for j in part]
            if len(part) > 1 and fns is None:  # image j's noise from its own generator, as when alone
                fns = [make_noise_fn(generators[j], (1, *x.shape[1:]), x.device, torch.float32) for j in part]
            tag = label if n == 1 else f"{label} {k + 1}/{n}" if len(part) == 1 else f"{label} {k + 1}-{part[-1] + 1}/{n}"
            latents = run_sampler(preset.sampler, denoise(len(part)), x, sigmas, generators[k], label=tag,
                                  noise_fn=None if fns is None else joined(fns))
            out.extend(latents.split(1))
    return out


def _denoise_for(engine: Engine, preset: Preset, runtime: Runtime, spec: TextCondition) -> Callable[[int], Denoise]:
    """Encode the prompt once; returns b -> the guided denoiser for a batch of b images."""
    guider = guider_for(preset.guider)
    cond, uc = conditioning(engine, preset, runtime, spec, _uses_uc(guider))
    denoiser = denoiser_for(engine, preset, runtime)
    made: dict[int, Denoise] = {}

    def for_batch(b: int) -> Denoise:
        if b not in made:
            done: dict[int, torch.Tensor] = {}
            made[b] = guided_denoise(denoiser, guider, repeat_cond(cond, b, done),
                                     None if uc is None else repeat_cond(uc, b, done))
        return made[b]

    return for_batch


def _engine(model, preset: Preset, runtime: Runtime, job: ImageJob) -> Engine:
    """The given Model's engine (Python API, loaded once), else the preset's, loaded now."""
    if model is None:
        return load(preset, runtime, job.checkpoint, job.unsafe_pickle, job.addons)
    addon_files.check_prompt_loras(model.engine, job.prompt_loras)
    return model.engine


def _decode_all(engine: Engine, runtime: Runtime, latents: list[torch.Tensor], tiles: str = "off") -> torch.Tensor:
    """One image per VAE call: a batched convolution may round differently, and image k must come
    out bit-identical when re-made alone from its recorded seed (it also bounds fp32 VAE memory).
    `tiles`: the --vae-tiling mode."""
    return torch.cat([decode(engine, z, runtime, chunk=1, tiles=tiles) for z in latents])


def _addon_fields(engine: Engine, fields: dict, record: dict) -> None:
    """LoRAs and the external VAE applied to `engine`, into the infotext fields and the gm record."""
    applied = addon_files.info(engine)
    fields.update(addon_files.a1111_fields(applied))
    record.update(addon_files.record_fields(applied))


def txt2img(preset: Preset, runtime: Runtime, job: ImageJob, model=None) -> Iterator[ImageResult]:
    """`gm txt2img` / `gm turbo`: N images (seeds seed..seed+N-1), optionally from an init image
    and through a refiner; yields each finished (and, with an out_dir, written) PNG. `model`: an
    already loaded Model of `preset` (else it is loaded after every check has passed)."""
    if job.command == "turbo":
        preset = presets.replace(preset, "guider", kind="identity")
    _check_common(preset, job)
    refiner = job.refiner
    if refiner is not None:
        check_strength(refiner.strength, "--refiner-strength")
        if refiner.finish and job.init_images:
            raise UsageError("--init-image with --refiner needs --no-finish (img2img runs the base to sigma 0)")
        # The same N as the base, so that the refiner's schedule starts where the base stopped.
        synced = presets.replace(refiner.preset, "sampler", steps=preset.sampler.steps)
        refiner = dataclasses.replace(refiner, preset=synced)
    init = None
    if job.init_images:
        check_strength(job.strength, "--strength")
        init_w, init_h = native_size(job.init_images[0])
    if job.aspect is not None:
        if job.width is not None or job.height is not None:
            raise UsageError("--aspect picks the size itself", "drop --width/--height, or drop --aspect")
        width, height = aspect_size(job.aspect, preset.defaults.width, preset.defaults.height)
    elif job.width is not None or job.height is not None or not job.init_images:
        width = preset.defaults.width if job.width is None else job.width
        height = preset.defaults.height if job.height is None else job.height
    else:
        width, height = init_w, init_h
    check_size(width, height, size_grid(preset))
    full = _schedule(preset, job)
    if job.init_images:
        init = load_image(job.init_images[0], width, height)
        sigmas = _img2img(full, job.strength, "--strength")
    elif refiner is not None and refiner.finish:
        sigmas = txt2noisy_sigmas(full, refiner.strength, original_steps=len(full) - 1)
    else:
        sigmas = full
    if refiner is not None:
        check_size(width, height, size_grid(refiner.preset))
        refiner_sigmas = _img2img(sigmas_for(refiner.preset.sampler), refiner.strength, "--refiner-strength")
        if refiner.finish and float(refiner_sigmas[0]) != float(sigmas[-1]):  # checked before any sampling
            raise UsageError(f"refiner schedule starts at sigma {float(refiner_sigmas[0]):.4f} but the base stops "
                             f"at {float(sigmas[-1]):.4f}",
                             "give the base and the refiner the same discretization (--set sampler.discretization=...)")
    if refiner is not None:  # a missing or mismatched refiner file fails before the base samples, not after
        check_file(refiner.preset, refiner.checkpoint, job.unsafe_pickle)
        check_addons(refiner.preset, addon_files.Addons(vae=job.addons.vae))  # the refiner's VAE decodes
    announce(job.seed, job.seed_drawn)
    engine = _engine(model, preset, runtime, job)
    negative = _negative_for(preset, job.negative)
    spec = TextCondition(job.encoded_prompt, negative, height, width,
                         preset.defaults.aesthetic_score, preset.defaults.negative_aesthetic_score)
    denoise = _denoise_for(engine, preset, runtime, spec)
    generators = [dev.cpu_generator(job.seed + k) for k in range(job.count)]
    noise_fns: list[NoiseFn] | None = None
    if init is not None:
        moments = posterior(engine, init, runtime, tiles=job.vae_tiling)  # one VAE encode; image k draws its own posterior sample
        starts = (_renoise(posterior_latent(engine, moments, runtime, g), sigmas, g, runtime) for g in generators)
    elif job.command == "turbo":
        shape = geometry(preset).shape(height, width)
        seeds = [job.seed + k for k in range(job.count)]
        if seeds[-1] + 1 + len(sigmas) >= 2**32:
            raise UsageError(f"turbo seeds must stay below 2**32 (numpy's RandomState), got {job.seed}", "use a smaller --seed")
        starts = (numpy_noise(s, shape, runtime.device) for s in seeds)
        noise_fns = [turbo_noise_fn(s, shape, runtime.device) for s in seeds]
    else:
        shape = geometry(preset).shape(height, width)
        starts = (noise_like(shape, g, runtime) for g in generators)
    latents = _sample_all(preset, runtime, engine, denoise, starts, sigmas, generators, "sample", noise_fns,
                          job.batch_size)
    source = engine_record(engine)  # the file loaded: its stem and Model hash
    fields = a1111_fields(preset, job.seed, width, height, preset.sampler.steps, _cfg_label(preset), source)
    record = run_record(job.command, preset, job.seed, prompt=job.prompt, negative_prompt=negative, width=width,
                        height=height, checkpoint=source)
    if job.negative != negative:
        record["negative_prompt_ignored"] = job.negative
    _addon_fields(engine, fields, record)
    if init is not None:
        fields["Denoising strength"] = job.strength
        record.update(init_image=str(job.init_images[0]), strength=job.strength)
    if refiner is not None:
        del denoise, engine  # free the base before the refiner is loaded
        dev.empty_cache(runtime.device)
        engine, latents = refine_latents(refiner, runtime, job, latents, generators, spec, refiner_sigmas,
                                         job.batch_size)
        fields["Refiner"] = refiner.preset.name
        fields["Refiner switch at"] = round((len(sigmas) - 1) / max(len(full) - 1, 1), 4)
        record["refiner"] = {"preset": refiner.preset.to_dict(), "strength": refiner.strength,
                             "finish": refiner.finish, "checkpoint": engine_record(engine)}
    images = _decode_all(engine, runtime, latents, job.vae_tiling)
    yield from image_results(images, job.out_dir, job.prompt, fields, record, job.seed)


def refine_latents(refiner: RefinerPlan, runtime: Runtime, job: ImageJob, latents: list[torch.Tensor],
                   generators: list[torch.Generator], base: TextCondition,
                   sigmas: torch.Tensor, batch: int = 1) -> tuple[Engine, list[torch.Tensor]]:
    """Second stage of the hand-off on each base latent along the refiner's `sigmas` (its img2img schedule);
    returns the refiner engine (its VAE decodes)."""
    r = refiner.preset
    engine = load(r, runtime, refiner.checkpoint, job.unsafe_pickle, addon_files.Addons(vae=job.addons.vae))
    # The refiner sees the prompt, size (h, w), crop (0, 0) and aesthetic 6.0 / 2.5; the demo passes
    # it the negative prompt only when the base used it (i.e. not for an SDXL base).
    spec = TextCondition(job.encoded_prompt, base.negative, base.height, base.width,
                         r.defaults.aesthetic_score, r.defaults.negative_aesthetic_score)
    denoise = _denoise_for(engine, r, runtime, spec)
    if refiner.finish:  # no fresh noise: the latent is already at sigma_0
        starts = (x / start_scale(sigmas).item() for x in latents)
    else:
        starts = (_renoise(x, sigmas, g, runtime) for x, g in zip(latents, generators, strict=True))
    return engine, _sample_all(r, runtime, engine, denoise, starts, sigmas, generators, "refine", batch=batch)


def refine(preset: Preset, runtime: Runtime, job: ImageJob, model=None) -> Iterator[ImageResult]:
    """`gm refine`: img2img of existing images (each at its own size floored to 64, seed + i); with
    job.prompt_from_inputs each input is conditioned on the prompt (and negative) its metadata records."""
    _check_common(preset, job)
    check_strength(job.strength, "--strength")
    sizes = [native_size(p) for p in job.init_images]  # reads every input first: bad files fail early
    prompts = [input_prompt(path, job) for path in job.init_images]
    announce(job.seed, job.seed_drawn)
    engine = _engine(model, preset, runtime, job)
    sigmas = _img2img(sigmas_for(preset.sampler), job.strength, "--strength")
    denoisers: dict[tuple[int, int, str, str], Callable[[int], Denoise]] = {}
    source = engine_record(engine)
    for i, (path, (width, height), (prompt, given)) in enumerate(zip(job.init_images, sizes, prompts, strict=True)):
        negative = _negative_for(preset, given)
        if (width, height, prompt, negative) not in denoisers:
            spec = TextCondition(prompt if job.prompt_from_inputs else job.encoded_prompt, negative, height, width,
                                 preset.defaults.aesthetic_score, preset.defaults.negative_aesthetic_score)
            denoisers[(width, height, prompt, negative)] = _denoise_for(engine, preset, runtime, spec)
        generator = dev.cpu_generator(job.seed + i)
        # One image at a time (outputs stream out as they are written), so each stage moves per image.
        moments = posterior(engine, load_image(path, width, height), runtime, tiles=job.vae_tiling)
        z = posterior_latent(engine, moments, runtime, generator)
        (latent,) = _sample_all(preset, runtime, engine, denoisers[(width, height, prompt, negative)],
                                [_renoise(z, sigmas, generator, runtime)], sigmas, [generator],
                                f"refine {i + 1}/{len(job.init_images)}")
        fields = a1111_fields(preset, job.seed + i, width, height, preset.sampler.steps, _cfg_label(preset), source)
        fields["Denoising strength"] = job.strength
        record = run_record(job.command, preset, job.seed + i, prompt=prompt, negative_prompt=negative,
                            width=width, height=height, init_image=str(path), strength=job.strength,
                            checkpoint=source)
        _addon_fields(engine, fields, record)
        yield from image_results(_decode_all(engine, runtime, [latent], job.vae_tiling), job.out_dir, prompt, fields,
                                 record, job.seed + i)

