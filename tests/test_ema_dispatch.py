"""The cost of `llaca.learn.ema`'s update(): no host synchronisation, no per-tensor op dispatch.

One update dispatches the same number of (foreach) ops whatever the number of tensors, never
reads a scalar back to the host, and never converts a tensor to a Python number, for
AdaptiveEMA (with and without its trace) and FixedEMA. What the update computes is in
tests/test_ema.py.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from llaca.learn.ema import AdaptiveEMA, FixedEMA
from tests.test_ema import fake_step, make_params


class _OpRecorder(TorchDispatchMode):
    def __init__(self) -> None:
        super().__init__()
        self.ops: list[str] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.append(str(func))
        return func(*args, **(kwargs or {}))


def _steady_state_ops(n_tensors: int, cls=AdaptiveEMA, **kwargs) -> list[str]:
    params = make_params(shapes=[(6, 5)] * n_tensors, seed=20)
    ema = cls(params, **kwargs)
    gen = torch.Generator().manual_seed(21)
    for _ in range(2):  # first update creates θ* and g₋
        fake_step(params, gen, move=0.3, grad_scale=0.05)
        ema.update()
    fake_step(params, gen, move=0.3, grad_scale=0.05)
    with _OpRecorder() as rec:
        ema.update()
    return rec.ops


@pytest.mark.parametrize("cls, kwargs", [(AdaptiveEMA, {}), (AdaptiveEMA, {"trace": True}),
                                         (FixedEMA, {})])
def test_update_dispatches_a_fixed_number_of_ops_and_never_reads_a_scalar(cls, kwargs):
    few, many = _steady_state_ops(4, cls, **kwargs), _steady_state_ops(24, cls, **kwargs)
    assert len(few) == len(many), (few, many)  # foreach ops: no per-tensor work in Python
    assert not any("_local_scalar_dense" in op or "item" in op for op in many)
    if cls is AdaptiveEMA:
        assert "aten._foreach_norm.Scalar" in many


def test_update_never_converts_a_tensor_to_a_python_number(monkeypatch):
    params = make_params(dtype=torch.bfloat16)
    ema = AdaptiveEMA(params)
    gen = torch.Generator().manual_seed(22)

    def forbidden(*_args, **_kwargs):
        raise AssertionError("host sync inside update()")

    fake_step(params, gen)
    for name in ("item", "tolist", "numpy", "__float__", "__int__", "__bool__", "__index__"):
        monkeypatch.setattr(torch.Tensor, name, forbidden)
    for _ in range(3):
        ema.update()
    monkeypatch.undo()
    assert math.isfinite(ema.stats()["alpha_mean"])
