"""The training loop both stages of the tiny model's build share.

Warm-up plus cosine learning-rate schedule (scaled per parameter group by its `lr_scale`),
gradient clipping, a tqdm bar showing the running loss, and a summary of the losses.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from tqdm import tqdm


def cosine_lr(step: int, steps: int, lr: float, warmup: int, min_lr_frac: float) -> float:
    """Linear warm-up, then cosine decay to `min_lr_frac` of `lr`."""
    if step < warmup:
        return lr * (step + 1) / warmup
    t = (step - warmup) / max(1, steps - warmup)
    return lr * (min_lr_frac + (1 - min_lr_frac) * 0.5 * (1 + math.cos(math.pi * t)))


def train(
    opt: torch.optim.Optimizer,
    step_loss: Callable[[], torch.Tensor],
    steps: int,
    lr: float,
    warmup: int,
    min_lr_frac: float,
    desc: str,
    progress: bool = True,
) -> dict:
    """Run `steps` optimizer steps on the loss `step_loss()` returns (a fresh batch each call).

    Returns {"train_seconds", "loss_first_50", "loss_last_50"}.
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(range(steps), desc=desc, disable=not progress, mininterval=5)
    for step in bar:
        base = cosine_lr(step, steps, lr, warmup, min_lr_frac)
        for g in opt.param_groups:
            g["lr"] = base * g.get("lr_scale", 1.0)
        loss = step_loss()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        losses.append(loss.item())
        if step % 50 == 0:
            bar.set_postfix(loss=f"{_mean(losses[-50:]):.3f}")
    return {
        "train_seconds": round(time.perf_counter() - t0, 1),
        "loss_first_50": _mean(losses[:50]),
        "loss_last_50": _mean(losses[-50:]),
    }


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))
