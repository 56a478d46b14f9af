"""Drawing scenes of the synthetic world with PIL: shapes, letters, their boxes and quadrants.

A `Scene` is a list of `SceneObject`s on a light background; `render` draws it. Every
object knows its exact pixel bounding box, so box answers and captions are derived from
what was drawn, never guessed.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass, field
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont

from .palette import COLORS, LETTER_INK, MIN_OBJECT_PX, QUADRANTS

Box = tuple[float, float, float, float]


@dataclass(frozen=True)
class SceneObject:
    """One drawn thing: a coloured shape or a black capital letter."""

    kind: str  # "shape" or "letter"
    name: str  # shape name ("circle") or the letter ("K")
    color: str | None  # colour name for shapes, None for letters
    cx: float
    cy: float
    size: float  # diameter of the circumscribed circle (shapes) or the glyph height (letters)
    rotation: float = 0.0  # degrees, shapes only
    star_inner: float = 0.45  # inner/outer radius ratio, stars only
    stroke: float = 0.0  # extra ink around a letter's strokes, as a fraction of its height (bold)

    def polygon(self) -> list[tuple[float, float]] | None:
        """Vertices for polygonal shapes, None for circles and letters."""
        r = self.size / 2
        rot = math.radians(self.rotation)
        if self.kind != "shape" or self.name == "circle":
            return None
        if self.name == "square":
            h = r * 0.8  # half side: a square about as heavy as the circle of the same size
            pts = [(-h, -h), (h, -h), (h, h), (-h, h)]
        elif self.name == "triangle":
            pts = [(r * math.sin(2 * math.pi * k / 3), -r * math.cos(2 * math.pi * k / 3)) for k in range(3)]
        elif self.name == "star":
            pts = []
            for k in range(10):
                rr = r if k % 2 == 0 else r * self.star_inner
                ang = math.pi * k / 5
                pts.append((rr * math.sin(ang), -rr * math.cos(ang)))
        else:
            raise ValueError(f"unknown shape {self.name!r}")
        cos, sin = math.cos(rot), math.sin(rot)
        return [(self.cx + x * cos - y * sin, self.cy + x * sin + y * cos) for x, y in pts]

    def bbox(self) -> Box:
        """Pixel bounding box (x1, y1, x2, y2) of what is drawn."""
        if self.kind == "letter":
            font = letter_font(int(round(self.size)))
            left, top, right, bottom = font.getbbox(self.name, stroke_width=self.stroke_px(1))
            x0, y0 = self._letter_origin(font)
            return (x0 + left, y0 + top, x0 + right, y0 + bottom)
        poly = self.polygon()
        if poly is None:
            r = self.size / 2
            return (self.cx - r, self.cy - r, self.cx + r, self.cy + r)
        xs, ys = zip(*poly)
        return (min(xs), min(ys), max(xs), max(ys))

    def stroke_px(self, scale: int) -> int:
        """The letter's stroke width in pixels when drawn at `scale`x."""
        return int(round(self.stroke * self.size * scale))

    def _letter_origin(self, font: ImageFont.FreeTypeFont) -> tuple[float, float]:
        left, top, right, bottom = font.getbbox(self.name, stroke_width=self.stroke_px(1))
        return (self.cx - (left + right) / 2, self.cy - (top + bottom) / 2)

    def quadrant(self, width: int, height: int) -> str:
        """Quadrant name of the object's centre."""
        top = self.cy < height / 2
        left = self.cx < width / 2
        return QUADRANTS[(0 if top else 2) + (0 if left else 1)]

    def phrase(self) -> str:
        """How a caption names it: 'a red circle' or 'the letter K'."""
        if self.kind == "letter":
            return f"the letter {self.name}"
        article = "an" if self.color[0] in "aeiou" else "a"
        return f"{article} {self.color} {self.name}"


@dataclass
class Scene:
    width: int
    height: int
    background: tuple[int, int, int]
    objects: list[SceneObject] = field(default_factory=list)
    supersample: int = 1  # draw at k× and downscale: anti-aliased edges like other drawing code makes


@lru_cache(maxsize=64)
def letter_font(px: int) -> ImageFont.FreeTypeFont:
    """Pillow's bundled font at a size whose capital letters are about `px` tall."""
    return ImageFont.load_default(size=max(8, int(px * 1.4)))


def render(scene: Scene) -> Image.Image:
    """Draw the scene into an RGB image of size (width, height)."""
    k = max(1, scene.supersample)
    img = Image.new("RGB", (scene.width * k, scene.height * k), scene.background)
    draw = ImageDraw.Draw(img)
    for obj in scene.objects:
        if obj.kind == "letter":
            font = letter_font(int(round(obj.size * k)))
            stroke = obj.stroke_px(k)
            left, top, right, bottom = font.getbbox(obj.name, stroke_width=stroke)
            x0 = obj.cx * k - (left + right) / 2
            y0 = obj.cy * k - (top + bottom) / 2
            draw.text((x0, y0), obj.name, fill=LETTER_INK, font=font, stroke_width=stroke, stroke_fill=LETTER_INK)
            continue
        fill = COLORS[obj.color]
        poly = obj.polygon()
        if poly is None:
            r = obj.size / 2
            draw.ellipse([(obj.cx - r) * k, (obj.cy - r) * k, (obj.cx + r) * k, (obj.cy + r) * k], fill=fill)
        else:
            draw.polygon([(x * k, y * k) for x, y in poly], fill=fill)
    if k > 1:
        img = img.resize((scene.width, scene.height), Image.Resampling.LANCZOS)
    return img


def render_ids(scene: Scene, side: int) -> Image.Image:
    """An 'L' image of `side` px: pixel value k+1 where object k is drawn, 0 on the background
    (the same geometry as `render`, no anti-aliasing, resized with nearest neighbour)."""
    img = Image.new("L", (scene.width, scene.height), 0)
    draw = ImageDraw.Draw(img)
    draw.fontmode = "1"  # no anti-aliasing: every inked pixel carries its object's id exactly
    for k, obj in enumerate(scene.objects, start=1):
        if obj.kind == "letter":
            font = letter_font(int(round(obj.size)))
            stroke = obj.stroke_px(1)
            left, top, right, bottom = font.getbbox(obj.name, stroke_width=stroke)
            draw.text((obj.cx - (left + right) / 2, obj.cy - (top + bottom) / 2), obj.name, fill=k, font=font,
                      stroke_width=stroke, stroke_fill=k)
            continue
        poly = obj.polygon()
        if poly is None:
            r = obj.size / 2
            draw.ellipse([obj.cx - r, obj.cy - r, obj.cx + r, obj.cy + r], fill=k)
        else:
            draw.polygon(poly, fill=k)
    return img.resize((side, side), Image.Resampling.NEAREST)


def light_background(rng: random.Random) -> tuple[int, int, int]:
    """A plain light grey (220-255), occasionally slightly tinted."""
    g = rng.randint(220, 255)
    if rng.random() < 0.2:
        return tuple(min(255, max(215, g + rng.randint(-6, 6))) for _ in range(3))  # type: ignore[return-value]
    return (g, g, g)


def boxes_overlap(a: Box, b: Box, gap: float) -> bool:
    return not (a[2] + gap <= b[0] or b[2] + gap <= a[0] or a[3] + gap <= b[1] or b[3] + gap <= a[1])


def fits(box: Box, x1: float, y1: float, x2: float, y2: float) -> bool:
    return box[0] >= x1 and box[1] >= y1 and box[2] <= x2 and box[3] <= y2


def shape_object(
    rng: random.Random, name: str, color: str, cx: float, cy: float, size: float
) -> SceneObject:
    """A shape with the natural variation other drawing code would have (rotation, star spikiness)."""
    if name == "square":
        rotation = rng.choice([0.0, 0.0, rng.uniform(-12, 12)])
    elif name in ("triangle", "star"):
        rotation = rng.choice([0.0, 0.0, 180.0 if name == "triangle" else 36.0, rng.uniform(-180, 180)])
    else:
        rotation = 0.0
    return SceneObject("shape", name, color, cx, cy, size, rotation, rng.uniform(0.38, 0.55))


def place_in_region(
    rng: random.Random,
    make,  # (cx, cy, size) -> SceneObject
    region: tuple[float, float, float, float],
    size_range: tuple[float, float],
    others: list[SceneObject],
    gap: float = 2.0,
    tries: int = 60,
) -> SceneObject | None:
    """Place an object fully inside `region` without touching `others`; None if it does not fit."""
    x1, y1, x2, y2 = region
    lo, hi = size_range
    for attempt in range(tries):
        size = rng.uniform(lo, hi) if attempt < tries // 2 else lo
        cx = rng.uniform(x1 + size / 2, max(x1 + size / 2, x2 - size / 2))
        cy = rng.uniform(y1 + size / 2, max(y1 + size / 2, y2 - size / 2))
        obj = make(cx, cy, size)
        box = obj.bbox()
        if fits(box, x1, y1, x2, y2) and not any(boxes_overlap(box, o.bbox(), gap) for o in others):
            return obj
    return None


def min_size(width: int) -> float:
    """Smallest object: 12 px, a little more on large canvases so it stays visible."""
    return max(float(MIN_OBJECT_PX), width * 0.14)
