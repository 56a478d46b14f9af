"""Base-family images drawn by plain PIL code that shares nothing with `llaca.world`.

It follows the issue's description of the world (one shape of the palette on a light grey
canvas, at least 12 px across) but draws the obvious way: upright triangles and stars, axis-
aligned squares, no anti-aliasing, any position, any canvas size. The tiny model must answer
these as well as its own world's images.
"""

from __future__ import annotations

import math
import random

from PIL import Image, ImageDraw

from llaca.dataset import VQASample

RGB = {"red": (220, 30, 30), "green": (30, 170, 60), "blue": (30, 70, 220),
       "yellow": (240, 200, 20), "purple": (140, 50, 180), "orange": (245, 130, 20)}
SHAPES = ("circle", "square", "triangle", "star")


def draw_shape(rng: random.Random, side: int) -> tuple[Image.Image, str, str]:
    """(image, shape, colour): one shape 12 px to 60% of the canvas across, anywhere on it."""
    img = Image.new("RGB", (side, side), (rng.randint(220, 255),) * 3)
    d = ImageDraw.Draw(img)
    shape, color = rng.choice(SHAPES), rng.choice(list(RGB))
    r = rng.uniform(max(12, side * 0.15), side * 0.6) / 2
    cx, cy = rng.uniform(r + 1, side - r - 1), rng.uniform(r + 1, side - r - 1)
    if shape == "circle":
        d.ellipse([cx - r, cy - r, cx + r, cy + r], fill=RGB[color])
    elif shape == "square":
        d.rectangle([cx - r * 0.85, cy - r * 0.85, cx + r * 0.85, cy + r * 0.85], fill=RGB[color])
    elif shape == "triangle":
        d.polygon([(cx, cy - r), (cx + r, cy + r * 0.8), (cx - r, cy + r * 0.8)], fill=RGB[color])
    else:
        spikes = [(cx + (r if k % 2 == 0 else r * 0.42) * math.sin(math.pi * k / 5),
                   cy - (r if k % 2 == 0 else r * 0.42) * math.cos(math.pi * k / 5)) for k in range(10)]
        d.polygon(spikes, fill=RGB[color])
    return img, shape, color


def other_code_samples(family: str, n: int, side: int, seed: int) -> list[VQASample]:
    """`n` samples of `color` or `shape` on images from `draw_shape`."""
    rng = random.Random(f"other:{family}:{side}:{seed}")
    out = []
    for i in range(n):
        img, shape, color = draw_shape(rng, side)
        turn = ("What color is the shape?", color) if family == "color" else ("What shape is this?", shape)
        out.append(VQASample(f"other-{family}-{i}", img, [turn], family))
    return out
