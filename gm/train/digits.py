"""A built-in synthetic dataset: hand-drawn-style digits 0-9, so a fresh machine trains offline.

No reference counterpart (sgm always downloads MNIST). Each digit is a few pen strokes in a unit
box (arcs and polylines); every example draws them with its own random affine map (rotation,
anisotropic scale, shear, shift), per-point wobble and pen width, at 4x resolution, then
box-filters down to `size` x `size`. White strokes on black, like MNIST. Deterministic per seed.
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image, ImageDraw

Stroke = list[tuple[float, float]]


def _arc(cx: float, cy: float, rx: float, ry: float, a0: float, a1: float, n: int = 16) -> Stroke:
    """Points on an ellipse from angle a0 to a1 (degrees; 0 = right, 90 = down since y points down)."""
    return [(cx + rx * math.cos(math.radians(a)), cy + ry * math.sin(math.radians(a)))
            for a in np.linspace(a0, a1, n)]


STROKES: dict[int, list[Stroke]] = {
    0: [_arc(0.5, 0.5, 0.27, 0.4, 0, 360, 24)],
    1: [[(0.36, 0.24), (0.52, 0.1), (0.52, 0.9)]],
    2: [_arc(0.5, 0.32, 0.25, 0.21, 200, 400) + [(0.22, 0.9), (0.8, 0.9)]],
    3: [_arc(0.5, 0.3, 0.24, 0.19, 210, 450) + _arc(0.5, 0.7, 0.27, 0.2, 270, 510)],
    4: [[(0.66, 0.9), (0.66, 0.1), (0.2, 0.66), (0.82, 0.66)]],
    5: [[(0.76, 0.12), (0.34, 0.12), (0.31, 0.46)] + _arc(0.5, 0.66, 0.26, 0.23, 230, 500)],
    6: [[(0.7, 0.1), (0.46, 0.24), (0.31, 0.46)] + _arc(0.5, 0.68, 0.23, 0.21, 190, 550, 24)],
    7: [[(0.22, 0.12), (0.8, 0.12), (0.42, 0.9)]],
    8: [_arc(0.5, 0.29, 0.2, 0.18, 0, 360), _arc(0.5, 0.7, 0.25, 0.21, 0, 360)],
    9: [_arc(0.5, 0.32, 0.23, 0.2, 0, 360, 20), [(0.73, 0.32), (0.66, 0.9)]],
}


def render_digit(digit: int, size: int, rng: np.random.Generator) -> np.ndarray:
    """One (size, size) uint8 image of `digit` with random jitter."""
    scale = 4
    canvas = size * scale
    angle = math.radians(rng.uniform(-15, 15))
    sx, sy = rng.uniform(0.72, 0.95), rng.uniform(0.75, 0.95)
    shear = rng.uniform(-0.25, 0.25)
    tx, ty = rng.uniform(-0.07, 0.07, size=2)
    cos, sin = math.cos(angle), math.sin(angle)
    # A = R @ Shear @ S: unit-box offsets from the centre -> canvas offsets
    a = np.array([[cos, -sin], [sin, cos]]) @ np.array([[1.0, shear], [0.0, 1.0]]) @ np.diag([sx, sy])
    width = max(1, int(rng.uniform(0.085, 0.13) * canvas))
    img = Image.new("L", (canvas, canvas), 0)
    draw = ImageDraw.Draw(img)
    for stroke in STROKES[digit]:
        pts = np.asarray(stroke) + rng.normal(0, 0.012, size=(len(stroke), 2))  # (P, 2) wobble
        pts = (pts - 0.5) @ a.T + 0.5 + (tx, ty)
        xy = [(float(x * canvas), float(y * canvas)) for x, y in pts]
        draw.line(xy, fill=255, width=width, joint="curve")
        r = width / 2
        for x, y in (xy[0], xy[-1]):  # round pen caps
            draw.ellipse((x - r, y - r, x + r, y + r), fill=255)
    return np.asarray(img.resize((size, size), Image.Resampling.BOX))


def make_digits(n: int, size: int = 28, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """`n` examples, classes in turn: images (n, 1, size, size) uint8, labels (n,) int64."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n, dtype=np.int64) % 10
    images = np.stack([render_digit(int(d), size, rng) for d in labels])[:, None]
    return images, labels
