"""The learning-rate schedule every training loop here uses: linear warm-up, then cosine decay."""

from __future__ import annotations

import math


def warmup_cosine(step: int, steps: int, warmup: int, min_lr_frac: float) -> float:
    """The factor on the peak learning rate at `step` (0-based) of `steps`: (step + 1) / warmup
    during the first `warmup` steps, then a cosine from 1 down to `min_lr_frac` at the end."""
    if step < warmup:
        return (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t))
