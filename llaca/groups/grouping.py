"""Which instruction group a correction joins: its question's words, else what the groups already answer.

One rule, used by the worker (per question, `assign_questions`) and by the benchmark (per task,
`join_decision` over the task's first corrections):

1. **Words.** The codebook routes the question (`InstructionCodebook.route`): a question worded
   like a group's instructions joins that group.
2. **Answers.** A question no group's words match may still ask for the same kind of answer in
   other words ("Where is the red circle?" after "Where is the shape? Answer with top left,
   ..."). Its corrections are probed (`llaca.groups.start.probe`: the base model and each
   group's adapter answer up to 16 of them, and score the corrected answers' token loss).
   The question joins a group when
   - the group's adapter already answers at least `JOIN_ACCURACY` of them right, and
     `JOIN_MARGIN` more than the base model; or
   - its answers are of the group's kind (`answer_kind`: the normalised answer, numbers
     masked; at least `KIND_SHARE` of the question's answers are kinds the group was taught,
     and at least `KIND_SHARE_GROUP` of the group's answers are kinds of the question's) and,
     of the groups of that kind, this one's adapter gives the corrected answers the lowest
     loss, below the base model's. A young group's adapter may not answer a new wording yet,
     but its answers are the same few values ("top left", a number, yes or no).
   The question's text is stored in the group, so questions worded so route to it when users
   ask them, and its corrections train that group's adapter.
3. Otherwise it starts a new group, and the same probe tells where the new adapter starts
   (`llaca.groups.start`).

The probe needs the corrections' images and answers, so it decides at training time only;
serving routes by words (step 1), which now include every wording a group was taught with.
Measured with `python benchmarks/paraphrase_routing.py` (benchmarks/results/paraphrase_routing.md).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from llaca.groups.start import BASE, Fit, best_fit
from llaca.learn.dataset import VQASample
from llaca.learn.evaluate import normalize

JOIN_ACCURACY = 0.6  # the group's adapter already answers this share of the question's corrections right
JOIN_MARGIN = 0.3  # and this much more than the base model: the group, not the base model, knows them

KIND_SHARE = 0.6  # of the question's answers, kinds the group was taught (a young group has not seen every value)
KIND_SHARE_GROUP = 0.5  # of the group's answers, kinds the question's corrections give
_NUMBER = re.compile(r"\d+")

Probe = Callable[[Sequence[VQASample]], "dict[str, Fit]"]  # samples -> {BASE or group: how it answers}


@dataclass
class Decision:
    """Where one question (or one task) went, and why."""

    group: str | None  # None: a new group
    by: str  # "words", "answers" or "new"
    fits: dict[str, Fit] = field(default_factory=dict)  # the probe's, when it ran


def answer_kind(answer: str) -> str:
    """What kind of answer this is: the normalised text with every number masked ("top left",
    "yes", "#" for a count, "# # # #" for a box)."""
    return _NUMBER.sub("#", normalize(answer))


def same_kind(answers: Sequence[str], group_answers: Sequence[str]) -> bool:
    """Whether a question's corrected answers are of a group's kind (rule 2, second part)."""
    if not answers or not group_answers:
        return False
    mine, theirs = [answer_kind(a) for a in answers], [answer_kind(a) for a in group_answers]
    seen, asked = set(theirs), set(mine)
    return (sum(k in seen for k in mine) >= KIND_SHARE * len(mine)
            and sum(k in asked for k in theirs) >= KIND_SHARE_GROUP * len(theirs))


def join_decision(fits: dict[str, Fit], answers: Sequence[str] = (),
                  group_answers: Callable[[str], Sequence[str]] | None = None) -> str | None:
    """The group the probed corrections join by rule 2 (module docstring), or None. `answers`
    are their corrected answers; `group_answers(group)` the answers a group was taught."""
    best = best_fit(fits)
    base = fits[BASE] if BASE in fits else Fit(0.0, float("inf"))
    if best is not None and fits[best].accuracy >= JOIN_ACCURACY and fits[best].accuracy - base.accuracy >= JOIN_MARGIN:
        return best
    if group_answers is None:
        return None
    kin = [g for g in fits if g != BASE and same_kind(answers, group_answers(g))]
    closest = min(kin, key=lambda g: (fits[g].loss, g), default=None)
    return closest if closest is not None and fits[closest].loss < base.loss else None


def assign_questions(codebook, questions: Sequence[str], samples_of: Callable[[str], Sequence[VQASample]],
                     probe: Probe | None, group_answers: Callable[[str], Sequence[str]] | None = None
                     ) -> dict[str, Decision]:
    """Per distinct question, in order: words, else answers, else a new group; every question is
    stored in its group as it is decided (so a later question worded like an earlier one follows
    it). `samples_of(question)` gives that question's corrections for the probe; `probe` None
    skips rule 2 (no group has an adapter yet); `group_answers(group)` gives the answers a group
    was taught (None: rule 2's answer kinds are not used). Mutates `codebook`."""
    counts: dict[str, int] = {}
    for q in questions:
        counts[q] = counts.get(q, 0) + 1
    decisions: dict[str, Decision] = {}
    for q, n in counts.items():
        group = codebook.route(q)
        if group is not None:
            decisions[q] = Decision(group, "words")
        else:
            samples = samples_of(q)
            fits = probe(samples) if probe is not None and len(codebook) else {}
            group = join_decision(fits, [s.answer for s in samples], group_answers)
            decisions[q] = Decision(group, "answers" if group else "new", fits)
        decisions[q].group = codebook.add([q] * n, group)
    return decisions
