"""Example images from the synthetic world, written once under ``<data dir>/examples/``.

The embedded tiny model was trained on this world (colours, shapes, descriptions), so these
examples get real answers from it; a full LLaVA answers them too.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

log = logging.getLogger(__name__)

# (family, seed index): a few varied, clearly drawn scenes
EXAMPLE_SPECS: tuple[tuple[str, int], ...] = (("color", 0), ("shape", 1), ("color", 3), ("describe", 2))
EXAMPLE_SEED = 7
EXAMPLE_SIZE = 96


@dataclass(frozen=True)
class Example:
    path: Path
    question: str
    answer: str  # what the synthetic world says is right
    family: str


def make_examples(folder: Path) -> list[Example]:
    """Generate (or reuse) the example images; returns them with their questions."""
    from llaca.world.families import make_item, sample_rng

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    out = []
    for family, index in EXAMPLE_SPECS:
        item = make_item(family, sample_rng(EXAMPLE_SEED, index, family), EXAMPLE_SIZE)
        question, answer = item.turns[0]
        path = folder / f"{family}-{EXAMPLE_SEED}-{index}.png"
        if not path.exists():
            tmp = path.with_suffix(".tmp.png")
            item.image.save(tmp)
            tmp.replace(path)
        out.append(Example(path=path, question=question, answer=answer, family=family))
    return out
