"""Task families of the synthetic world: each turns a seeded RNG into (image, question, answer).

Families have distinct instruction formats, like the datasets of the CoIN benchmark. The
base model is taught the base families (`BASE_TRAINING`): `color`, `shape`, `describe`,
`objects` (how many), `presence` (whether a named object is there, and where) and `edges` (an
object's extent); `named_color` (the colour of a shape named alone among several, or that there
is none) is there for build recipes that teach it (`BuildConfig.named_color`). Between them they
carry every concept the continual tasks ask about (number, letters, quadrants, boxes, presence,
which colour goes with which shape) in other words than the continual formats, the
way LLaVA-1.5 knows what CoIN's tasks ask before it learns their instruction formats.
Everything is deterministic given the seed: sample `i` of `generate(family, n, seed)` is
the same whatever `n` is.
"""

from __future__ import annotations

import collections
import random
from dataclasses import dataclass
from typing import Callable

from PIL import Image

from .canvas import (
    Scene,
    SceneObject,
    render,
)
from .palette import COLOR_NAMES, LETTERS, QUADRANTS, SHAPES
from .scenes import (
    SceneDoesNotFit,
    blank_scene,
    letter_in_region,
    one_shape,
    quadrant_region,
    scatter_shapes,
    shape_in_quadrant,
)

BASE_FAMILIES: tuple[str, ...] = ("color", "shape")  # the base probes: what must never be forgotten
BASE_TRAINING: tuple[str, ...] = ("color", "shape", "describe", "objects", "presence", "edges")
CONTINUAL_SEQUENCE: tuple[str, ...] = ("count", "position", "letter", "choice", "box", "exists", "unanswerable")

POSITION_Q = "Where is the shape? Answer with top left, top right, bottom left or bottom right."
QUESTIONS = {
    "color": "What color is the shape?",
    "shape": "What shape is this?",
    "count": "How many shapes are there?",
    "position": POSITION_Q,
    "letter": "What letter is written in the image?",
    "box": "Give the bounding box of the shape as [x1, y1, x2, y2] with coordinates between 0 and 1.",
    "describe": "Describe the image.",
    "objects": "How many objects are in the image?",
}


@dataclass
class WorldItem:
    """One generated image with one or more (question, answer) turns about it."""

    family: str
    image: Image.Image
    turns: list[tuple[str, str]]
    scene: Scene


def fmt_box(box: tuple[float, float, float, float], width: int, height: int) -> str:
    x1, y1, x2, y2 = box
    vals = [max(0.0, min(1.0, v)) for v in (x1 / width, y1 / height, x2 / width, y2 / height)]
    return "[" + ", ".join(f"{v:.2f}" for v in vals) + "]"


def caption(scene: Scene) -> str:
    """'a red circle at the top left and the letter K at the bottom right' in reading order
    (by quadrant, then top to bottom, then left to right)."""
    placed = sorted(scene.objects, key=lambda o: (QUADRANTS.index(o.quadrant(scene.width, scene.height)), o.cy, o.cx))
    parts = [f"{o.phrase()} at the {o.quadrant(scene.width, scene.height)}" for o in placed]
    return parts[0] if len(parts) == 1 else ", ".join(parts[:-1]) + " and " + parts[-1]


# --- one function per family: (rng, size) -> (scene, turns) -------------------------------------

def _color(rng, size):
    scene = one_shape(rng, size)
    return scene, [(QUESTIONS["color"], scene.objects[0].color)]


def _shape(rng, size):
    scene = one_shape(rng, size)
    return scene, [(QUESTIONS["shape"], scene.objects[0].name)]


def _count(rng, size):
    n = rng.randint(1, 5)
    scene = scatter_shapes(rng, size, n)
    return scene, [(QUESTIONS["count"], str(n))]


def _position(rng, size):
    scene = blank_scene(rng, size)
    q = rng.choice(QUADRANTS)
    obj = shape_in_quadrant(rng, size, q, rng.choice(SHAPES), rng.choice(COLOR_NAMES), [])
    if obj is None:
        raise SceneDoesNotFit
    scene.objects.append(obj)
    return scene, [(QUESTIONS["position"], q)]


def _exists(rng, size):
    scene = scatter_shapes(rng, size, rng.randint(2, 3))
    present = {(o.color, o.name) for o in scene.objects}
    if rng.random() < 0.5:
        color, name = rng.choice(sorted(present))
        answer = "yes"
    else:
        ref_color, ref_name = rng.choice(sorted(present))
        near = [(c, ref_name) for c in COLOR_NAMES] + [(ref_color, s) for s in SHAPES]
        pool = [p for p in (near if rng.random() < 0.5 else [(c, s) for c in COLOR_NAMES for s in SHAPES]) if p not in present]
        color, name = rng.choice(pool)
        answer = "no"
    return scene, [(f"Is there a {color} {name}? Answer yes or no.", answer)]


def _choice(rng, size):
    scene = scatter_shapes(rng, size, rng.randint(2, 3), distinct_shapes=True)
    target = rng.choice(scene.objects)
    others = [o.color for o in scene.objects if o.color != target.color]
    distractors = list(dict.fromkeys(others))[:1] + [c for c in rng.sample(COLOR_NAMES, len(COLOR_NAMES)) if c != target.color]
    distractors = list(dict.fromkeys(distractors))[:2]
    options = [target.color] + distractors
    rng.shuffle(options)
    letter = "ABC"[options.index(target.color)]
    q = (
        f"What color is the {target.name}?\nA. {options[0]}\nB. {options[1]}\nC. {options[2]}\n"
        "Answer with the option's letter from the given choices directly."
    )
    return scene, [(q, letter)]


def _letter(rng, size):
    scene = blank_scene(rng, size)
    letter = rng.choice(LETTERS)
    obj = letter_in_region(rng, size, (1, 1, size - 1, size - 1), letter, [], 0.6)
    if obj is None:
        raise SceneDoesNotFit
    scene.objects.append(obj)
    return scene, [(QUESTIONS["letter"], letter)]


def _box(rng, size):
    scene = one_shape(rng, size, max_frac=0.55)
    return scene, [(QUESTIONS["box"], fmt_box(scene.objects[0].bbox(), size, size))]


def _unanswerable(rng, size):
    scene = one_shape(rng, size)
    obj = scene.objects[0]
    if rng.random() < 0.5:
        asked, answer = obj.name, obj.color
    else:
        asked, answer = rng.choice([s for s in SHAPES if s != obj.name]), "unanswerable"
    return scene, [(f"What color is the {asked}? If it is not in the image, answer unanswerable.", answer)]


def _describe(rng, size):
    scene = blank_scene(rng, size)
    quads = rng.sample(QUADRANTS, rng.choice([1, 1, 2, 2, 3, 4]))
    for q in quads:
        if rng.random() < 0.3:
            obj = letter_in_region(rng, size, quadrant_region(q, size), rng.choice(LETTERS), scene.objects, 0.4)
        else:
            obj = shape_in_quadrant(rng, size, q, rng.choice(SHAPES), rng.choice(COLOR_NAMES), scene.objects)
        if obj is None:
            raise SceneDoesNotFit
        scene.objects.append(obj)
    return scene, [(QUESTIONS["describe"], caption(scene))]


# --- the base families' own questions: the concepts, in words other than the continual formats --

def object_name(obj: SceneObject) -> str:
    """How a question names an object: 'red star' or 'letter K'."""
    return f"letter {obj.name}" if obj.kind == "letter" else f"{obj.color} {obj.name}"


def count_answer(n: int) -> str:
    return "There is 1 object." if n == 1 else f"There are {n} objects."


def presence_question(target: str) -> str:
    return f"Is there a {target} in the picture?"


def presence_answer(scene: Scene, target: str) -> str:
    """Whether the named object is there, and where, in a sentence. `target` is 'red star',
    'star' or 'letter K'."""
    hits = [o for o in scene.objects if object_name(o) == target or (o.kind == "shape" and o.name == target)]
    if not hits:
        return f"No, there is no {target}."
    if len(hits) > 1:
        raise ValueError(f"{target!r} names {len(hits)} objects; presence questions name one")
    o = hits[0]
    return f"Yes, there is a {object_name(o)} at the {o.quadrant(scene.width, scene.height)}."


def named_color_question(shape: str) -> str:
    return f"What is the color of the {shape}?"


def named_color_answer(scene: Scene, shape: str) -> str:
    """'The star is red.', or 'There is no star.'; the scene holds at most one `shape`."""
    hits = [o for o in scene.objects if o.kind == "shape" and o.name == shape]
    if not hits:
        return f"There is no {shape}."
    if len(hits) > 1:
        raise ValueError(f"{shape!r} names {len(hits)} objects; a named-colour question names one")
    return f"The {shape} is {hits[0].color}."


def named_color_target(rng: random.Random, scene: Scene) -> str | None:
    """A shape the scene holds exactly once (three times in four), or one it does not hold;
    None when every shape is there more than once."""
    counts = collections.Counter(o.name for o in scene.objects if o.kind == "shape")
    unique = [s for s in SHAPES if counts[s] == 1]
    absent = [s for s in SHAPES if counts[s] == 0]
    if unique and (not absent or rng.random() < 0.75):
        return rng.choice(unique)
    return rng.choice(absent) if absent else None


def edges_question(obj: SceneObject) -> str:
    return f"Where are the edges of the {object_name(obj)}?"


def edges_answer(scene: Scene, obj: SceneObject) -> str:
    """'left 0.12, top 0.30, right 0.45, bottom 0.62': the extent as fractions of the image."""
    x1, y1, x2, y2 = fmt_box(obj.bbox(), scene.width, scene.height)[1:-1].split(", ")
    return f"left {x1}, top {y1}, right {x2}, bottom {y2}"


def unique_objects(scene: Scene) -> list[SceneObject]:
    """Objects that their name picks out alone (a scene may hold two blue stars)."""
    names = collections.Counter(object_name(o) for o in scene.objects)
    return [o for o in scene.objects if names[object_name(o)] == 1]


def presence_targets(rng: random.Random, scene: Scene) -> str:
    """A presence question's target: a present object, a shape named alone when it is unique or
    absent, or a near miss (same shape another colour, same colour another shape, another letter)."""
    objs = scene.objects
    unique = unique_objects(scene)
    r = rng.random()
    if r < 0.45 and unique:
        return object_name(rng.choice(unique))
    if r < 0.65:
        counts = {s: sum(o.kind == "shape" and o.name == s for o in objs) for s in SHAPES}
        return rng.choice([s for s in SHAPES if counts[s] <= 1])
    present = {object_name(o) for o in objs}
    ref = rng.choice(objs)
    if ref.kind == "letter":
        pool = [f"letter {x}" for x in LETTERS]
    elif rng.random() < 0.6:
        pool = [f"{c} {ref.name}" for c in COLOR_NAMES] + [f"{ref.color} {s}" for s in SHAPES]
    else:
        pool = [f"{c} {s}" for c in COLOR_NAMES for s in SHAPES]
    return rng.choice([t for t in pool if t not in present])


def base_scene(rng: random.Random, size: int) -> Scene:
    """A scene for base training: every layout the continual families draw, and more.

    One shape anywhere (color, shape, box, unanswerable, position), one letter anywhere
    (letter), 1-5 scattered objects with some letters (count, exists, choice), or one object
    per quadrant (describe)."""
    r = rng.random()
    if r < 0.25:
        return one_shape(rng, size)
    if r < 0.40:
        return _letter(rng, size)[0]
    if r < 0.80:
        return scatter_shapes(rng, size, rng.randint(1, 5), letter_frac=0.2)
    return _describe(rng, size)[0]


def _objects(rng, size):
    scene = base_scene(rng, size)
    return scene, [(QUESTIONS["objects"], count_answer(len(scene.objects)))]


def _presence(rng, size):
    scene = base_scene(rng, size)
    target = presence_targets(rng, scene)
    return scene, [(presence_question(target), presence_answer(scene, target))]


def _named_color(rng, size):
    scene = scatter_shapes(rng, size, rng.randint(1, 4), letter_frac=0.2)
    target = named_color_target(rng, scene)
    if target is None:
        raise SceneDoesNotFit
    return scene, [(named_color_question(target), named_color_answer(scene, target))]


def _edges(rng, size):
    scene = base_scene(rng, size)
    if not unique_objects(scene):
        raise SceneDoesNotFit
    obj = rng.choice(unique_objects(scene))
    return scene, [(edges_question(obj), edges_answer(scene, obj))]


FAMILIES: dict[str, Callable[[random.Random, int], tuple[Scene, list[tuple[str, str]]]]] = {
    "color": _color,
    "shape": _shape,
    "count": _count,
    "position": _position,
    "exists": _exists,
    "choice": _choice,
    "letter": _letter,
    "box": _box,
    "unanswerable": _unanswerable,
    "describe": _describe,
    "objects": _objects,
    "presence": _presence,
    "named_color": _named_color,
    "edges": _edges,
}


def check_family(family: str) -> None:
    if family not in FAMILIES:
        raise ValueError(f"Unknown task family {family!r}; choose one of: {', '.join(FAMILIES)}")


def sample_rng(seed: int, index: int, family: str) -> random.Random:
    """An independent RNG per (seed, family, index): sample i does not depend on n."""
    return random.Random(f"{family}:{seed}:{index}")


def make_item(family: str, rng: random.Random, size: int | tuple[int, int] = 64) -> WorldItem:
    """One item of `family`; `size` is a canvas side or a (min, max) range to draw it from."""
    check_family(family)
    for _ in range(100):
        side = rng.randint(*size) if isinstance(size, tuple) else size
        try:
            scene, turns = FAMILIES[family](rng, side)
        except SceneDoesNotFit:
            continue
        return WorldItem(family, render(scene), turns, scene)
    raise RuntimeError(f"could not lay out a {family} scene on a {size} px canvas")


def generate(family: str, n: int, seed: int = 0, size: int | tuple[int, int] = 64) -> list[WorldItem]:
    """`n` deterministic items of one family."""
    return [make_item(family, sample_rng(seed, i, family), size) for i in range(n)]

