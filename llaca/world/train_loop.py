"""The training loop both stages of the tiny model's build share.

The warm-up plus cosine learning-rate schedule (`llaca.learn.schedule`, scaled per parameter group by its `lr_scale`),
gradient clipping, a tqdm bar showing the running loss, and a summary of the losses. Batches
are drawn and encoded in a background thread one step ahead (drawing, rendering and
tokenising are Python work that overlaps with torch's GIL-free kernels); one producer keeps
the batch sequence, and so the build, deterministic.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import threading
import time
from collections.abc import Callable, Iterator

import torch
from tqdm import tqdm

from llaca.learn.schedule import warmup_cosine


def prefetched(make_batch: Callable[[], object], n: int, depth: int = 2) -> Iterator:
    """`n` results of `make_batch()`, produced in order by one background thread, `depth` ahead."""
    q: queue.Queue = queue.Queue(maxsize=depth)
    stop = threading.Event()

    def produce() -> None:
        try:
            for _ in range(n):
                if stop.is_set():
                    return
                q.put((True, make_batch()))
        except BaseException as e:  # handed to the consumer, raised there
            q.put((False, e))

    worker = threading.Thread(target=produce, name="batch-producer", daemon=True)
    worker.start()
    try:
        for _ in range(n):
            ok, item = q.get()
            if not ok:
                raise item
            yield item
    finally:
        stop.set()
        while worker.is_alive():  # unblock a producer waiting on a full queue
            try:
                q.get_nowait()
            except queue.Empty:
                worker.join(0.05)


def train(
    opt: torch.optim.Optimizer,
    make_batch: Callable[[], object],
    batch_loss: Callable[[object], torch.Tensor],
    steps: int,
    lr: float,
    warmup: int,
    min_lr_frac: float,
    desc: str,
    progress: bool = True,
    precision: Callable[[], contextlib.AbstractContextManager] = contextlib.nullcontext,
) -> dict:
    """Run `steps` optimizer steps, each on `batch_loss(make_batch())` (a fresh batch each step).

    `precision()` is entered around each forward pass (see `autocast_for`); the backward pass and
    the optimizer step stay outside it, on the fp32 master weights.

    Returns {"train_seconds", "loss_first_50", "loss_last_50"}.
    """
    params = [p for g in opt.param_groups for p in g["params"]]
    losses: list[float] = []
    t0 = time.perf_counter()
    bar = tqdm(prefetched(make_batch, steps), total=steps, desc=desc, disable=not progress, mininterval=5)
    for step, batch in enumerate(bar):
        base = lr * warmup_cosine(step, steps, warmup, min_lr_frac)
        for g in opt.param_groups:
            g["lr"] = base * g.get("lr_scale", 1.0)
        with precision():
            loss = batch_loss(batch)
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


def autocast_for(device: str, mixed_precision: str) -> Callable[[], contextlib.AbstractContextManager]:
    """The forward-pass context for `mixed_precision` "bf16" or "no" on `device` ("cpu", "cuda", ...).

    bf16 autocast keeps fp32 master weights and runs matmuls in bf16: x1.42 (vision stage) and
    x1.43 (LLaVA stage) the speed of fp32 per build step on this project's 2-core AVX512-BF16 CPU
    (`benchmarks/build_step_speed.py`), with the same loss curve over the first 700 steps."""
    if mixed_precision == "no":
        return contextlib.nullcontext
    if mixed_precision != "bf16":
        raise ValueError(f"mixed_precision must be 'bf16' or 'no', not {mixed_precision!r}")
    return functools.partial(torch.autocast, torch.device(device).type, dtype=torch.bfloat16)


def _mean(values: list[float]) -> float:
    return sum(values) / max(1, len(values))
