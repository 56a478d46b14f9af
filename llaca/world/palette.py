"""The fixed vocabulary of the synthetic visual world: colours, shapes, letters, quadrants."""

from __future__ import annotations

COLORS: dict[str, tuple[int, int, int]] = {
    "red": (220, 30, 30),
    "green": (30, 170, 60),
    "blue": (30, 70, 220),
    "yellow": (240, 200, 20),
    "purple": (140, 50, 180),
    "orange": (245, 130, 20),
}
COLOR_NAMES: tuple[str, ...] = tuple(COLORS)
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star")
LETTERS: tuple[str, ...] = tuple("ABCDEFGHIJKLMNOPQRSTUVWXYZ")
QUADRANTS: tuple[str, ...] = ("top left", "top right", "bottom left", "bottom right")
LETTER_INK: tuple[int, int, int] = (0, 0, 0)
MIN_OBJECT_PX = 12
