"""Which adapter each row of a batch uses, chosen by the calling thread: peft's mixed-adapter
batches without peft's model-wide hooks.

peft answers a batch whose rows use different LoRA adapters when every LoRA layer's forward
receives `adapter_names=[...]` (one name per row, `"__base__"` for the base model): its
`_mixed_batch_forward` applies each adapter to its own rows only. peft passes the names with
forward pre-hooks that it registers on every layer for the length of one `generate` call,
which would reach every other thread's forward as well. Here each LoRA layer carries one
permanent pre-hook that reads the names from a thread-local slot instead:

    with rows_use(model, ["g1@v3", BASE_ROW, "g2@v5"]):
        model(**batch)          # row 0 through g1's adapter, row 1 the base model, ...

A thread that sets no names (the learning worker's training steps) gets peft's ordinary
forward: the active adapter, which is the one it trains. So the served adapters and the one
being trained share one model, and neither thread sees the other's adapter.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager
from typing import Iterator, Sequence

BASE_ROW = "__base__"  # peft's name for "no adapter" in `adapter_names`

_rows = threading.local()
_HOOKED = "_llaca_rows_hook"


def _pre_forward(module, args, kwargs):
    names = getattr(_rows, "names", None)
    if isinstance(names, str):  # one adapter for every row of whatever batch comes
        x = args[0] if args else next(iter(kwargs.values()))
        names = [names] * x.shape[0]
    if names is not None:
        kwargs["adapter_names"] = names
    return args, kwargs


def install(model) -> int:
    """Give every LoRA layer of `model` (and every auxiliary wrapper, like a trained projector)
    the thread-local pre-hook, once; call again after new layers were injected. Returns how
    many layers were new."""
    from peft.tuners.lora import LoraLayer
    from peft.utils.other import AuxiliaryTrainingWrapper

    added = 0
    for module in model.modules():
        if isinstance(module, (LoraLayer, AuxiliaryTrainingWrapper)) and not getattr(module, _HOOKED, False):
            module.register_forward_pre_hook(_pre_forward, with_kwargs=True)
            setattr(module, _HOOKED, True)
            added += 1
    return added


@contextmanager
def rows_use(names: Sequence[str] | str | None) -> Iterator[None]:
    """In this thread, forward passes apply adapter `names[i]` to row i; one name (a str)
    applies to every row of any batch (evaluation's `generate`); None: peft's active adapter,
    as without this context."""
    before = getattr(_rows, "names", None)
    _rows.names = names if names is None or isinstance(names, str) else list(names)
    try:
        yield
    finally:
        _rows.names = before
