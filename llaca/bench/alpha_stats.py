"""The LLaCA α as a function of tensor size: the statistics behind benchmarks/alpha_analysis.py.

This module owns the arithmetic of the analysis, none of the I/O: the released rule written on
per-element means, its projection to another element count, the size at which it enters
(0, 1), distribution summaries, and a replay of recorded (θ, g) trajectories through the real
`AdaptiveEMA` on larger tensors.

With n elements and per-element means ā = a/n = mean|θ − θ*|, b̄ = b/n = mean|g|,
c̄ = c/n = mean|g − g₋|, the rule α = 2(1 + b)/(a·c) reads

    α(n) = 2(1 + n·b̄) / (n²·ā·c̄)  ≈  2/(n²·ā·c̄)   while n·b̄ << 1,
                                   ≈  2·b̄/(n·ā·c̄)  once n·b̄ >> 1,

and α < 1 (the rule is used instead of the 0.01 fallback) exactly when n exceeds

    n* = (b̄ + sqrt(b̄² + 2·ā·c̄)) / (ā·c̄).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from llaca.learn.ema import FALLBACK_ALPHA, AdaptiveEMA


def rule_alpha(a: Tensor, b: Tensor, c: Tensor) -> Tensor:
    """The raw adaptive weight 2(1 + b)/(a·c) (before the fallback)."""
    return 2 * (1 + b) / (a * c)


def applied(raw: Tensor) -> tuple[Tensor, Tensor]:
    """(α the rule applies, fallback mask): α outside (0, 1) or not finite becomes 0.01."""
    fallback = ~((raw > 0) & (raw < 1))
    return raw.masked_fill(fallback, FALLBACK_ALPHA), fallback


def project(a_bar: Tensor, b_bar: Tensor, c_bar: Tensor, numel: float) -> Tensor:
    """Raw α of a tensor with `numel` elements and the given per-element means."""
    return rule_alpha(numel * a_bar, numel * b_bar, numel * c_bar)


def crossover_numel(a_bar: Tensor, b_bar: Tensor, c_bar: Tensor) -> Tensor:
    """The element count n* above which α(n) < 1, i.e. the rule leaves the fallback."""
    ac = a_bar * c_bar
    return (b_bar + torch.sqrt(b_bar**2 + 2 * ac)) / ac


def start_weight(alpha: Tensor) -> Tensor:
    """Π_t (1 − α_t) over dim 0: the weight θ* still gives its first value after all steps."""
    return torch.prod(1 - alpha, dim=0)


def quantiles(x: Tensor, qs: Sequence[float] = (0.1, 0.5, 0.9)) -> list[float | None]:
    """Quantiles of the finite entries of `x` (None when there are none)."""
    x = x[torch.isfinite(x)].to(torch.float64)
    if x.numel() == 0:
        return [None] * len(qs)
    return torch.quantile(x, torch.tensor(qs, dtype=torch.float64)).tolist()


def summarize(raw: Tensor, valid: Tensor) -> dict[str, object]:
    """Fallback rate and α quantiles over the entries where the rule had a, b and c (`valid`)."""
    raw = raw[valid]
    alpha, fallback = applied(raw)
    n = raw.numel()
    return {
        "count": n,
        "fallback_rate": float(fallback.double().mean()) if n else None,
        "alpha_raw_q10_50_90": quantiles(raw),
        "alpha_in_range_q10_50_90": quantiles(raw[~fallback]),
        "alpha_applied_mean": float(alpha.mean()) if n else None,
    }


def tiled_index(numel: int, source_numel: int, seed: int = 0) -> Tensor:
    """A random map from `numel` target elements onto `source_numel` source elements that uses
    every source element floor or ceil(numel / source_numel) times, so per-element means carry
    over (exactly when numel is a multiple of source_numel)."""
    gen = torch.Generator().manual_seed(seed)
    return torch.randperm(numel, generator=gen) % source_numel


@torch.no_grad()
def replay_at_shape(thetas: Sequence[Tensor], grads: Sequence[Tensor], shape: Sequence[int],
                    seed: int = 0) -> dict[str, Tensor]:
    """Run the real `AdaptiveEMA` on a tensor of `shape` whose elements follow recorded ones.

    `thetas[t]` and `grads[t]` are one tensor's parameters and gradient seen by the EMA at
    update t (flattened or not). Each target element copies one source element's whole
    trajectory (`tiled_index`), so per-element statistics and their correlation over time are
    the recorded ones, while θ* evolves under the α of the larger tensor. Returns
    `AdaptiveEMA.trace()` for the one tensor (arrays of shape [updates, 1]).
    """
    n = 1
    for s in shape:
        n *= int(s)
    idx = tiled_index(n, thetas[0].numel(), seed)
    param = torch.nn.Parameter(torch.empty(tuple(shape), dtype=torch.float32))
    ema = AdaptiveEMA([param], trace=True)
    for theta, grad in zip(thetas, grads):
        param.copy_(theta.reshape(-1)[idx].view(param.shape))
        param.grad = grad.reshape(-1)[idx].view(param.shape).to(torch.float32)
        ema.update()
    return ema.trace()
