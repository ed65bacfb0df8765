"""Object views for SV3D / SV4D: background removal, centring on a square canvas, white compositing.

Mirrors the SV3D input preparation of `scripts/sampling/simple_video_sample.py` (its SV3D input
path) and is reused by the 4D pipeline for its frames:

1. a non-RGBA image is shrunk to at most 768x768 (LANCZOS `thumbnail`) and its background removed
   with rembg (`alpha_matting=True`); RGBA images keep their own alpha;
2. the object is the bounding box of alpha > 0;
3. it is pasted centred on a transparent square canvas of side max(w, h) / image_frame_ratio, or
   the image's own size when no ratio is given;
4. the canvas is resized to size x size (LANCZOS) and composited on white: rgb * a + (1 - a),
   truncated to uint8.

Fixed here: the reference calls the row count "w" and the column count "h", so a
non-square input is cropped or fails to broadcast. Here rows are rows, and without a ratio the
canvas side is the image's LONGER side, so every object fits (for square inputs this is the
reference's value).

rembg's segmentation model (u2net, ~170 MB) is never fetched behind the user's back: `gm download
rembg-u2net` puts it where gm points rembg (U2NET_HOME), and without it background removal fails at
once with that hint instead of waiting on rembg's own download retries. The segmentation function
can be injected (`segment=`) so that tests and callers with their own masks skip it.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from PIL import Image

from gm.errors import GmError, InputError, UsageError

# RGB(A) image -> RGBA image whose alpha is the object mask.
Segmenter = Callable[[Image.Image], Image.Image]

THUMBNAIL = 768  # the reference shrinks inputs to this before rembg


def rembg_segment(image: Image.Image) -> Image.Image:
    """rembg with alpha matting and its u2net model, as the reference (rembg's default in 2024;
    newer rembg releases default to another model, so the session is named explicitly)."""
    from gm.hub import rembg_model_dir

    rembg_model_dir()  # the verified model or a GmError now; points rembg at it (no download of its own)
    try:
        from rembg import new_session, remove

        out = remove(image.convert("RGBA"), alpha_matting=True, session=new_session("u2net"))
    except (OSError, RuntimeError, ValueError) as err:  # model download / onnxruntime failures
        raise GmError(
            f"background removal failed: {err.__class__.__name__}: {err}",
            "run `gm download rembg-u2net` again, "
            "or pass an RGBA image with --no-remove-bg",
        ) from None
    assert isinstance(out, Image.Image)
    return out.convert("RGBA")


_REMBG = rembg_segment  # a replaced module-level segmenter (a test's) needs no model file


def remove_background(image: Image.Image, segment: Segmenter | None = None) -> Image.Image:
    """Thumbnail to at most 768x768 (LANCZOS), then segment: an RGBA image of the object."""
    small = image.copy() if image.mode in ("RGB", "RGBA", "L") else image.convert("RGBA")
    small.thumbnail((THUMBNAIL, THUMBNAIL), Image.Resampling.LANCZOS)  # in place, keeps the aspect
    out = (segment or rembg_segment)(small.convert("RGBA"))
    if out.mode != "RGBA":
        raise InputError("background removal returned no alpha channel")
    return out


def object_bbox(rgba: np.ndarray) -> tuple[int, int, int, int]:
    """(top, left, height, width) of the pixels with alpha > 0 in an (H, W, 4) array."""
    rows = np.flatnonzero((rgba[..., 3] > 0).any(axis=1))
    cols = np.flatnonzero((rgba[..., 3] > 0).any(axis=0))
    if rows.size == 0:
        raise InputError("no object found: the image is fully transparent",
                         "check the input, or pass --no-remove-bg for an opaque image")
    return int(rows[0]), int(cols[0]), int(rows[-1] - rows[0] + 1), int(cols[-1] - cols[0] + 1)


def canvas_side(shape: tuple[int, int], bbox: tuple[int, int, int, int], frame_ratio: float | None) -> int:
    """Side of the square canvas: max(h, w) / ratio, or the image's longer side without a ratio."""
    _top, _left, h, w = bbox
    if frame_ratio is None:
        return max(shape)
    if not 0.0 < frame_ratio <= 1.0:
        raise UsageError(f"--image-frame-ratio must be in (0, 1], got {frame_ratio}",
                         "it is the fraction of the frame the object's longer side fills, e.g. 0.917")
    return int(max(h, w) / frame_ratio)


def centre_object(rgba: Image.Image, frame_ratio: float | None = None,
                  bbox: tuple[int, int, int, int] | None = None) -> Image.Image:
    """The object (alpha > 0, or the given `bbox` = (top, left, height, width)) centred on a
    transparent square RGBA canvas; pass one bbox for every frame of a video to keep it steady."""
    arr = np.asarray(rgba.convert("RGBA"))  # (H, W, 4) uint8
    top, left, h, w = object_bbox(arr) if bbox is None else bbox
    side = canvas_side(arr.shape[:2], (top, left, h, w), frame_ratio)
    crop = arr[top:top + h, left:left + w]
    if side < max(h, w):  # only a ratio can shrink the canvas below the object: crop it centred
        ct, cl = max(0, (h - side) // 2), max(0, (w - side) // 2)
        crop = crop[ct:ct + side, cl:cl + side]
        h, w = crop.shape[:2]
    canvas = np.zeros((side, side, 4), dtype=np.uint8)
    centre = side // 2
    y0, x0 = centre - h // 2, centre - w // 2  # the reference's centring (rows and columns kept apart)
    canvas[y0:y0 + h, x0:x0 + w] = crop
    return Image.fromarray(canvas, "RGBA")


def composite_white(rgba: Image.Image) -> Image.Image:
    """rgb * alpha + (1 - alpha) in float64, truncated to uint8, as the reference."""
    arr = np.asarray(rgba.convert("RGBA")) / 255.0  # (H, W, 4) float64
    rgb = arr[..., :3] * arr[..., 3:] + (1.0 - arr[..., 3:])
    return Image.fromarray((rgb * 255).astype(np.uint8), "RGB")


def needs_removal(image: Image.Image, remove_bg: bool | None) -> bool:
    """Whether `image`'s background gets removed: as asked, else (None) only without an alpha channel."""
    if remove_bg is not None:
        return remove_bg
    return not (image.mode in ("RGBA", "LA", "PA") or (image.mode == "P" and "transparency" in image.info))


def check_segmenter(images: list[Image.Image], remove_bg: bool | None, segment: Segmenter | None) -> None:
    """Before any model loads: when rembg will be needed, its model must be there (GmError otherwise)."""
    if segment is None and rembg_segment is _REMBG and any(needs_removal(image, remove_bg) for image in images):
        from gm.hub import rembg_model_dir

        rembg_model_dir()


def prepare_object(
    image: Image.Image,
    size: int = 576,
    frame_ratio: float | None = None,
    remove_bg: bool | None = None,
    segment: Segmenter | None = None,
    bbox: tuple[int, int, int, int] | None = None,
) -> Image.Image:
    """A size x size RGB view of the object on white, ready for SV3D / SV4D conditioning.

    remove_bg None = the reference's rule: only for images without an alpha channel. With
    remove_bg False an opaque image is its own object (the whole frame, padded square).
    """
    rgba = remove_background(image, segment) if needs_removal(image, remove_bg) else image.convert("RGBA")
    square = centre_object(rgba, frame_ratio, bbox)
    return composite_white(square.resize((size, size), Image.Resampling.LANCZOS))
