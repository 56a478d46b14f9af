"""Tests for llaca.learn.ema against a plain per-tensor transcription of the authors' released loop.

What AdaptiveEMA and FixedEMA compute: α and θ* step by step, the fallbacks, dtypes, the trace,
stats, the hand-over (copy_to) and constructor checks. That update() does it without host
synchronisation or per-tensor dispatch is in tests/test_ema_dispatch.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from llaca.learn.ema import FALLBACK_ALPHA, AdaptiveEMA, FixedEMA

SHAPES = [(7, 3), (16,), (4, 5, 6), (1,), (33, 8)]


class ReleasedLoopReference:
    """CoIN `LoraModel.ema_update`, one tensor at a time with a host sync per tensor.

    Differences from the released code, all deliberate and documented in llaca.learn.ema:
    θ* and g₋ are fp32; a tensor whose grad is None keeps its previous g₋ (the released code
    would set it to None).
    """

    def __init__(self, params: list[torch.Tensor]):
        self.params = params
        self.ema: dict[int, torch.Tensor] = {}
        self.g_prev: dict[int, torch.Tensor] = {}
        self.alphas: list[float] = []
        # (a, b, c) per tensor; b and c NaN where the rule cannot use them (no g or no g₋)
        self.norms: list[tuple[float, float, float]] = []

    @torch.no_grad()
    def update(self) -> None:
        self.alphas, self.norms = [], []
        for n, p in enumerate(self.params):
            theta = p.detach().float()
            if n not in self.ema:
                self.ema[n] = theta.clone()
            g = None if p.grad is None else p.grad.detach().float()
            a = float(torch.norm(theta - self.ema[n], p=1))
            b = c = math.nan
            if g is not None and n in self.g_prev:
                b = float(torch.norm(g, p=1))
                c = float(torch.norm(g - self.g_prev[n], p=1))
            self.norms.append((a, b, c))
            try:
                if g is None:
                    raise TypeError("grad is None")
                a = torch.norm(theta - self.ema[n], p=1)
                b = torch.norm(g, p=1)
                c = torch.norm(g - self.g_prev[n], p=1)  # KeyError on the first step
                alpha = float(2 * (1 + b) / (a * c))
                if not (0 < alpha < 1):
                    alpha = 0.01
                self.ema[n] = (1 - alpha) * self.ema[n] + alpha * theta
            except (KeyError, TypeError):
                alpha = 0.01
                self.ema[n] = 0.99 * self.ema[n] + 0.01 * theta
            if g is not None:
                self.g_prev[n] = g.clone()
            self.alphas.append(alpha)


def make_params(shapes=SHAPES, dtype=torch.float32, seed=0) -> list[torch.nn.Parameter]:
    gen = torch.Generator().manual_seed(seed)
    return [torch.nn.Parameter(torch.randn(s, generator=gen).to(dtype)) for s in shapes]


def fake_step(params, gen, move=1e-3, grad_scale=1.0) -> None:
    """Stand-in for backward + optimizer.step(): new grads, then a parameter move."""
    with torch.no_grad():
        for p in params:
            p.grad = (torch.randn(p.shape, generator=gen) * grad_scale).to(p.dtype)
            p.add_((torch.randn(p.shape, generator=gen) * move).to(p.dtype))


def steps_in_lockstep(*runs, seed: int, steps: int) -> None:
    """The same fake optimizer steps (same seed) on each (params, ema) pair, each followed by its update."""
    gens = [torch.Generator().manual_seed(seed) for _ in runs]
    for _ in range(steps):
        for (params, ema), gen in zip(runs, gens):
            fake_step(params, gen, move=0.3, grad_scale=0.05)
            ema.update()


def assert_matches(ema: AdaptiveEMA | FixedEMA, ref: ReleasedLoopReference) -> None:
    torch.testing.assert_close(ema.last_alphas, torch.tensor(ref.alphas, dtype=torch.float32),
                               rtol=1e-5, atol=0)
    for n, e in enumerate(ema.state_dict()["ema"]):
        assert e.dtype == torch.float32
        torch.testing.assert_close(e, ref.ema[n], rtol=1e-5, atol=1e-6, equal_nan=True)


# -- AdaptiveEMA against the reference ----------------------------------------------------------

@pytest.mark.parametrize("chunk_numel", [None, 40, 1 << 62])
def test_matches_reference_over_steps_mixed_shapes(chunk_numel):
    params = make_params()
    ema, ref = AdaptiveEMA(params, chunk_numel=chunk_numel), ReleasedLoopReference(params)
    gen = torch.Generator().manual_seed(1)
    for step in range(6):
        fake_step(params, gen, move=1e-2 * (step + 1))
        ema.update()
        ref.update()
        assert_matches(ema, ref)
    assert ema.updates == 6


def test_first_update_makes_ema_equal_params_and_falls_back():
    params = make_params()
    ema = AdaptiveEMA(params)
    fake_step(params, torch.Generator().manual_seed(2))
    ema.update()
    assert torch.all(ema.last_alphas == FALLBACK_ALPHA)
    for e, p in zip(ema.state_dict()["ema"], params):
        assert torch.equal(e, p.detach())


def test_alpha_inside_unit_interval_for_some_tensors_and_fallback_for_others():
    # α = 2(1+b)/(a·c): large drift a and gradient change c with a small ‖g‖₁ gives α in (0,1);
    # a tiny drift gives α > 1 and the fallback.
    params = make_params(shapes=[(10, 10), (10, 10), (50,)])
    ema, ref = AdaptiveEMA(params), ReleasedLoopReference(params)
    gen = torch.Generator().manual_seed(3)
    for step in range(4):
        with torch.no_grad():
            for k, p in enumerate(params):
                p.grad = torch.randn(p.shape, generator=gen) * 0.01
                p.add_(torch.randn(p.shape, generator=gen) * (0.5 if k != 1 else 1e-4))
        ema.update()
        ref.update()
        assert_matches(ema, ref)
    alphas = ema.last_alphas
    assert 0 < alphas[0] < 1 and alphas[0] != pytest.approx(FALLBACK_ALPHA)
    assert 0 < alphas[2] < 1 and alphas[2] != pytest.approx(FALLBACK_ALPHA)
    assert alphas[1] == pytest.approx(FALLBACK_ALPHA)


def test_zero_gradients_fall_back():  # b = c = 0 -> α = inf
    params = make_params()
    ema, ref = AdaptiveEMA(params), ReleasedLoopReference(params)
    gen = torch.Generator().manual_seed(4)
    for _ in range(3):
        fake_step(params, gen, move=0.1, grad_scale=0.0)
        ema.update()
        ref.update()
        assert_matches(ema, ref)
    assert torch.all(ema.last_alphas == FALLBACK_ALPHA)


def test_identical_theta_and_ema_falls_back():  # a = 0 -> α = inf
    params = make_params()
    ema, ref = AdaptiveEMA(params), ReleasedLoopReference(params)
    gen = torch.Generator().manual_seed(5)
    for _ in range(3):
        fake_step(params, gen, move=0.0)  # parameters never move: θ == θ* throughout
        ema.update()
        ref.update()
        assert_matches(ema, ref)
    assert torch.all(ema.last_alphas == FALLBACK_ALPHA)


def test_inf_and_nan_gradients_fall_back_and_keep_ema_finite():
    params = make_params()
    ema, ref = AdaptiveEMA(params), ReleasedLoopReference(params)
    gen = torch.Generator().manual_seed(6)
    for step in range(5):
        fake_step(params, gen, move=0.3)
        with torch.no_grad():
            if step == 2:
                params[0].grad[0, 0] = float("inf")
            if step == 3:
                params[2].grad[1, 1, 1] = float("nan")
        ema.update()
        ref.update()
        assert_matches(ema, ref)
        if step == 2:
            assert ema.last_alphas[0] == pytest.approx(FALLBACK_ALPHA)
        if step == 3:
            assert ema.last_alphas[0] == pytest.approx(FALLBACK_ALPHA)  # g₋ held the inf
            assert ema.last_alphas[2] == pytest.approx(FALLBACK_ALPHA)
    for e in ema.state_dict()["ema"]:
        assert torch.isfinite(e).all()


def test_grad_none_acts_like_first_step_and_keeps_previous_gradient():
    params = make_params()
    ema, ref = AdaptiveEMA(params), ReleasedLoopReference(params)
    gen = torch.Generator().manual_seed(7)
    for step in range(6):
        fake_step(params, gen, move=0.3, grad_scale=0.05)
        if step in (0, 2, 3):
            params[1].grad = None  # absent at the first update, then twice in a row later
        ema.update()
        ref.update()
        assert_matches(ema, ref)
        if step in (0, 2, 3):
            assert ema.last_alphas[1] == pytest.approx(FALLBACK_ALPHA)
    g_prev = ema.state_dict()["g_prev"]
    assert all(g is not None and g.dtype == torch.float32 for g in g_prev)


def test_grad_none_before_any_gradient_leaves_g_prev_absent():
    params = make_params()
    ema = AdaptiveEMA(params)
    fake_step(params, torch.Generator().manual_seed(8))
    params[3].grad = None
    ema.update()
    g_prev = ema.state_dict()["g_prev"]
    assert g_prev[3] is None and g_prev[0] is not None


def test_bf16_params_keep_fp32_ema_and_copy_to_casts():
    params = make_params(dtype=torch.bfloat16)
    ema, ref = AdaptiveEMA(params), ReleasedLoopReference(params)
    gen = torch.Generator().manual_seed(9)
    for step in range(5):
        fake_step(params, gen, move=0.05 * step)
        ema.update()
        ref.update()
        assert_matches(ema, ref)
    state = ema.state_dict()
    assert all(e.dtype == torch.float32 for e in state["ema"])
    assert all(g.dtype == torch.float32 for g in state["g_prev"])
    ema.copy_to()
    for p, e in zip(params, state["ema"]):
        assert p.dtype == torch.bfloat16
        assert torch.equal(p.detach(), e.to(torch.bfloat16))


def test_mixed_dtypes_keep_tracked_order():
    fp32, bf16 = make_params(SHAPES[:3], seed=10), make_params(SHAPES[3:], torch.bfloat16, 11)
    params = [fp32[0], bf16[0], fp32[1], bf16[1], fp32[2]]
    ema, ref = AdaptiveEMA(params, chunk_numel=50), ReleasedLoopReference(params)
    gen = torch.Generator().manual_seed(12)
    for step in range(4):
        fake_step(params, gen, move=0.2 * step, grad_scale=0.02)
        ema.update()
        ref.update()
        assert_matches(ema, ref)
    assert ema.fallback_counts().shape == (5,)


# -- the trace ------------------------------------------------------------------------------------

def test_trace_records_norms_and_alphas_like_the_reference():
    fp32, bf16 = make_params(SHAPES[:3], seed=30), make_params(SHAPES[3:], torch.bfloat16, 31)
    params = [fp32[0], bf16[0], fp32[1], bf16[1], fp32[2]]
    ema, ref = AdaptiveEMA(params, chunk_numel=50, trace=True), ReleasedLoopReference(params)
    gen = torch.Generator().manual_seed(32)
    norms, alphas = [], []
    for step in range(5):
        fake_step(params, gen, move=0.3 * (step + 1) ** 2, grad_scale=0.01 * (step + 1))
        if step == 2:
            params[3].grad = None
        ema.update()
        ref.update()
        norms.append(ref.norms)
        alphas.append(ref.alphas)
    trace = ema.trace()
    expected = torch.tensor(norms, dtype=torch.float64)  # [steps, tensors, (a, b, c)]
    for k, name in enumerate("abc"):
        assert trace[name].shape == (5, len(params))
        torch.testing.assert_close(trace[name], expected[..., k], rtol=1e-5, atol=1e-7,
                                   equal_nan=True)
    want = torch.tensor(alphas, dtype=torch.float64)
    torch.testing.assert_close(trace["alpha"], want, rtol=1e-5, atol=0)
    assert torch.equal(trace["fallback"], want == FALLBACK_ALPHA)
    assert 0 < trace["fallback"].float().mean() < 1  # both branches are exercised
    assert torch.isnan(trace["c"][0]).all() and torch.isnan(trace["b"][2, 3])  # no g₋ / no g
    assert torch.isfinite(trace["b"][1:]).sum() == 4 * len(params) - 1
    raw = 2 * (1 + trace["b"]) / (trace["a"] * trace["c"])
    torch.testing.assert_close(trace["alpha_raw"], raw, rtol=1e-5, atol=0, equal_nan=True)
    assert trace["numel"].tolist() == [p.numel() for p in params]
    assert trace["shapes"] == [tuple(p.shape) for p in params]
    torch.testing.assert_close(trace["alpha"][-1].float(), ema.last_alphas)


def test_trace_is_off_by_default_and_leaves_the_update_unchanged():
    params_a, params_b = make_params(seed=33), make_params(seed=33)
    plain, traced = AdaptiveEMA(params_a), AdaptiveEMA(params_b, trace=True)
    steps_in_lockstep((params_a, plain), (params_b, traced), seed=34, steps=3)
    assert torch.equal(plain.last_alphas, traced.last_alphas)
    for ea, eb in zip(plain.state_dict()["ema"], traced.state_dict()["ema"]):
        assert torch.equal(ea, eb)
    assert all(not g.trace for g in plain._groups)
    with pytest.raises(RuntimeError, match="trace=True"):
        plain.trace()
    assert traced.trace()["a"].shape == (3, len(SHAPES))


# -- hand-over, stats, checkpointing ---------------------------------------------------------------

def test_copy_to_default_and_explicit_targets():
    params = make_params()
    ema = AdaptiveEMA(params)
    with pytest.raises(RuntimeError, match="before any update"):
        ema.copy_to()
    gen = torch.Generator().manual_seed(13)
    for _ in range(3):
        fake_step(params, gen, move=0.3)
        ema.update()
    others = [torch.nn.Parameter(torch.zeros(s, dtype=torch.float16)) for s in SHAPES]
    ema.copy_to(others)
    for o, e in zip(others, ema.state_dict()["ema"]):
        assert torch.equal(o.detach(), e.half())
    with pytest.raises(ValueError, match="tracks"):
        ema.copy_to(others[:2])
    with pytest.raises(ValueError, match="shape"):
        ema.copy_to([torch.zeros(2) for _ in SHAPES])
    ema.copy_to()
    for p, e in zip(params, ema.state_dict()["ema"]):
        assert torch.equal(p.detach(), e)


def test_stats_match_reference_alphas():
    params = make_params(shapes=[(10, 10), (10, 10), (50,)])
    ema, ref = AdaptiveEMA(params), ReleasedLoopReference(params)
    assert ema.stats() == {"alpha_mean": 0.0, "fallback_fraction": 0.0, "updates": 0}
    gen = torch.Generator().manual_seed(14)
    seen: list[float] = []
    for _ in range(4):
        fake_step(params, gen, move=0.5, grad_scale=0.01)
        ema.update()
        ref.update()
        seen += ref.alphas
    stats = ema.stats()
    assert stats["updates"] == 4
    assert stats["alpha_mean"] == pytest.approx(sum(seen) / len(seen), rel=1e-5)
    fallbacks = sum(1 for a in seen if a == 0.01)
    assert stats["fallback_fraction"] == pytest.approx(fallbacks / len(seen))
    assert 0 < stats["fallback_fraction"] < 1


def test_constructor_validation():
    with pytest.raises(ValueError, match="empty"):
        AdaptiveEMA([])
    p = torch.nn.Parameter(torch.zeros(3))
    with pytest.raises(ValueError, match="more than once"):
        AdaptiveEMA([p, p])
    with pytest.raises(ValueError, match="beta"):
        FixedEMA([p], beta=1.5)


# -- FixedEMA ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_fixed_ema_matches_plain_formula(dtype):
    params = make_params(dtype=dtype)
    beta = 0.9
    ema = FixedEMA(params, beta=beta)
    gen = torch.Generator().manual_seed(19)
    expected: list[torch.Tensor] = []
    for step in range(5):
        fake_step(params, gen, move=0.2)
        if step == 1:
            params[0].grad = None  # the fixed rule ignores gradients
        ema.update()
        if not expected:
            expected = [p.detach().float().clone() for p in params]
        else:
            expected = [beta * e + (1 - beta) * p.detach().float() for e, p in zip(expected, params)]
        for e, x in zip(ema.state_dict()["ema"], expected):
            assert e.dtype == torch.float32
            torch.testing.assert_close(e, x, rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(ema.last_alphas, torch.full((len(params),), 1 - beta))
    stats = ema.stats()
    assert stats["alpha_mean"] == pytest.approx(1 - beta)
    assert stats["fallback_fraction"] == 0.0 and stats["updates"] == 5
    ema.copy_to()
    for p, e in zip(params, ema.state_dict()["ema"]):
        assert torch.equal(p.detach(), e.to(dtype))
