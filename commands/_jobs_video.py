"""`--jobs FILE` for `gm img2vid`, `gm orbit` and `gm video4d` (see _jobs for the shared part): a line
names its `input` and may change seed, steps, frames, camera and the like; the model (and SV3D for
SV4D) loads once per process."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ._common import Common
from ._jobs import load_model, merge, runtime_of, serve

_INPUTS = (Path, list)
_CAMERA = {"elevation": float, "elevations": (str, list), "azimuths": (str, list), "image_frame_ratio": float}
_CLIP = {"input": _INPUTS, "steps": int, "seed": (int, str), "decoding_t": int, "fps": float, "format": str}
VIDEO_OPTIONS: dict[str, dict[str, Any]] = {
    "img2vid": {**_CLIP, "frames": int, "fps_id": int, "motion_bucket_id": int, "cond_aug": float},
    "orbit": {**_CLIP, **_CAMERA, "remove_bg": bool},
    "video4d": {"input": Path, "steps": int, "seed": (int, str), "decoding_t": int, "frames": int, "img_size": int,
                **_CAMERA, "remove_bg": bool, "pad": bool},
}
_RENAMES = {"input": "images", "format": "fmt"}


@dataclass(frozen=True)
class ClipJob:
    """One line of an img2vid / orbit job file, checked: what run_img2vid / orbit_files take."""

    paths: tuple[Path, ...]
    request: Any  # VideoRequest
    output: Any  # OutputSpec (its folder is the job's)
    options: dict[str, Any]  # orbit: camera, frame ratio, background removal

    @property
    def seed(self) -> int:
        return self.request.seed


def _listed(value: Any) -> Any:
    """A JSON list of angles -> the command line's comma form."""
    return ",".join(str(v) for v in value) if isinstance(value, list) else value


def _defaults(command: str, cli: dict[str, Any]) -> dict[str, Any]:
    names = {_RENAMES.get(k, k) for k in VIDEO_OPTIONS[command]} | ({"source"} if command == "video4d" else set())
    return {k: v for k, v in cli.items() if k in names}


def _no_input(value: Any) -> None:
    from gm.errors import UsageError

    if value is None:
        raise UsageError("no 'input' in this job", 'add e.g. "input": "chair.png"')


def clip_jobs(common: Common, command: str, jobs: str, cli: dict[str, Any]) -> None:
    """`gm img2vid|orbit --jobs FILE`; `cli` is the command body's options by name."""
    from gm.io.files import expand_inputs
    from gm.io.media import IMAGE_SUFFIXES
    from gm.pipelines.img2vid import run_img2vid
    from gm.pipelines.orbit import camera, orbit_files, uses_camera
    from gm.pipelines.video import request_from_preset

    from ._video import camera_options, output_spec

    if command == "img2vid":
        preset = common.load_preset("video", "an image-to-video model",
                                    "use svd, svd-xt or svd-xt-1.1; gm orbit runs sv3d-u/p")
    else:
        preset = common.load_preset("orbit", "an orbit model", "use sv3d-u or sv3d-p")
    defaults = _defaults(command, cli)
    out = output_spec(command, preset.name, cli["out"], "mp4", None, 10.0).out_dir

    def validate(line: dict[str, Any]) -> ClipJob:
        o = merge(defaults, line, _RENAMES)
        _no_input(o["images"])
        images = [str(o["images"])] if isinstance(o["images"], str) else [str(p) for p in o["images"]]
        paths = tuple(expand_inputs(images, (*IMAGE_SUFFIXES, ".gif"), "image"))
        keys = ("frames", "steps", "seed", "cond_aug", "decoding_t", "fps_id", "motion_bucket_id")
        request = request_from_preset(preset, **{k: o[k] for k in keys if k in o})
        if command == "img2vid":
            output = output_spec("img2vid", preset.name, str(out), o["fmt"], o["fps"], request.fps_id + 1)
            return ClipJob(paths, request, output, {})
        output = output_spec("orbit", preset.name, str(out), o["fmt"], o["fps"], 10.0, input_suffix=".png")
        elevations, azimuths = camera_options(o["elevation"], _listed(o["elevations"]), _listed(o["azimuths"]))
        if uses_camera(preset):
            camera(request.frames, preset.defaults.elevation_deg if elevations is None else elevations, azimuths)
        return ClipJob(paths, request, output, {"elevations_deg": elevations, "azimuths_deg": azimuths,
                                                "frame_ratio": o["image_frame_ratio"], "remove_bg": o["remove_bg"]})

    run = run_img2vid if command == "img2vid" else orbit_files

    def run_one(model: Any, job: ClipJob, folder: Path) -> dict[str, Any]:
        output = dataclasses.replace(job.output, out_dir=folder)
        results = list(run(list(job.paths), model.preset, model.runtime, job.request, output, engine=model.engine,
                           **job.options))
        return {"seed": job.seed, "seeds": [r.record["seed"] for r in results]}

    serve(common, jobs, out, VIDEO_OPTIONS[command], validate, lambda ranks: load_model(common, preset, ranks),
          run_one, command)


def video4d_jobs(common: Common, jobs: str, cli: dict[str, Any]) -> None:
    """`gm video4d --jobs FILE`: the SV4D-family model and (for SV4D) its SV3D load once."""
    from gm.loader import load
    from gm.pipelines.video4d import share_identical_encoders, video4d, with_encoding_chunk
    from gm.pipelines.video4d_job import check_request, is_sv4d, sv3d_preset, video4d_request

    from ._video import camera_options

    preset = common.load_preset("video4d", "a 4D model", "use sv4d2, sv4d2-8views or sv4d")
    defaults = _defaults("video4d", cli)
    out = Path(cli["out"]) if cli["out"] else Path("outputs") / "video4d" / preset.name

    def validate(line: dict[str, Any]) -> Any:
        o = merge(defaults, line, {"input": "source"})
        _no_input(o["source"])
        elevations, azimuths = camera_options(o["elevation"], _listed(o["elevations"]), _listed(o["azimuths"]))
        request = video4d_request(preset, str(o["source"]), frames=o["frames"], steps=o["steps"], seed=o["seed"],
                                  size=o["img_size"], frame_ratio=o["image_frame_ratio"], elevations=elevations,
                                  azimuths=azimuths, encoding_t=cli["encoding_t"], decoding_t=o["decoding_t"],
                                  remove_bg=o["remove_bg"], pad=o["pad"], sv3d=cli["sv3d_preset"])
        check_request(preset, request)
        return request

    def load_models(ranks: Any) -> Any:
        runtime = runtime_of(common, ranks.device)
        encoding_t = video4d_request(preset, "", encoding_t=cli["encoding_t"]).encoding_t
        model = load_model(common, with_encoding_chunk(preset, encoding_t), ranks)
        share_identical_encoders(model.engine)
        sv3d = None
        if is_sv4d(preset):
            p = sv3d_preset(cli["sv3d_preset"])
            sv3d = load(p, runtime(p), cli["sv3d_checkpoint"], common.unsafe_pickle)
        return runtime, model.engine, sv3d

    def run_one(models: Any, request: Any, folder: Path) -> dict[str, Any]:
        runtime, engine, sv3d = models
        video4d(preset, runtime, request, folder, sv3d_checkpoint=cli["sv3d_checkpoint"], engine=engine,
                sv3d_engine=sv3d, unsafe_pickle=common.unsafe_pickle)
        return {"seed": request.seed}

    serve(common, jobs, out, VIDEO_OPTIONS["video4d"], validate, load_models, run_one, "video4d")
