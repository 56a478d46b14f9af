"""The names of the learning methods, in one place, without torch.

- Single-adapter methods (`TUNER_METHODS`), each one LoRA continued task after task by
  `llaca.learn.tuner`: `seq`, `ema` (fixed EMA), `llaca` (the adaptive EMA), and `+replay` variants
  that mix stored samples of earlier tasks into every batch.
- Group methods (`GROUP_METHODS`): an instruction group per kind of question, each with its own
  LoRA (`llaca.groups.grouping`, `llaca.groups.start`); a known group continues with a tuner
  method (the worker's `tune_method`, default `llaca+replay`) of its own corrections. They
  differ in where a new group's adapter starts (the value). The learning worker runs one of
  these; the single-adapter methods are compared in the benchmark only.
- `joint`: every task's data at once, the benchmark's upper bound.

The app's settings, the worker and the benchmark read these names from here.
"""

from __future__ import annotations

TUNER_METHODS: tuple[str, ...] = ("seq", "ema", "llaca", "seq+replay", "llaca+replay")
GROUPS = "llaca+groups"
GROUP_METHODS: dict[str, str] = {  # method -> where a new group starts (`llaca.groups.start.STARTS`)
    GROUPS: "fresh",
    f"{GROUPS}+probe": "probe",
    f"{GROUPS}+scene": "scene",
    f"{GROUPS}+transfer": "transfer",
    f"{GROUPS}+subspace": "subspace",
    f"{GROUPS}+similar": "similar",
    f"{GROUPS}+merged": "merged",
}
JOINT = "joint"
METHODS: tuple[str, ...] = (*TUNER_METHODS, *GROUP_METHODS, JOINT)
DEFAULT_WORKER_METHOD = f"{GROUPS}+transfer"  # benchmarks/results: the best group method, offline and online
DEFAULT_TUNE_METHOD = "llaca+replay"  # how the worker continues a group that has an adapter


def uses_replay(method: str) -> bool:
    """Whether a single-adapter method mixes stored samples of earlier tasks into every batch."""
    return method.endswith("+replay")


def joins_by_answers(method: str) -> bool:
    """Whether a group method also lets a question worded like no group join the group whose
    adapter answers it, or whose answers are its kind (`llaca.groups.grouping`, rule 2); the others
    group by words alone, as the paper does."""
    return GROUP_METHODS.get(method) in ("probe", "transfer")
