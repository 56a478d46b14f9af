"""The forgetting guard: what a candidate is judged on, and the rule that promotes or refuses it.

What it is judged on: each buffer is split into training and held-out corrections
(`held_out`, seeded by the buffer, so a retry after a crash splits the same way; a buffer of
fewer than `MIN_ITEMS_TO_HOLD_OUT` is judged on what it trained on), and every run is also
checked on the base probes (`base_probes`: colour and shape of a shape, which every LLaVA here
should keep answering). The learning policy (`llaca.worker.policy`) names the sets.

The rule (`decide_paired`, one report `GuardReport` that carries every number, so a rejection
reason says exactly what was forgotten): the candidate routed system and the served one answer
the same items, so the comparison is paired. A set counts as worse only when the loss is both material (more
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

import random
from dataclasses import asdict, dataclass, field
from typing import Sequence

from llaca.learn.dataset import VQASample

NEW, EARLIER, PROBE, TAUGHT, CONFLICT = "new", "earlier", "probe", "taught", "conflict"
MIN_ITEMS_TO_HOLD_OUT = 3  # a smaller buffer is judged on the corrections it trained on
HELDOUT_FRACTION = 0.2  # of a buffer's corrections, held out to judge the run
MIN_HELDOUT = 2  # held out at least, once a buffer has MIN_ITEMS_TO_HOLD_OUT
CONFLICT_MIN_LOST = 2  # other authors' learned corrections a candidate must newly get wrong (net) to be a conflict ...
CONFLICT_SHARE = 0.1  # ... and this share of those the served system answers right


@dataclass
class EvalSet:
    """A named set of samples a candidate is judged on, of one kind (`PROBE`, ...)."""

    name: str
    kind: str
    samples: list[VQASample]


def held_out(item_ids: Sequence[int], buffer_id: int, fraction: float = HELDOUT_FRACTION,
             minimum: int = MIN_HELDOUT) -> set[int]:
    """Which of a buffer's corrections are held out to judge its run: about `fraction` of them,
    at least `minimum`, never all, none below `MIN_ITEMS_TO_HOLD_OUT`; seeded by the buffer id."""
    n = 0 if len(item_ids) < MIN_ITEMS_TO_HOLD_OUT else max(minimum, round(fraction * len(item_ids)))
    return set(random.Random(f"split:{buffer_id}").sample(list(item_ids), min(n, len(item_ids) - 1)))


def base_probes(n: int) -> list[EvalSet]:
    """The base families every LLaVA here should keep answering: colour and shape of a shape."""
    from llaca.world.heldout import heldout

    return [EvalSet(f, PROBE, heldout(f, n, seed=777_000 + k)) for k, f in enumerate(("color", "shape"))]


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
