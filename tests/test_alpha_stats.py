"""Tests for llaca.bench.alpha_stats (the α-analysis arithmetic) and the tuner's EMA trace."""

from __future__ import annotations

import pytest
import torch

from llaca.bench.alpha_stats import (
    applied,
    crossover_numel,
    project,
    quantiles,
    replay_at_shape,
    rule_alpha,
    start_weight,
    summarize,
    tiled_index,
)
from llaca.learn.ema import FALLBACK_ALPHA, AdaptiveEMA


def trajectory(shape, steps, seed=0, move=2e-3, grad=2e-3):
    """A random (θ_t, g_t) trajectory with drifting parameters and correlated gradients, with
    per-element scales like a LoRA run's (around 1e-3)."""
    gen = torch.Generator().manual_seed(seed)
    theta = torch.randn(shape, generator=gen)
    g = torch.randn(shape, generator=gen) * grad
    thetas, grads = [], []
    for _ in range(steps):
        g = 0.7 * g + 0.3 * torch.randn(shape, generator=gen) * grad
        theta = theta - move * torch.sign(g) + 0.2 * move * torch.randn(shape, generator=gen)
        thetas.append(theta.clone())
        grads.append(g.clone())
    return thetas, grads


def test_projection_at_own_size_is_the_rule_and_crossover_gives_alpha_one():
    gen = torch.Generator().manual_seed(0)
    a_bar, b_bar, c_bar = (torch.rand(50, generator=gen, dtype=torch.float64) * 1e-3 + 1e-5
                           for _ in range(3))
    n = 3000.0
    torch.testing.assert_close(project(a_bar, b_bar, c_bar, n), rule_alpha(n * a_bar, n * b_bar, n * c_bar))
    n_star = crossover_numel(a_bar, b_bar, c_bar)
    torch.testing.assert_close(project(a_bar, b_bar, c_bar, n_star), torch.ones(50, dtype=torch.float64))
    assert torch.all(project(a_bar, b_bar, c_bar, n_star * 1.01) < 1)
    assert torch.all(project(a_bar, b_bar, c_bar, n_star * 0.99) > 1)
    # beyond n* the rule falls like 1/n once n·b̄ >> 1
    big = project(a_bar, b_bar, c_bar, 1e9)
    torch.testing.assert_close(project(a_bar, b_bar, c_bar, 2e9), big / 2, rtol=1e-3, atol=0)


def test_applied_summarize_quantiles_and_start_weight():
    raw = torch.tensor([[0.5, 2.0, float("nan")], [0.2, float("inf"), -1.0]], dtype=torch.float64)
    alpha, fallback = applied(raw)
    assert fallback.tolist() == [[False, True, True], [False, True, True]]
    assert alpha[0, 1] == FALLBACK_ALPHA and alpha[1, 0] == 0.2
    valid = torch.tensor([[True, True, False], [True, True, True]])
    s = summarize(raw, valid)
    assert s["count"] == 5 and s["fallback_rate"] == pytest.approx(3 / 5)
    assert s["alpha_in_range_q10_50_90"][1] == pytest.approx(0.35)
    assert quantiles(torch.tensor([float("nan")])) == [None, None, None]
    torch.testing.assert_close(start_weight(alpha), torch.tensor([0.5 * 0.8, 0.99 * 0.99, 0.99 * 0.99],
                                                                 dtype=torch.float64))


def test_tiled_index_uses_every_source_element_evenly():
    idx = tiled_index(1000, 300, seed=1)
    counts = torch.bincount(idx, minlength=300)
    assert counts.min() == 3 and counts.max() == 4 and counts.sum() == 1000


def test_replay_at_own_shape_matches_the_ema_on_the_source():
    thetas, grads = trajectory((12, 5), steps=6)
    param = torch.nn.Parameter(torch.empty(12, 5))
    ema = AdaptiveEMA([param], trace=True)
    for theta, g in zip(thetas, grads):
        with torch.no_grad():
            param.copy_(theta)
        param.grad = g
        ema.update()
    direct, replay = ema.trace(), replay_at_shape(thetas, grads, (12, 5), seed=3)
    for key in ("a", "b", "c", "alpha"):  # a permutation of the elements leaves L1 norms alone
        torch.testing.assert_close(replay[key], direct[key], rtol=1e-5, atol=1e-6, equal_nan=True)


def test_replay_at_a_multiple_of_the_size_starts_at_the_projection_then_lags():
    thetas, grads = trajectory((8, 16), steps=8)
    source = replay_at_shape(thetas, grads, (8, 16))
    n_src, k = 128, 4096
    big = replay_at_shape(thetas, grads, (128, 4096), seed=5)  # 4096 copies of every element
    per = {key: source[key] / n_src for key in "abc"}
    proj = project(per["a"], per["b"], per["c"], n_src * k)
    # the first update the rule applies to: θ* is θ_0 in both, so the norms scale exactly by k
    torch.testing.assert_close(big["alpha_raw"][1], proj[1], rtol=2e-3, atol=0)  # fp32 sums
    assert torch.all(source["fallback"][1:])  # the small tensor always takes the 0.01 fallback,
    assert not torch.any(big["fallback"][1:])  # the large one is always in range, and slower:
    assert torch.all(big["alpha"][2:] < FALLBACK_ALPHA)
    assert start_weight(big["alpha"]) > start_weight(source["alpha"])
    assert big["a"][-1, 0] / (n_src * k) > per["a"][-1, 0]  # so θ* lags θ further


def test_tune_trace_needs_an_adaptive_method():
    from llaca.learn.tuner import TuneConfig, TuningError, tune

    with pytest.raises(TuningError, match="adaptive"):
        tune(None, None, [object()], TuneConfig(method="seq", steps=1), trace_ema=True)


def test_tune_returns_the_trace_with_tensor_names(tiny):
    from llaca.learn.tuner import TuneConfig, tune
    from llaca.world.heldout import heldout

    res = tune(tiny.model, tiny.processor, heldout("count", 8, seed=1),
               TuneConfig(method="llaca", steps=3, batch_size=4), trace_ema=True)
    trace = res.ema_trace
    n = res.record["trainable_tensors"]
    assert trace["alpha"].shape == (3, n) and len(trace["names"]) == n
    assert all(".lora_" in name for name in trace["names"])
    assert torch.all(trace["fallback"][0]) and torch.isnan(trace["c"][0]).all()
    assert torch.isfinite(trace["a"]).all() and torch.isfinite(trace["c"][1:]).all()
    assert res.record["ema"]["alpha_mean"] == pytest.approx(float(trace["alpha"].mean()), rel=1e-5)
    plain = tune(tiny.model, tiny.processor, heldout("count", 8, seed=1),
                 TuneConfig(method="llaca", steps=1, batch_size=4))
    assert plain.ema_trace is None
