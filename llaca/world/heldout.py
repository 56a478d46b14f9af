"""Fresh, seeded samples of a task family, as VQA samples: the one generator of held-out sets.

Evaluation sets, base probes, benchmark tasks and test fixtures all draw their samples here.
Sample i depends only on (family, seed, i), so a larger `n` extends a set without changing
its first items.
"""

from __future__ import annotations

from llaca.learn.dataset import VQASample

from .families import make_item, sample_rng


def heldout(family: str, n: int, seed: int = 10_000, size: int | tuple[int, int] = 64) -> list[VQASample]:
    """`n` samples of `family` on canvases of side `size` (or drawn from a (min, max) range)."""
    items = [make_item(family, sample_rng(seed, i, family), size) for i in range(n)]
    return [VQASample(f"{family}-{i}", it.image, it.turns, family) for i, it in enumerate(items)]
