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

from llaca.learn.dataset import VQASample

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


def _font(px: int):
    """A system TrueType font when there is one (not the world's Pillow font), else Pillow's own."""
    from PIL import ImageFont

    for path in ("/usr/share/fonts/truetype/dejavu/DejaVuSans-Bold.ttf",
                 "/usr/share/fonts/truetype/liberation/LiberationSans-Regular.ttf"):
        try:
            return ImageFont.truetype(path, px)
        except OSError:
            continue
    return ImageFont.load_default(size=px)


def _free_spot(rng, side, r, taken):
    for _ in range(200):
        cx, cy = rng.uniform(r + 1, side - r - 1), rng.uniform(r + 1, side - r - 1)
        if all(abs(cx - x) > r + rr + 2 or abs(cy - y) > r + rr + 2 for x, y, rr in taken):
            return cx, cy
    return None


def other_code_continual(family: str, n: int, side: int, seed: int) -> list[VQASample]:
    """`n` samples of the continual families `count`, `position` or `letter`, in their instruction
    formats, drawn here: circles and squares only for count, a plain quadrant for position, letters
    in a system font (DejaVu Sans Bold where installed) for letter."""
    rng = random.Random(f"other:{family}:{side}:{seed}")
    out = []
    while len(out) < n:
        img = Image.new("RGB", (side, side), (rng.randint(225, 255),) * 3)
        d = ImageDraw.Draw(img)
        if family == "count":
            k, taken = rng.randint(1, 5), []
            r = rng.uniform(max(6, side * 0.07), side * 0.11)
            for _ in range(k):
                spot = _free_spot(rng, side, r, taken)
                if spot is None:
                    break
                taken.append((*spot, r))
                box = [spot[0] - r, spot[1] - r, spot[0] + r, spot[1] + r]
                (d.ellipse if rng.random() < 0.5 else d.rectangle)(box, fill=RGB[rng.choice(list(RGB))])
            if len(taken) < k:
                continue
            turn = ("How many shapes are there?", str(k))
        elif family == "position":
            q = rng.choice(["top left", "top right", "bottom left", "bottom right"])
            r = rng.uniform(max(6, side * 0.08), side * 0.2)
            x0 = rng.uniform(1, side / 2 - 2 * r - 2) + (side / 2 if "right" in q else 0)
            y0 = rng.uniform(1, side / 2 - 2 * r - 2) + (side / 2 if "bottom" in q else 0)
            d.ellipse([x0, y0, x0 + 2 * r, y0 + 2 * r], fill=RGB[rng.choice(list(RGB))])
            turn = ("Where is the shape? Answer with top left, top right, bottom left or bottom right.", q)
        elif family == "letter":
            letter = rng.choice("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
            font = _font(int(rng.uniform(max(14, side * 0.25), side * 0.6)))
            left, top, right, bottom = font.getbbox(letter)
            x = rng.uniform(1 - left, side - right - 1)
            y = rng.uniform(1 - top, side - bottom - 1)
            d.text((x, y), letter, fill=(0, 0, 0), font=font)
            turn = ("What letter is written in the image?", letter)
        else:
            raise ValueError(f"no other-code drawing for {family!r}")
        out.append(VQASample(f"other-{family}-{len(out)}", img, [turn], family))
    return out
