"""`Model`, the Python API: a loaded preset (gm.model.ModelBase) with one method per family, built on the
same Jobs and pipelines as the commands, returning images / frames instead of printing paths, and
writing files only when asked.

Each method takes the command's options as keyword arguments (None = the preset's default) and
returns PIL images (frames: a list of PIL images per clip), or with `tensors=True` float tensors in
[0, 1] (N, 3, H, W) of exactly the pixels a file would hold (watermarked, truncated to uint8).
`save=True` writes to the command's default folder, `out=DIR` to DIR. `seed=None` (or -1) draws a fresh
seed, kept in `Model.last_seed` (image k of a call used last_seed + k), `seed="preset"` takes the
preset's documented one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from gm import device as dev
from gm.model import ModelBase

_OUT = {"txt2img": "outputs/txt2img", "refine": "outputs/refine", "turbo": "outputs/turbo",
        "img2vid": "outputs/img2vid", "orbit": "outputs/orbit"}


def _out_dir(command: str, save: bool, out: str | Path | None) -> Path | None:
    return Path(out) if out is not None else (Path(_OUT[command]) if save else None)


def _as(pixels: np.ndarray, tensors: bool) -> Any:
    """(H, W, 3) or (T, H, W, 3) uint8 -> a PIL image / list of them, or a [0, 1] float tensor."""
    if tensors:
        t = torch.from_numpy(np.ascontiguousarray(pixels)).float() / 255.0
        return t.permute(2, 0, 1) if t.ndim == 3 else t.permute(0, 3, 1, 2)
    return Image.fromarray(pixels) if pixels.ndim == 3 else [Image.fromarray(f) for f in pixels]


def _with_record(image: Any, record: dict[str, Any] | None) -> Any:
    """A PIL image carries what a written PNG would: `info["parameters"]` (A1111) and `info["gm"]` (JSON)."""
    if isinstance(image, Image.Image) and record is not None:
        image.info.update(parameters=record.get("parameters", ""), gm=json.dumps(record, default=str))
    return image


class Model(ModelBase):
    """What `gm.load` returns: loaded once, used for many calls."""

    last_seed: int | None = None  # the (first) seed of the latest call

    @property
    def source(self) -> dict[str, str] | None:
        """The checkpoint file loaded, as outputs record it: {path, name, sha256_10} (A1111's Model hash)."""
        from gm.provenance import engine_record

        return engine_record(self.engine)

    def _image(self, command: str, prompt: str, options: dict[str, Any], tensors: bool, save: bool,
               out: str | Path | None) -> list[Any]:
        from gm.pipelines.image import refine, txt2img
        from gm.pipelines.image_job import image_job

        init = options.pop("init_image", None)
        images = tuple(Path(p) for p in ([init] if isinstance(init, (str, Path)) else (init or ())))
        preset, job = image_job(self.preset, command, prompt=prompt, count=options.pop("n", 1),  # type: ignore[arg-type]
                                init_images=images, out_dir=_out_dir(command, save, out),
                                vae_tiling=self.vae_tiling, **options)
        self.last_seed = job.seed
        run = refine if command == "refine" else txt2img
        return [_with_record(_as(r.pixels, tensors), r.record) for r in run(preset, self.runtime, job, model=self)]

    def txt2img(self, prompt: str, *, negative: str = "", n: int = 1, batch_size: int = 1, seed: int | str | None = None,
                steps: int | None = None, cfg: float | None = None, sampler: str | None = None,
                width: int | None = None, height: int | None = None, aspect: str | None = None,
                init_image: str | Path | None = None, strength: float | None = None, tensors: bool = False,
                save: bool = False, out: str | Path | None = None) -> list[Any]:
        """`gm txt2img` on the loaded model: n images, image k with seed + k."""
        options = dict(negative=negative, n=n, batch_size=batch_size, seed=seed, steps=steps, cfg=cfg, sampler=sampler,
                       width=width, height=height, aspect=aspect, init_image=init_image, strength=strength)
        return self._image("txt2img", prompt, options, tensors, save, out)

    def turbo(self, prompt: str, *, n: int = 1, batch_size: int = 1, seed: int | str | None = None,
              steps: int | None = None, width: int | None = None, height: int | None = None,
              init_image: str | Path | None = None, strength: float | None = None, tensors: bool = False,
              save: bool = False, out: str | Path | None = None) -> list[Any]:
        """`gm turbo`: one- to four-step images without guidance (img2img with `init_image`)."""
        options = dict(n=n, batch_size=batch_size, seed=seed, steps=steps, width=width, height=height,
                       init_image=init_image, strength=strength)
        return self._image("turbo", prompt, options, tensors, save, out)

    def refine(self, images: list[str | Path] | str | Path, *, prompt: str | None = None, negative: str | None = None,
               strength: float = 0.3, seed: int | str | None = None, steps: int | None = None, cfg: float | None = None,
               sampler: str | None = None, tensors: bool = False, save: bool = False,
               out: str | Path | None = None) -> list[Any]:
        """`gm refine`: img2img of image files, each at its own size (prompt None: each file's own)."""
        options = dict(negative=negative, strength=strength, seed=seed, steps=steps, cfg=cfg, sampler=sampler,
                       init_image=[images] if isinstance(images, (str, Path)) else list(images))
        return self._image("refine", prompt, options, tensors, save, out)

    def _clips(self, command: str, images: Any, options: dict[str, Any], tensors: bool, save: bool,
               out: str | Path | None) -> list[Any]:
        from gm.outputs import OutputSpec
        from gm.pipelines.img2vid import run_img2vid
        from gm.pipelines.orbit import orbit_files
        from gm.pipelines.video import request_from_preset

        paths = [Path(images)] if isinstance(images, (str, Path)) else [Path(p) for p in images]
        keys = ("frames", "steps", "seed", "cond_aug", "decoding_t", "fps_id", "motion_bucket_id")
        request = request_from_preset(self.preset, **{k: options.pop(k) for k in keys if k in options})
        self.last_seed = request.seed
        output = OutputSpec(_out_dir(command, save, out), fps=options.pop("fps", 10.0))
        run = run_img2vid if command == "img2vid" else orbit_files
        results = run(paths, self.preset, self.runtime, request, output, engine=self.engine, **options)
        return [_as(r.pixels, tensors) for r in results]

    def img2vid(self, images: Any, *, frames: int | None = None, steps: int | None = None, seed: int | str | None = None,
                fps_id: int | None = None, motion_bucket_id: int | None = None, cond_aug: float | None = None,
                decoding_t: int | None = None, tensors: bool = False, save: bool = False,
                out: str | Path | None = None) -> list[Any]:
        """`gm img2vid`: one clip per image (a list of PIL frames, or a (T, 3, H, W) tensor)."""
        options = {k: v for k, v in dict(frames=frames, steps=steps, seed=seed, fps_id=fps_id, cond_aug=cond_aug,
                                         motion_bucket_id=motion_bucket_id, decoding_t=decoding_t).items()}
        return self._clips("img2vid", images, options, tensors, save, out)

    def orbit(self, images: Any, *, steps: int | None = None, seed: int | str | None = None,
              elevation: float | list[float] | None = None, azimuths: list[float] | None = None,
              remove_bg: bool | None = None, tensors: bool = False, save: bool = False,
              out: str | Path | None = None) -> list[Any]:
        """`gm orbit`: one orbit per object image (SV3D_p follows `elevation` / `azimuths`)."""
        options = dict(steps=steps, seed=seed, elevations_deg=elevation, azimuths_deg=azimuths, remove_bg=remove_bg)
        return self._clips("orbit", images, options, tensors, save, out)

    def video4d(self, source: str | Path, *, frames: int | None = None, steps: int | None = None,
                seed: int | str | None = None, size: int | None = None, elevation: float | list[float] | None = None,
                azimuths: list[float] | None = None, sv3d: str = "sv3d-u", tensors: bool = False,
                save: bool = False, out: str | Path | None = None) -> dict[str, Any]:
        """`gm video4d` on the loaded SV4D-family model: {"process_input", "v001", ..., "grid"} -> frames
        (SV4D also loads its `sv3d` preset for the reference views)."""
        from gm.pipelines.video4d import files_used, render
        from gm.pipelines.video4d_job import video4d_request
        from gm.pipelines.video4d_output import Writer

        request = video4d_request(self.preset, str(source), frames=frames, steps=steps, seed=seed, size=size,
                                  elevations=elevation, azimuths=azimuths, sv3d=sv3d)
        self.last_seed = request.seed
        folder = Path(out) if out is not None else (Path("outputs/video4d") / self.preset.name if save else None)
        writer = Writer(folder, self.preset, request) if folder is not None else None
        videos = render(self.preset, lambda p: self.runtime if p is self.preset else dev.runtime_for(p.perf, str(self.runtime.device)),
                        request, engine=self.engine)
        if writer is not None:
            writer.record.update(files_used(self.preset, request, engine=self.engine))
            for tag, pixels in videos.items():
                writer.video(tag, pixels)
        return {tag: _as(pixels, tensors) for tag, pixels in videos.items()}
