"""The forgetting guard: compare a candidate adapter with the served one before promotion.

Plasticity: the candidate must do better than the served version on the new buffer's
held-out items. Stability: on every earlier task (the held-out items of each buffer trained
before) and on each base probe set, it may lose at most `margin` points. The report carries
every number, so a rejection reason says exactly what was forgotten.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Sequence

from .dataset import VQASample

NEW, EARLIER, PROBE = "new", "earlier", "probe"


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
