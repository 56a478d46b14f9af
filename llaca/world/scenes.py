"""Scene layouts of the synthetic world: one shape, shapes scattered, objects placed in a quadrant.

The families (`llaca.world.families`) and the vision tower's pre-training
(`llaca.world.vision_pretrain`) lay out their scenes with these; a layout that does not fit
its canvas raises `SceneDoesNotFit` and the caller draws again.
"""

from __future__ import annotations

import random

from .canvas import (
    Scene,
    SceneObject,
    light_background,
    min_size,
    place_in_region,
    shape_object,
)
from .palette import COLOR_NAMES, LETTERS, SHAPES


class SceneDoesNotFit(Exception):
    """Raised internally when random placement fails; the generator retries."""


def blank_scene(rng: random.Random, size: int) -> Scene:
    return Scene(size, size, light_background(rng), supersample=4 if rng.random() < 0.3 else 1)


def one_shape(rng: random.Random, size: int, max_frac: float = 0.6) -> Scene:
    scene = blank_scene(rng, size)
    name, color = rng.choice(SHAPES), rng.choice(COLOR_NAMES)
    lo = min_size(size)
    obj = place_in_region(
        rng, lambda x, y, s: shape_object(rng, name, color, x, y, s), (1, 1, size - 1, size - 1),
        (lo, max(lo, size * max_frac)), [],
    )
    if obj is None:
        raise SceneDoesNotFit
    scene.objects.append(obj)
    return scene


def quadrant_region(q: str, size: int, margin: float = 2.0) -> tuple[float, float, float, float]:
    half = size / 2
    x1 = 1 if "left" in q else half + margin
    y1 = 1 if "top" in q else half + margin
    return (x1, y1, x1 + half - margin - 1, y1 + half - margin - 1)


def shape_in_quadrant(rng: random.Random, size: int, q: str, name: str, color: str, others: list[SceneObject]):
    lo = min_size(size)
    return place_in_region(
        rng, lambda x, y, s: shape_object(rng, name, color, x, y, s), quadrant_region(q, size),
        (lo, max(lo, size * 0.42)), others,
    )


def letter_in_region(rng, size: int, region, letter: str, others: list[SceneObject], max_frac: float):
    """A letter in `region`; a third of them bold, as other fonts and weights would draw them."""
    lo = min_size(size)
    stroke = rng.choice([0.0, 0.0, rng.uniform(0.03, 0.07)])
    return place_in_region(
        rng, lambda x, y, s: SceneObject("letter", letter, None, x, y, s, stroke=stroke), region,
        (lo, max(lo, size * max_frac)), others,
    )


def scatter_shapes(rng: random.Random, size: int, n: int, distinct_shapes: bool = False,
                    letter_frac: float = 0.0) -> Scene:
    """`n` objects anywhere, no two alike (shapes differ in colour or shape, letters in letter)."""
    scene = blank_scene(rng, size)
    lo = min_size(size)
    names = rng.sample(SHAPES, n) if distinct_shapes else [rng.choice(SHAPES) for _ in range(n)]
    used: set[tuple[str | None, str]] = set()
    for name in names:
        if rng.random() < letter_frac:
            letter = rng.choice([x for x in LETTERS if (None, x) not in used])
            obj = letter_in_region(rng, size, (1, 1, size - 1, size - 1), letter, scene.objects,
                                    0.34 if n <= 3 else 0.26)
        else:
            color = rng.choice([c for c in COLOR_NAMES if (c, name) not in used])
            obj = place_in_region(
                rng, lambda x, y, s: shape_object(rng, name, color, x, y, s), (1, 1, size - 1, size - 1),
                (lo, max(lo, size * (0.34 if n <= 3 else 0.26))), scene.objects,
            )
        if obj is None:
            raise SceneDoesNotFit
        used.add((obj.color, obj.name))
        scene.objects.append(obj)
    return scene
