"""Weight averaging for continual tuning: the LLaCA adaptive EMA and a fixed-EMA baseline.

This module owns the EMA copy θ* of a set of trainable tensors (LoRA A/B, projector), its
per-step update and the final hand-over of θ* into the model (`copy_to`). It knows nothing
about models, optimizers or data: callers pass the parameters and call `update()` after every
`optimizer.step()`, before gradients are cleared.

The adaptive rule is the one the LLaCA authors' released code computes (CoIN
`LoraModel.ema_update`), per tensor, with g its gradient, g₋ the previous step's gradient:

    a = ‖θ − θ*‖₁,  b = ‖g‖₁,  c = ‖g − g₋‖₁,  α = 2(1 + b) / (a·c)
    α ∉ (0, 1) or not finite  →  α = 0.01        (also on a tensor's first step: no g₋)
    θ* ← (1 − α)·θ* + α·θ,  g₋ ← g

Implementation notes:
- θ* is created from the parameters at the first `update()` (i.e. after the first optimizer
  step), so that update leaves θ* == θ. θ* and g₋ are kept in fp32 (fp64 stays fp64) whatever
  the parameter dtype; `copy_to` casts back.
- All tensors are processed with `torch._foreach_*` ops over groups of tensors sharing a device
  and dtype; α is computed on the device as a vector (no `.item()` / `float()` in `update()`), so
  an update never waits for the device. Groups are capped at `chunk_numel` elements (default
  2**20 on CPU, 2**26 elsewhere), which bounds the one fp32 temporary (θ − θ*) an update needs
  and, on CPU, keeps it cache-resident between the ops that use it.
- The blend is written θ* ← θ* + α·(θ − θ*) (the same value as (1 − α)θ* + αθ up to rounding),
  which reuses the temporary that gave `a`.
- A parameter whose `.grad` is None at an update (it took no part in this step's loss) is
  handled like a first step: α = 0.01, and its g₋ is left as it was (kept if it had one, absent
  otherwise). The released code instead lands in its except branch and then overwrites g₋ with
  None, which makes the following step a fallback too; keeping the last real gradient is the
  smaller surprise and costs nothing extra.
- `AdaptiveEMA(..., trace=True)` records, per update and tensor, the raw a, b, c and α (before
  the fallback) for analysis (benchmarks/alpha_analysis.py). Each update appends one stacked
  device tensor per group (no host sync); `trace()` converts them once. Off by default, and then
  it costs one attribute test per group and update.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import Tensor

FALLBACK_ALPHA = 0.01
"""α used when the adaptive weight is outside (0, 1), not finite, or has no g₋ to use."""

CPU_CHUNK_NUMEL = 1 << 20
"""Default group size on CPU: 4 MiB of fp32 temporaries stay cache-resident between ops."""

ACCELERATOR_CHUNK_NUMEL = 1 << 26
"""Default group size elsewhere (GPU): few, large foreach launches; bounds temporaries to 256 MiB."""


def default_chunk_numel(device: torch.device) -> int:
    """Elements updated together per foreach group on `device` (see module notes)."""
    return CPU_CHUNK_NUMEL if device.type == "cpu" else ACCELERATOR_CHUNK_NUMEL


@dataclass
class _Group:
    """Tracked tensors on one device with one dtype, updated together by foreach ops."""

    indices: list[int]
    params: list[Tensor]
    device: torch.device
    ema_dtype: torch.dtype
    ema: list[Tensor] = field(default_factory=list)
    g_prev: list[Tensor | None] = field(default_factory=list)
    last_alphas: Tensor | None = None
    alpha_sum: Tensor | None = None  # per tensor, fp64, summed over updates
    fallback_count: Tensor | None = None  # per tensor, int64, summed over updates
    nan: Tensor | None = None  # 0-dim NaN sentinel for tensors without b or c
    trace: list[Tensor] = field(default_factory=list)  # per update: [4, n] rows a, b, c, raw α


def _ema_dtype(dtype: torch.dtype) -> torch.dtype:
    """fp32 for fp16/bf16/fp32 parameters, the parameter dtype if it is wider."""
    return torch.promote_types(dtype, torch.float32)


def _as_param_list(params: Iterable[Tensor]) -> list[Tensor]:
    plist = list(params)
    if not plist:
        raise ValueError("EMA got an empty parameter list; pass the trainable parameters")
    seen: set[int] = set()
    for i, p in enumerate(plist):
        if not isinstance(p, Tensor):
            raise TypeError(f"EMA parameters must be tensors, item {i} is {type(p).__name__}")
        if not p.is_floating_point():
            raise TypeError(f"EMA parameter {i} has non-floating dtype {p.dtype}")
        if id(p) in seen:
            raise ValueError(f"EMA parameter {i} appears more than once")
        seen.add(id(p))
    return plist


def _make_groups(params: list[Tensor], chunk_numel: int | None) -> list[_Group]:
    """Partition tracked tensors by (device, dtype), then into runs of at most chunk_numel
    elements (None: the device default); a tensor larger than that is a group on its own."""
    buckets: dict[tuple[torch.device, torch.dtype], list[int]] = {}
    for i, p in enumerate(params):
        buckets.setdefault((p.device, p.dtype), []).append(i)
    groups: list[_Group] = []
    for (device, dtype), idx in buckets.items():
        limit = default_chunk_numel(device) if chunk_numel is None else chunk_numel
        chunk: list[int] = []
        size = 0
        for i in idx:
            n = params[i].numel()
            if chunk and size + n > limit:
                groups.append(_new_group(chunk, params, device, dtype))
                chunk, size = [], 0
            chunk.append(i)
            size += n
        groups.append(_new_group(chunk, params, device, dtype))
    return groups


def _new_group(idx: list[int], params: list[Tensor], device: torch.device,
               dtype: torch.dtype) -> _Group:
    return _Group(indices=list(idx), params=[params[i] for i in idx], device=device,
                  ema_dtype=_ema_dtype(dtype))


class _EMABase:
    """Shared state handling: grouping, lazy θ* creation, copy_to, stats, the state record."""

    kind = "base"

    def __init__(self, params: Iterable[Tensor], *, chunk_numel: int | None = None):
        if chunk_numel is not None and chunk_numel < 1:
            raise ValueError(f"chunk_numel must be positive or None, got {chunk_numel}")
        self._params = _as_param_list(params)
        self._groups = _make_groups(self._params, chunk_numel)
        self._updates = 0

    # -- the update ---------------------------------------------------------------------------
    @torch.no_grad()
    def update(self) -> None:
        """Blend the current parameters into θ*; call after each `optimizer.step()`."""
        for group in self._groups:
            if not group.ema:
                self._init_group(group)
            alphas, fallback = self._update_group(group)
            group.last_alphas = alphas.to(torch.float32)
            group.alpha_sum.add_(alphas)
            group.fallback_count.add_(fallback)
        self._updates += 1

    def _update_group(self, group: _Group) -> tuple[Tensor, Tensor]:
        """Update one group's θ*; return (α per tensor, fallback flag per tensor, bool)."""
        raise NotImplementedError

    def _init_group(self, group: _Group) -> None:
        group.ema = [p.to(group.ema_dtype, copy=True) for p in group.params]
        group.g_prev = [None] * len(group.params)
        n = len(group.params)
        group.alpha_sum = torch.zeros(n, dtype=torch.float64, device=group.device)
        group.fallback_count = torch.zeros(n, dtype=torch.int64, device=group.device)
        group.nan = torch.full((), float("nan"), dtype=group.ema_dtype, device=group.device)

    # -- hand-over ----------------------------------------------------------------------------
    @torch.no_grad()
    def copy_to(self, params: Iterable[Tensor] | None = None) -> None:
        """Write θ* into `params` (default: the tracked parameters), cast to their dtype.

        `params` must list tensors of the tracked shapes in the tracked order.
        """
        self._require_initialized("copy_to")
        targets = self._params if params is None else list(params)
        if len(targets) != len(self._params):
            raise ValueError(f"copy_to got {len(targets)} tensors, the EMA tracks {len(self._params)}")
        for group in self._groups:
            dst = [targets[i] for i in group.indices]
            for t, e, i in zip(dst, group.ema, group.indices):
                if t.shape != e.shape:
                    raise ValueError(f"copy_to: tensor {i} has shape {tuple(t.shape)}, "
                                     f"the EMA copy has {tuple(e.shape)}")
            if all(t.device == group.device for t in dst):
                torch._foreach_copy_(dst, group.ema)
            else:
                for t, e in zip(dst, group.ema):
                    t.copy_(e)

    # -- logging ------------------------------------------------------------------------------
    @property
    def updates(self) -> int:
        """Number of `update()` calls so far."""
        return self._updates

    @property
    def last_alphas(self) -> Tensor:
        """α of the last update per tracked tensor (fp32, fallbacks included; NaN before any)."""
        if self._updates == 0:
            return torch.full((len(self._params),), float("nan"))
        if len(self._groups) == 1:
            return self._groups[0].last_alphas
        return self._gather([g.last_alphas for g in self._groups], torch.float32)

    def fallback_counts(self) -> Tensor:
        """How many updates fell back to α = 0.01, per tracked tensor (int64)."""
        if self._updates == 0:
            return torch.zeros(len(self._params), dtype=torch.int64)
        return self._gather([g.fallback_count for g in self._groups], torch.int64)

    def stats(self) -> dict[str, float | int]:
        """Mean α and fallback fraction over all tensors and updates so far (one device sync)."""
        if self._updates == 0:
            return {"alpha_mean": 0.0, "fallback_fraction": 0.0, "updates": 0}
        totals = torch.zeros(2, dtype=torch.float64)
        for device in {g.device for g in self._groups}:
            sums = [torch.stack([g.alpha_sum.sum(), g.fallback_count.sum().to(torch.float64)])
                    for g in self._groups if g.device == device]
            totals += torch.stack(sums).sum(0).cpu()
        alpha_total, fallback_total = totals.tolist()
        count = self._updates * len(self._params)
        return {"alpha_mean": alpha_total / count, "fallback_fraction": fallback_total / count,
                "updates": self._updates}

    def _gather(self, parts: Sequence[Tensor], dtype: torch.dtype) -> Tensor:
        device = self._groups[0].device
        out = torch.empty(len(self._params), dtype=dtype, device=device)
        for g, part in zip(self._groups, parts):
            idx = torch.tensor(g.indices, device=device)
            out[idx] = part.to(device=device, dtype=dtype)
        return out

    def _require_initialized(self, what: str) -> None:
        if self._updates == 0:
            raise RuntimeError(f"{what}() called before any update(): the EMA copy does not "
                               "exist yet (it is created at the first update)")

    # -- state record -------------------------------------------------------------------------
    def state_dict(self) -> dict[str, Any]:
        """The EMA state in tracked order (tensors are references, as in optimizer state)."""
        n = len(self._params)
        ema: list[Tensor | None] = [None] * n
        g_prev: list[Tensor | None] = [None] * n
        for g in self._groups:
            for k, i in enumerate(g.indices):
                if g.ema:
                    ema[i], g_prev[i] = g.ema[k], g.g_prev[k]
        return {"kind": self.kind, "updates": self._updates, "ema": ema, "g_prev": g_prev,
                "last_alphas": self.last_alphas if self._updates else None,
                "alpha_sum": self._gather([g.alpha_sum for g in self._groups], torch.float64)
                if self._updates else None,
                "fallback_count": self.fallback_counts() if self._updates else None,
                **self._extra_state()}

    def _extra_state(self) -> dict[str, Any]:
        return {}


class AdaptiveEMA(_EMABase):
    """LLaCA adaptive EMA: a per-tensor α from gradient and parameter-drift L1 norms.

    Call `update()` after each `optimizer.step()` and before gradients are cleared (it reads
    `p.grad` and `p.data`); at the end of a task call `copy_to()` so the model holds θ*.
    """

    kind = "adaptive"

    TRACE_FIELDS = ("a", "b", "c", "alpha_raw")
    """Rows each traced update stores per tensor (b, c are NaN where the tensor had no g or no
    g₋ at that update, i.e. where the rule could not be applied)."""

    def __init__(self, params: Iterable[Tensor], *, chunk_numel: int | None = None,
                 trace: bool = False):
        super().__init__(params, chunk_numel=chunk_numel)
        self._tracing = bool(trace)

    def _update_group(self, group: _Group) -> tuple[Tensor, Tensor]:
        # θ − θ* in the EMA dtype (bf16 θ is promoted); the only full-size temporary.
        diff = torch._foreach_sub(group.params, group.ema)
        a = torch.stack(torch._foreach_norm(diff, 1))

        b, c = (torch.stack(v) for v in self._grad_norms(group))
        alpha = 2 * (1 + b) / (a * c)
        if self._tracing:
            group.trace.append(torch.stack([a, b, c, alpha]))  # a copy: α is filled in below
        fallback = ~((alpha > 0) & (alpha < 1))  # NaN compares False; inf fails alpha < 1
        alpha.masked_fill_(fallback, FALLBACK_ALPHA)

        torch._foreach_mul_(diff, alpha.unbind(0))
        torch._foreach_add_(group.ema, diff)
        return alpha, fallback

    def trace(self) -> dict[str, Any]:
        """The recorded updates as CPU tensors of shape [updates, tensors], tracked order.

        Keys: "a", "b", "c", "alpha_raw" (2(1 + b)/(a·c), fp64 from the EMA dtype), "alpha"
        (the α applied: the fallback where `fallback`), "fallback" (bool), and per tensor
        "numel" (int64) and "shapes" (tuples). One device sync per group; call it after training.
        """
        if not self._tracing:
            raise RuntimeError("trace() needs AdaptiveEMA(..., trace=True)")
        n, steps = len(self._params), len(self._groups[0].trace)
        rows = torch.full((steps, len(self.TRACE_FIELDS), n), float("nan"), dtype=torch.float64)
        for g in self._groups:
            if g.trace:
                rows[:, :, g.indices] = torch.stack(g.trace).to("cpu", torch.float64)
        out = {k: rows[:, i] for i, k in enumerate(self.TRACE_FIELDS)}
        raw = out["alpha_raw"]
        out["fallback"] = ~((raw > 0) & (raw < 1))
        out["alpha"] = raw.masked_fill(out["fallback"], FALLBACK_ALPHA)
        out["numel"] = torch.tensor([p.numel() for p in self._params], dtype=torch.int64)
        out["shapes"] = [tuple(p.shape) for p in self._params]
        return out

    def _grad_norms(self, group: _Group) -> tuple[list[Tensor], list[Tensor]]:
        """b = ‖g‖₁ and c = ‖g − g₋‖₁ per tensor (NaN where not available); g₋ ← g."""
        n = len(group.params)
        b: list[Tensor] = [group.nan] * n
        c: list[Tensor] = [group.nan] * n
        grads = [p.grad for p in group.params]
        with_prev = [k for k in range(n) if grads[k] is not None and group.g_prev[k] is not None]
        if with_prev:
            g = [grads[k] for k in with_prev]
            prev = [group.g_prev[k] for k in with_prev]
            for k, v in zip(with_prev, torch._foreach_norm(g, 1, dtype=group.ema_dtype)):
                b[k] = v
            torch._foreach_sub_(prev, g)  # g₋ − g: same L1 norm as g − g₋, no temporary
            for k, v in zip(with_prev, torch._foreach_norm(prev, 1)):
                c[k] = v
            torch._foreach_copy_(prev, g)
        for k in range(n):  # first gradient seen for this tensor: start its g₋
            if grads[k] is not None and group.g_prev[k] is None:
                group.g_prev[k] = grads[k].to(group.ema_dtype, copy=True)
        return b, c


class FixedEMA(_EMABase):
    """Fixed-weight EMA baseline: θ* ← β·θ* + (1 − β)·θ (the paper's "stable EMA", β = 0.99)."""

    kind = "fixed"

    def __init__(self, params: Iterable[Tensor], beta: float = 0.99, *,
                 chunk_numel: int | None = None):
        if not 0.0 <= beta <= 1.0:
            raise ValueError(f"beta must be in [0, 1], got {beta}")
        super().__init__(params, chunk_numel=chunk_numel)
        self.beta = float(beta)

    def _update_group(self, group: _Group) -> tuple[Tensor, Tensor]:
        weight = 1.0 - self.beta
        torch._foreach_mul_(group.ema, self.beta)
        torch._foreach_add_(group.ema, group.params, alpha=weight)  # bf16 θ is promoted
        n = len(group.params)
        alpha = torch.full((n,), weight, dtype=torch.float64, device=group.device)
        return alpha, torch.zeros(n, dtype=torch.bool, device=group.device)

    def _extra_state(self) -> dict[str, Any]:
        return {"beta": self.beta}
