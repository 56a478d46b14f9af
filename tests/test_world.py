"""The synthetic world: determinism, balance, answer validity against the drawn pixels, scoring."""

from __future__ import annotations

import collections
import re

import numpy as np
import pytest

from llaca.evaluate import iou, is_correct, normalize, parse_box
from llaca.world.families import BASE_FAMILIES, CONTINUAL_SEQUENCE, FAMILIES, QUESTIONS, caption, generate
from llaca.world.palette import COLOR_NAMES, COLORS, LETTERS, QUADRANTS, SHAPES


def ink_box(item):
    """Bounding box of the pixels that differ from the background (what a person would see)."""
    arr = np.asarray(item.image).astype(int)
    bg = np.array(item.scene.background)
    ys, xs = np.nonzero(np.abs(arr - bg).sum(-1) > 40)
    return xs.min(), ys.min(), xs.max() + 1, ys.max() + 1


def test_every_family_is_deterministic_and_index_stable():
    for fam in FAMILIES:
        a, b = generate(fam, 6, seed=3), generate(fam, 3, seed=3)
        for x, y in zip(a, b):
            assert x.turns == y.turns
            assert x.image.tobytes() == y.image.tobytes()
        other = generate(fam, 6, seed=4)
        assert [x.image.tobytes() for x in a] != [x.image.tobytes() for x in other]


def test_continual_sequence_and_base_families():
    assert CONTINUAL_SEQUENCE == ("count", "position", "letter", "choice", "box", "exists", "unanswerable")
    assert BASE_FAMILIES == ("color", "shape")


@pytest.mark.parametrize("size", [64, 128])
def test_answers_match_what_is_drawn(size):
    for item in generate("color", 40, seed=1, size=size):
        q, a = item.turns[0]
        assert q == "What color is the shape?" and a in COLOR_NAMES
        arr = np.asarray(item.image).astype(int).reshape(-1, 3)
        # the palette colour is what is drawn: the nearest palette colour to the ink's median is the answer
        ink = arr[np.abs(arr - np.array(item.scene.background)).sum(1) > 40]
        median = np.median(ink, axis=0)
        assert min(COLORS, key=lambda c: np.abs(median - COLORS[c]).sum()) == a
        assert np.abs(median - COLORS[a]).sum() < 30
        x1, y1, x2, y2 = ink_box(item)
        assert max(x2 - x1, y2 - y1) >= 12
    for item in generate("shape", 40, seed=1, size=size):
        assert item.turns[0] == (QUESTIONS["shape"], item.scene.objects[0].name)
        assert item.turns[0][1] in SHAPES


def test_background_is_light_and_canvas_rgb():
    for item in generate("color", 20, seed=2):
        assert item.image.mode == "RGB" and item.image.size == (64, 64)
        assert all(215 <= c <= 255 for c in item.scene.background)


def test_count_and_balance():
    items = generate("count", 300, seed=0)
    counts = collections.Counter(it.turns[0][1] for it in items)
    assert set(counts) == {"1", "2", "3", "4", "5"} and min(counts.values()) > 35
    for it in items[:50]:
        assert int(it.turns[0][1]) == len(it.scene.objects)
    yes = sum(it.turns[0][1] == "yes" for it in generate("exists", 300, seed=0))
    assert 120 < yes < 180
    letters = collections.Counter(it.turns[0][1] for it in generate("choice", 300, seed=0))
    assert set(letters) == {"A", "B", "C"} and min(letters.values()) > 70


def test_position_answers_are_true_quadrants():
    for it in generate("position", 60, seed=5, size=64):
        q, a = it.turns[0]
        assert q.startswith("Where is the shape? Answer with top left") and a in QUADRANTS
        x1, y1, x2, y2 = ink_box(it)
        assert (x2 <= 32) == ("left" in a) and (x1 >= 32) == ("right" in a)
        assert (y2 <= 32) == ("top" in a) and (y1 >= 32) == ("bottom" in a)


def test_exists_and_choice_are_consistent_with_the_scene():
    for it in generate("exists", 60, seed=6):
        m = re.match(r"Is there a (\w+) (\w+)\? Answer yes or no\.$", it.turns[0][0])
        present = {(o.color, o.name) for o in it.scene.objects}
        assert 2 <= len(it.scene.objects) <= 3
        assert (it.turns[0][1] == "yes") == ((m.group(1), m.group(2)) in present)
    for it in generate("choice", 60, seed=6):
        q, a = it.turns[0]
        lines = q.split("\n")
        assert lines[-1] == "Answer with the option's letter from the given choices directly."
        shape = re.match(r"What color is the (\w+)\?", lines[0]).group(1)
        target = [o for o in it.scene.objects if o.name == shape]
        assert len(target) == 1
        options = {ln[0]: ln[3:] for ln in lines[1:4]}
        assert options[a] == target[0].color and len(set(options.values())) == 3


def test_letter_and_unanswerable():
    seen = set()
    for it in generate("letter", 80, seed=7):
        assert it.turns[0][1] in LETTERS
        seen.add(it.turns[0][1])
        arr = np.asarray(it.image).reshape(-1, 3)
        assert (arr.sum(1) < 60).sum() > 10  # black ink
    assert len(seen) > 20
    answers = collections.Counter()
    for it in generate("unanswerable", 100, seed=7):
        q, a = it.turns[0]
        asked = re.match(r"What color is the (\w+)\? If it is not in the image, answer unanswerable\.$", q).group(1)
        obj = it.scene.objects[0]
        assert a == (obj.color if asked == obj.name else "unanswerable")
        answers[a == "unanswerable"] += 1
    assert answers[True] > 30 and answers[False] > 30


def test_box_answer_matches_the_drawn_pixels():
    for it in generate("box", 40, seed=8, size=128):
        a = it.turns[0][1]
        assert re.fullmatch(r"\[\d\.\d\d, \d\.\d\d, \d\.\d\d, \d\.\d\d\]", a)
        x1, y1, x2, y2 = ink_box(it)
        assert iou(parse_box(a), (x1 / 128, y1 / 128, x2 / 128, y2 / 128)) > 0.8


def test_describe_caption_names_every_object_in_reading_order():
    for it in generate("describe", 40, seed=9):
        cap = it.turns[0][1]
        assert cap == caption(it.scene)
        for o in it.scene.objects:
            assert f"{o.phrase()} at the {o.quadrant(64, 64)}" in cap
    assert "an orange" in " ".join(it.turns[0][1] for it in generate("describe", 200, seed=1))


def test_scoring():
    assert normalize("  Top Left. ") == "top left"
    assert is_correct("Red.", "red") and not is_correct("red circle", "red")
    assert is_correct("[0.10, 0.10, 0.50, 0.50]", "[0.12, 0.10, 0.50, 0.52]")
    assert not is_correct("[0.50, 0.50, 0.90, 0.90]", "[0.10, 0.10, 0.50, 0.50]")
    assert not is_correct("no box here", "[0.10, 0.10, 0.50, 0.50]")
    assert iou((0, 0, 1, 1), (0.5, 0, 1.5, 1)) == pytest.approx(1 / 3)
