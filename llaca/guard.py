"""The forgetting guard: compare a candidate adapter with the served one before promotion.

Two rules, one report (`GuardReport`, which carries every number, so a rejection reason says
exactly what was forgotten):

- `decide` (single served adapter): plasticity: the candidate must do better than the served
  version on the new buffer's held-out items; stability: on every earlier task (the held-out
  items of each buffer trained before) and on each base probe set, it may lose at most
  `margin` points.
- `decide_paired` (routed systems, `llaca+groups`): both systems answer the same items, so
  the comparison is paired. A set counts as worse only when the loss is both material (more
  than `margin` points) and significant: the one-sided exact McNemar test on the items that
  only one system answers right (under "no difference" each such item is a fair coin) gives
  p < `alpha`. On a handful of items a point drop is noise; on 60 probes, a candidate that
  calls every colour blue is refused with p < 1e-9. Plasticity: the candidate must fit what
  it was taught (at least `min_fit` % of its training corrections) and be no worse, in that
  sense, on the group's held-out items pooled over all its buffers; it need not improve on
  items the served system already answers.
- Conflicts (`CONFLICT` sets, `decide_paired`): other authors' corrections the group has
  already learned (training and held-out items alike) are evidence. A candidate that gets
  more of them wrong than it gets newly right, by at least `CONFLICT_MIN_LOST` and a tenth of
  those the served system answers right, contradicts those authors: refused, whatever the
  statistics say (two items after one buffer must be enough to object). Measured on the tiny
  model: one buffer of 8 mirrored position answers, continued with the EMA and replay, flips
  5 of the first author's 24 learned items and none back, while its own 6 fit 100%.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from .dataset import VQASample

NEW, EARLIER, PROBE, TAUGHT, CONFLICT = "new", "earlier", "probe", "taught", "conflict"
CONFLICT_MIN_LOST = 2  # other authors' learned corrections a candidate must newly get wrong (net) to be a conflict ...
CONFLICT_SHARE = 0.1  # ... and this share of those the served system answers right


@dataclass
class EvalSet:
    name: str
    kind: str  # new | earlier | probe
    samples: list[VQASample]


@dataclass
class GuardReport:
    passed: bool
    reason: str
    margin: float
    candidate: dict[str, float] = field(default_factory=dict)
    current: dict[str, float] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    kinds: dict[str, str] = field(default_factory=dict)
    p_values: dict[str, float] = field(default_factory=dict)  # decide_paired: one-sided McNemar, per set

    def to_dict(self) -> dict:
        return asdict(self)


def decide(candidate: dict[str, float], current: dict[str, float], sets: Sequence[EvalSet], margin: float) -> GuardReport:
    """Apply the promotion rule to two rows of accuracies (percent)."""
    sizes = {s.name: len(s.samples) for s in sets if s.samples}
    kinds = {s.name: s.kind for s in sets if s.samples}
    problems, notes = [], []
    for s in sets:
        if not s.samples:
            continue
        new, old = candidate[s.name], current[s.name]
        if s.kind == NEW:
            if new <= old:
                problems.append(f"the new task did not improve on its held-out items ({s.name}: {old:.0f}% -> {new:.0f}%)")
            else:
                notes.append(f"{s.name} {old:.0f}% -> {new:.0f}%")
        elif old - new > margin:
            what = "base probe" if s.kind == PROBE else "earlier task"
            problems.append(f"{what} {s.name} fell {old:.0f}% -> {new:.0f}% ({new - old:+.0f} points; margin {margin:g})")
        else:
            notes.append(f"{s.name} {old:.0f}% -> {new:.0f}%")
    passed = not problems
    reason = ("passed: " + "; ".join(notes)) if passed else ("rejected: " + "; ".join(problems))
    return GuardReport(passed, reason, margin, candidate, current, sizes, kinds)


def worse_p_value(lost: int, gained: int) -> float:
    """One-sided exact McNemar test: the chance, if the two systems were equally good, that at
    least `lost` of the `lost + gained` items only one of them answers right go against the
    candidate."""
    if lost <= 0:
        return 1.0
    from scipy.stats import binom

    return float(binom.sf(lost - 1, lost + gained, 0.5))


@dataclass
class PairedSet:
    """One evaluation set answered by both systems: per item, right or wrong."""

    name: str
    kind: str  # taught | new | earlier | probe | conflict
    candidate: list[bool]
    current: list[bool]


def _pct(hits: Sequence[bool]) -> float:
    return round(100.0 * sum(hits) / len(hits), 2) if hits else 0.0


def decide_paired(sets: Sequence[PairedSet], margin: float, alpha: float = 0.05, min_fit: float = 60.0) -> GuardReport:
    """Apply the routed promotion rule (module docstring) to paired per-item results."""
    cand, cur, sizes, kinds, pvals = {}, {}, {}, {}, {}
    problems, notes = [], []
    for s in sets:
        if not s.candidate:
            continue
        if len(s.candidate) != len(s.current):
            raise ValueError(f"set {s.name}: {len(s.candidate)} candidate answers against {len(s.current)}")
        new, old = _pct(s.candidate), _pct(s.current)
        cand[s.name], cur[s.name], sizes[s.name], kinds[s.name] = new, old, len(s.candidate), s.kind
        lost = sum(c < o for c, o in zip(s.candidate, s.current))
        gained = sum(c > o for c, o in zip(s.candidate, s.current))
        p = pvals[s.name] = worse_p_value(lost, gained)
        if s.kind == CONFLICT:
            right_before = sum(s.current)
            if lost - gained >= max(CONFLICT_MIN_LOST, CONFLICT_SHARE * right_before):
                problems.append(f"conflict: it contradicts {s.name}: {lost} of the {right_before} they taught that "
                                f"the served version answers right would now be answered differently "
                                f"({gained} the other way)")
            else:
                notes.append(f"{s.name} {old:.0f}% -> {new:.0f}%")
        elif s.kind == TAUGHT and new < min_fit:
            problems.append(f"it did not fit what it was taught ({s.name}: {new:.0f}% of {len(s.candidate)} "
                            f"training corrections right, needs {min_fit:g}%)")
        elif old - new > margin and p < alpha:
            what = {PROBE: "base probe", EARLIER: "other group", NEW: "this group's held-out", TAUGHT: "taught"}[s.kind]
            problems.append(f"{what} {s.name} fell {old:.0f}% -> {new:.0f}% ({new - old:+.0f} points, "
                            f"{lost} lost / {gained} gained, p={p:.2g}; margin {margin:g})")
        else:
            notes.append(f"{s.name} {old:.0f}% -> {new:.0f}%")
    passed = not problems
    reason = ("passed: " + "; ".join(notes)) if passed else ("rejected: " + "; ".join(problems))
    return GuardReport(passed, reason, margin, cand, cur, sizes, kinds, pvals)
