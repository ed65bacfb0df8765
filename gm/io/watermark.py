"""The invisible watermark: embed it into generated images, detect it in any image or frame.

Mirrors `sgm/inference/helpers.py` (WatermarkEmbedder, docs/reference.md §5.1) and
`scripts/demo/detect.py` (§5.2). Embedding goes through invisible-watermark's own
`WatermarkEncoder` (method dwtDct) so the pixels match the reference exactly (golden fixture
`watermark`, max |diff| 0). Decoding is a vectorised copy of the library's
`EmbedMaxDct.decode` (same YUV conversion, same Haar DWT, same per-block vote), which keeps
`gm detect-watermark` free of the library's torch import and fast on long videos. Detection
reads the bits twice, as the reference detector does (8-bit YUV) and in the embedder's own
float YUV domain, and keeps the better count (see `decode_bits`).

How dwtDct works, in one paragraph: the image goes BGR -> YUV, the U channel gets a one-level
Haar DWT, the approximation band is cut into 4x4 blocks, and in each block the largest
non-DC coefficient is quantised to (floor(|v|/36) + 0.25 + 0.5*bit) * 36. Reading a bit is
asking whether |v| mod 36 lands in the upper half; every block votes for bit (block index mod
48) and the majority wins. Any image with fewer than 256*256 pixels is refused by the library,
so here it is returned unchanged and reported.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal, TypeVar

import numpy as np

if TYPE_CHECKING:
    from PIL import Image

WATERMARK_MESSAGE = 0xB3EC907BB19E
# MSB first: 1,0,1,1,0,0,1,1,1,1,1,0,... (48 bits), as sgm's WATERMARK_BITS.
WATERMARK_BITS: tuple[int, ...] = tuple(int(b) for b in bin(WATERMARK_MESSAGE)[2:])
NUM_BITS = len(WATERMARK_BITS)
MIN_AREA = 256 * 256  # invisible-watermark refuses anything smaller
SCALE = 36.0  # EmbedMaxDct scales = [0, 36, 36]; only channel 1 (U) is used
BLOCK = 4

# Verdict tiers of scripts/demo/detect.py (matching bits out of 48, first match wins).
NONE_MAX = 27  # <= 27: no watermark detected
UNDECIDED_MAX = 33  # 28-33: partial match, cannot decide
LIKELY_MAX = 35  # 34-35: likely watermarked (0.02 % false positives in the reference's test)
VERY_LIKELY_MIN = 36  # >= 36: very likely watermarked (none in 10 000 real images)

VERDICT_TEXT = {
    "none": "no watermark detected",
    "undecided": "partial match, cannot decide",
    "likely": "likely watermarked",
    "very likely": "very likely watermarked",
}

ArrayT = TypeVar("ArrayT")


def verdict(bits: int) -> str:
    """Verdict key for a number of matching bits: 'none', 'undecided', 'likely', 'very likely'."""
    if bits <= NONE_MAX:
        return "none"
    if bits <= UNDECIDED_MAX:
        return "undecided"
    if bits <= LIKELY_MAX:
        return "likely"
    return "very likely"


def too_small(height: int, width: int) -> bool:
    """True when the watermark cannot be embedded or read (the library's 256*256 area rule,
    plus at least one block per bit for degenerate shapes such as 1 x 70000)."""
    blocks = (height // 4 * 4 // 2 // BLOCK) * (width // 4 * 4 // 2 // BLOCK)
    return height * width < MIN_AREA or blocks < NUM_BITS


def _encoder() -> Any:
    from imwatermark import WatermarkEncoder

    encoder = WatermarkEncoder()
    encoder.set_watermark("bits", list(WATERMARK_BITS))
    return encoder


def _embed_hwc(frames: np.ndarray) -> np.ndarray:
    """(N, H, W, 3) float32 RGB in [0, 1] -> watermarked, same shape, float32 in [0, 1]."""
    encoder = _encoder()
    bgr = frames * np.float32(255.0)  # kept float, no rounding (as the reference)
    bgr = np.ascontiguousarray(bgr[..., ::-1])  # (N, H, W, 3) BGR for OpenCV
    for k in range(bgr.shape[0]):
        bgr[k] = encoder.encode(bgr[k], "dwtDct")
    rgb = bgr[..., ::-1] / np.float32(255.0)
    return np.clip(rgb, 0.0, 1.0).astype(np.float32)


def embed(images: ArrayT) -> tuple[ArrayT, bool]:
    """Watermark images in [0, 1]; returns (images, embedded).

    Accepts a torch tensor (..., 3, H, W) (e.g. (B, 3, H, W) or (N, B, 3, H, W)) or a numpy
    array (..., H, W, 3). The result has the input's type, shape, device and dtype. Images with
    fewer than 256*256 pixels come back unchanged with embedded=False: the caller warns
    "too small for the watermark".
    """
    if isinstance(images, np.ndarray):
        height, width = images.shape[-3], images.shape[-2]
        if too_small(height, width):
            return images, False
        frames = images.reshape(-1, height, width, 3).astype(np.float32)
        return _embed_hwc(frames).reshape(images.shape).astype(images.dtype, copy=False), True

    import torch

    assert isinstance(images, torch.Tensor)
    height, width = images.shape[-2], images.shape[-1]
    if too_small(height, width):
        return images, False
    # (..., 3, H, W) -> (N, H, W, 3)
    frames = (images.detach().float().reshape(-1, 3, height, width).permute(0, 2, 3, 1).cpu().numpy())
    marked = torch.from_numpy(_embed_hwc(frames)).permute(0, 3, 1, 2)  # (N, 3, H, W)
    return marked.reshape(images.shape).to(device=images.device, dtype=images.dtype), True


def to_uint8(images: np.ndarray) -> np.ndarray:
    """[0, 1] float -> uint8 by truncation, as the reference saves (`(255 * x).astype(uint8)`)."""
    return (255.0 * images).astype(np.uint8)


def decode_bits(rgb: np.ndarray, domain: Literal["uint8", "float"] = "uint8") -> np.ndarray:
    """The 48 bits read from an (H, W, 3) uint8 RGB image (bool array), as EmbedMaxDct.decode.

    domain "uint8" is the reference detector: OpenCV's YUV of 8-bit pixels (chroma offset 128).
    domain "float" reads the same pixels as float32 0..255, where OpenCV's chroma offset is 0.5:
    that is the domain the embedder quantised in (it is fed 255 * image as float). The two
    differ by 255 in every approximation coefficient, which flips the bits of negative
    coefficients, so on smooth images (chroma near grey) only the "float" reading finds the
    mark (e.g. 48/48 against 27/48 on tests' photo).
    """
    import cv2
    import pywt

    height, width = rgb.shape[:2]
    if too_small(height, width):
        raise ValueError(f"too small for the watermark ({width}x{height}, needs 256*256 pixels)")
    bgr = np.ascontiguousarray(rgb[..., ::-1])
    if domain == "float":
        bgr = bgr.astype(np.float32)
    yuv = cv2.cvtColor(bgr, cv2.COLOR_BGR2YUV)
    u = yuv[: height // 4 * 4, : width // 4 * 4, 1]
    ca, _ = pywt.dwt2(u, "haar")  # (H/2, W/2) approximation band
    rows, cols = ca.shape[0] // BLOCK, ca.shape[1] // BLOCK
    blocks = ca[: rows * BLOCK, : cols * BLOCK].reshape(rows, BLOCK, cols, BLOCK)
    blocks = blocks.transpose(0, 2, 1, 3).reshape(rows * cols, BLOCK * BLOCK)  # (blocks, 16), raster order
    # Largest |coefficient| excluding the DC entry [0, 0] (first one on ties, like np.argmax).
    pos = np.argmax(np.abs(blocks[:, 1:]), axis=1) + 1
    val = np.abs(blocks[np.arange(blocks.shape[0]), pos])
    votes = (np.mod(val, SCALE) > 0.5 * SCALE).astype(np.float64)
    bit_index = np.arange(votes.shape[0]) % NUM_BITS
    sums = np.bincount(bit_index, weights=votes, minlength=NUM_BITS)
    counts = np.bincount(bit_index, minlength=NUM_BITS)
    return (sums / counts) * 255 > 127


def count_matches(rgb: np.ndarray, domain: Literal["uint8", "float"] = "uint8") -> int:
    """How many of the 48 bits read from an (H, W, 3) uint8 RGB image match the message."""
    return int((decode_bits(rgb, domain) == np.array(WATERMARK_BITS, dtype=bool)).sum())


@dataclass(frozen=True)
class Detection:
    bits: int  # matching bits out of NUM_BITS: the better of the two readings
    verdict: str  # a VERDICT_TEXT key
    bits_reference: int  # scripts/demo/detect.py's reading (8-bit YUV)
    bits_float: int  # the embedder's own domain (float YUV)

    @property
    def text(self) -> str:
        return f"{VERDICT_TEXT[self.verdict]} ({self.bits}/{NUM_BITS} bits)"


def detect(rgb: np.ndarray) -> Detection:
    """Matching bits and verdict for an (H, W, 3) uint8 RGB image.

    Both readings are taken and the better one decides. For an unmarked image each reading is
    a coin toss per bit (P(>= 36 of 48) = 0.036 %), so taking the better of two at most doubles
    the false-positive rate, while it finds marks the reference detector misses on smooth
    images.
    """
    reference = count_matches(rgb, "uint8")
    embedded = count_matches(rgb, "float")
    bits = max(reference, embedded)
    return Detection(bits, verdict(bits), reference, embedded)


def pil_to_rgb8(image: Image.Image) -> np.ndarray:
    """Any PIL image (RGB, RGBA, L, LA, P, 1, CMYK, I;16, I, F) -> (H, W, 3) uint8 RGB.

    Alpha is dropped, not composited: the watermark lives in the colour values (OpenCV's
    imread, which the reference detector uses, does the same). 16-bit data keeps its top 8
    bits, as OpenCV reads it.
    """
    from PIL import ImageOps

    image = ImageOps.exif_transpose(image)  # OpenCV's imread applies EXIF orientation too
    mode = image.mode
    if mode.startswith("I") or mode == "F":
        data = np.asarray(image)
        if mode == "F":
            scale = 255.0 if float(np.nanmax(data, initial=0.0)) <= 1.0 else 1.0
            gray = np.clip(np.nan_to_num(data) * scale, 0, 255).astype(np.uint8)
        elif data.dtype == np.uint8:
            gray = data
        else:  # I;16 / I;16B / I (16-bit PNG, TIFF): 0..65535 -> 0..255
            gray = (np.clip(data.astype(np.int64), 0, 65535) >> 8).astype(np.uint8)
        if gray.ndim == 3:
            return np.ascontiguousarray(gray[..., :3])
        return np.repeat(gray[..., None], 3, axis=2)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
