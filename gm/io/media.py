"""Reading and writing images and videos: PNG with metadata, mp4 (H.264 via imageio-ffmpeg), gif.

Images travel as uint8 numpy arrays (H, W, 3) or float tensors in [0, 1]; videos as lists of
such frames. Writers take a destination path and are used through gm.io.files.write_atomic, so
a result is never half-written or overwritten.
"""

from __future__ import annotations

import json
import os
import re
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path

import numpy as np
from PIL import Image, PngImagePlugin, UnidentifiedImageError

from gm.errors import GmError, InputError, disk_full, explain

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
VIDEO_SUFFIXES = (".mp4", ".gif", ".mov", ".webm", ".mkv")
PIXEL_LIMIT_ENV = "GM_MAX_IMAGE_PIXELS"


def pixel_limit() -> int | None:
    """The largest image (width x height) gm decodes: $GM_MAX_IMAGE_PIXELS (0 = no limit), else
    Pillow's decompression-bomb limit (178956970 pixels). A bigger file is refused before decoding."""
    value = os.environ.get(PIXEL_LIMIT_ENV, "").strip()
    if not value:
        return 2 * int(Image.MAX_IMAGE_PIXELS or 0) or None
    try:
        limit = int(value)
    except ValueError:
        raise GmError(f"{PIXEL_LIMIT_ENV}={value!r}: expected a whole number of pixels",
                      f"e.g. {PIXEL_LIMIT_ENV}=400000000, or 0 for no limit") from None
    return limit if limit > 0 else None


def apply_pixel_limit() -> None:
    """Make Pillow's guard (which raises above 2 x MAX_IMAGE_PIXELS) refuse exactly above
    pixel_limit(), for every reader in the process (inputs, datasets, watermark checks)."""
    if PIXEL_LIMIT_ENV in os.environ:
        limit = pixel_limit()
        Image.MAX_IMAGE_PIXELS = None if limit is None else (limit + 1) // 2
        # between MAX and 2 x MAX Pillow only warns: the limit above is the one gm means
        warnings.filterwarnings("ignore", category=Image.DecompressionBombWarning)


def bomb_error(err: BaseException, path: object = None) -> InputError:
    """Pillow's DecompressionBombError as a one-line error with the limit and how to raise it."""
    numbers = [int(n) for n in re.findall(r"(\d+) pixels", str(err))]  # "(N pixels) exceeds limit of M pixels"
    size, limit = (numbers + [0, 0])[:2]
    name = path or "an image"
    raise_to = f"{PIXEL_LIMIT_ENV}={size}" if size else f"{PIXEL_LIMIT_ENV}=<pixels>"
    return InputError(f"{name}: image of {size or '?'} pixels is over the limit of {limit or '?'} pixels "
                      "(Pillow's decompression-bomb guard)",
                      f"if you trust the file, raise the limit deliberately: {raise_to} gm ...")


apply_pixel_limit()


def open_image(path: Path) -> Image.Image:
    """A PIL image, fully read; non-images and corrupt files are InputErrors."""
    if path.suffix.lower() in VIDEO_SUFFIXES and path.suffix.lower() != ".gif":
        raise InputError(f"{path}: is a video, not an image", "pass a .png/.jpg image")
    try:
        with Image.open(path) as img:
            img.load()
            return img.copy() if img.format != "GIF" else img.convert("RGBA")
    except Image.DecompressionBombError as err:
        raise bomb_error(err, path) from None
    except (UnidentifiedImageError, OSError, SyntaxError) as err:
        named = explain(err) if isinstance(err, OSError) and err.errno else None  # permission, missing
        if named is not None:
            raise named from None
        raise InputError(f"{path}: not a readable image ({err.__class__.__name__})", "pass a .png/.jpg image") from None


def to_rgb(img: Image.Image, background: tuple[int, int, int] = (255, 255, 255)) -> Image.Image:
    """8-bit RGB; transparency is composited on `background` (white, as the reference's demos)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64)
        scale = 65535.0 if arr.max() > 255 else 255.0
        img = Image.fromarray(np.clip(arr / scale * 255.0, 0, 255).astype(np.uint8), "L")
    if img.mode == "P":
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA"):
        rgba = img.convert("RGBA")
        canvas = Image.new("RGB", rgba.size, background)
        canvas.paste(rgba, mask=rgba.getchannel("A"))
        return canvas
    return img.convert("RGB")


def png_info(parameters: str | None = None, gm_record: dict | None = None) -> PngImagePlugin.PngInfo:
    """Text chunks: A1111-style `parameters` and a `gm` JSON chunk with the effective preset."""
    info = PngImagePlugin.PngInfo()
    if parameters is not None:
        info.add_text("parameters", parameters)
    if gm_record is not None:
        info.add_itxt("gm", json.dumps(gm_record, sort_keys=True, default=str))
    return info


def write_png(path: Path, image: np.ndarray, info: PngImagePlugin.PngInfo | None = None) -> None:
    Image.fromarray(image).save(path, format="PNG", pnginfo=info)


def read_png_text(path: Path) -> dict[str, str]:
    with Image.open(path) as img:
        return dict(getattr(img, "text", {}) or {})


def _mp4_command(path: Path, size: tuple[int, int], fps: float, metadata: dict[str, str] | None) -> list[str]:
    """ffmpeg reading raw rgb24 frames on stdin -> H.264 yuv420p at CRF 10: the command
    imageio-ffmpeg's write_frames builds for quality 8 (so files are byte-identical to it)."""
    from fractions import Fraction

    import imageio_ffmpeg

    w, h = size
    cmd = [imageio_ffmpeg.get_ffmpeg_exe(), "-y", "-f", "rawvideo", "-vcodec", "rawvideo", "-s", f"{w}x{h}",
           "-pix_fmt", "rgb24", "-r", str(Fraction(fps).limit_denominator()), "-i", "-", "-an",
           "-vcodec", "libx264", "-pix_fmt", "yuv420p", "-crf", "10"]
    if w % 16 or h % 16:  # H.264 players want multiples of 16: scale up as imageio-ffmpeg does
        cmd += ["-vf", f"scale={w + (-w) % 16}:{h + (-h) % 16}"]
    cmd += ["-v", "error"]
    for key, value in (metadata or {}).items():
        cmd += ["-metadata", f"{key}={value}"]
    return cmd + [str(path)]


def write_mp4(path: Path, frames: Sequence[np.ndarray], fps: float, metadata: dict[str, str] | None = None) -> None:
    """H.264 yuv420p mp4 (what the reference's imageio writer produces), metadata as container tags.

    ffmpeg runs as a child whose exit status is checked (imageio-ffmpeg ignores it), so a full
    disk or a dying encoder is an error here, never a truncated file that looks finished."""
    import subprocess
    import tempfile

    h, w = frames[0].shape[:2]
    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(_mp4_command(path, (w, h), fps, metadata), stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=log, start_new_session=True)
        try:
            try:
                for frame in frames:
                    proc.stdin.write(np.ascontiguousarray(frame, dtype=np.uint8).tobytes())
                proc.stdin.close()
            except BrokenPipeError:  # ffmpeg died: its exit status and log say why
                pass
            code = proc.wait()
        except BaseException:  # interrupted: stop the encoder now, the caller drops the file
            proc.kill()
            proc.wait()
            raise
        if code != 0:
            log.seek(0)
            text = log.read().decode("utf-8", "replace").strip()
            if "No space left" in text or "Disk quota" in text:
                raise disk_full(path)
            if text:
                last = text.splitlines()[-1]
            elif code < 0:
                import signal

                last = f"stopped by {signal.Signals(-code).name}"  # e.g. SIGXFSZ: over the file size limit
            else:
                last = f"exit status {code}"
            raise GmError(f"ffmpeg could not write {path.name}: {last}", "check the output folder and disk space")


def write_gif(path: Path, frames: Sequence[np.ndarray], fps: float, comment: str | None = None) -> None:
    """An endlessly looping gif; `comment` (e.g. the generation parameters) goes in its comment block."""
    images = [Image.fromarray(f) for f in frames]
    extra = {"comment": comment.encode()} if comment else {}
    images[0].save(path, format="GIF", save_all=True, append_images=images[1:],
                   duration=int(round(1000 / fps)), loop=0, **extra)


def probe_video(path: Path) -> dict:
    """ffmpeg's view of a video: fps, size, duration, nframes (estimate) and container tags."""
    import imageio_ffmpeg

    gen = imageio_ffmpeg.read_frames(str(path))
    try:
        meta = gen.__next__()
    except (RuntimeError, OSError, StopIteration) as err:
        raise InputError(f"{path}: not a readable video ({err})") from None
    finally:
        gen.close()
    return meta


def iter_video(path: Path, mode: str = "RGB") -> Iterator[Image.Image]:
    """Frames of a gif (PIL, each as RGBA like the reference) or any ffmpeg-readable video."""
    if path.suffix.lower() == ".gif":
        try:
            with Image.open(path) as img:
                for index in range(getattr(img, "n_frames", 1)):
                    img.seek(index)
                    yield img.convert("RGBA")
        except Image.DecompressionBombError as err:
            raise bomb_error(err, path) from None
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"{path}: not a readable gif ({err.__class__.__name__})") from None
        return
    import imageio_ffmpeg

    try:
        gen = imageio_ffmpeg.read_frames(str(path), pix_fmt="rgb24")
        meta = gen.__next__()
    except (RuntimeError, OSError, StopIteration) as err:
        raise InputError(f"{path}: not a readable video ({err.__class__.__name__})", "pass an .mp4 or .gif") from None
    w, h = meta["size"]
    try:
        for raw in gen:
            yield Image.frombytes("RGB", (w, h), raw)
    finally:
        gen.close()


def read_video(path: Path, limit: int | None = None) -> list[Image.Image]:
    frames = []
    for frame in iter_video(path):
        frames.append(frame)
        if limit is not None and len(frames) >= limit:
            break
    if not frames:
        raise InputError(f"{path}: no frames")
    return frames


def video_tags(path: Path) -> dict[str, str]:
    """Container metadata tags (title/comment/...) of an mp4, read with ffmpeg."""
    import re
    import subprocess

    import imageio_ffmpeg

    proc = subprocess.run(
        [imageio_ffmpeg.get_ffmpeg_exe(), "-hide_banner", "-i", str(path), "-f", "ffmetadata", "-"],
        capture_output=True, text=True, timeout=60,
    )
    tags: dict[str, str] = {}
    for line in proc.stdout.splitlines():
        m = re.match(r"^([A-Za-z0-9_]+)=(.*)$", line)
        if m:
            tags[m.group(1).lower()] = m.group(2).replace("\\=", "=").replace("\\;", ";").replace("\\#", "#")
    return tags


def to_uint8(images) -> np.ndarray:
    """Float [0, 1] tensor (N, 3, H, W) -> uint8 (N, H, W, 3), truncating like the reference."""
    arr = images.detach().float().clamp(0, 1).mul(255).permute(0, 2, 3, 1).cpu().numpy()
    return arr.astype(np.uint8)
