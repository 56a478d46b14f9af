"""Continual methods: how each one runs a sequence of tasks from the same base model.

Every method gets the same budget per task (optimizer steps, learning rate, LoRA rank, batch
size: one `TuneConfig` template) and returns the accuracy matrix R[j][i] (accuracy on task i
after task j, all tasks scored after every task) plus the base-family accuracy at the end.

- `seq`, `ema`, `llaca`: one served LoRA, continued task after task with the tuner's rule
  (`llaca` is the authors' released rule, unchanged).
- `seq+replay`, `llaca+replay`: the same, with stored samples of earlier tasks (and of the
  base families) mixed into every batch: the corrections users made are the replay memory.
- `llaca+groups` (the paper's ICML version): an instruction codebook (`llaca.groups.codebook`) sends
  each task to the group its instructions match. A matched group's LoRA is trained further
  with the dynamic EMA plus replay of that group's own earlier samples; a new group's LoRA is
  trained fresh from the base model, without the EMA. Evaluation is routed: every question
  goes to its group's adapter, or to the base model when it matches no group.
- `llaca+groups+probe`, `+subspace`, `+similar`, `+merged`: the same, but a new group's LoRA
  starts from what earlier groups learned (`llaca.groups.start`). With `+probe`, a task whose
  words match no group also joins a group whose adapter already answers it, or whose
  answers are of its kind (`llaca.groups.grouping`, the worker's rule).
- `joint`: all tasks' data at once with the summed budget (steps x tasks): the upper bound.
  Its matrix is its single final row; forgetting, BWT and new-task accuracy do not apply.
"""

from __future__ import annotations

import logging
import random
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Mapping, Sequence

from llaca.config.methods import GROUP_METHODS, GROUPS, JOINT, METHODS, uses_replay
from llaca.learn.dataset import VQASample
from llaca.learn.evaluate import adapter_scores
from llaca.learn.metrics import forgetting_per_task, summarize
from llaca.learn.tuner import TuneConfig, tune

log = logging.getLogger(__name__)



@dataclass
class Task:
    name: str
    train: list[VQASample]
    test: list[VQASample]


def check_methods(names: Sequence[str]) -> list[str]:
    bad = [m for m in names if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {', '.join(bad)}; choose from {', '.join(METHODS)}")
    return list(names)


def _summary(matrix: list[list[float]], base_after: dict, records: list[dict], t0: float) -> dict:
    if len(matrix) == 1 and len(matrix[0]) > 1:  # joint: one final row
        m = {"avg_acc": round(sum(matrix[0]) / len(matrix[0]), 2), "forgetting": None, "bwt": None,
             "new_acc": None, "forgetting_per_task": None}
    else:
        s = summarize(matrix)
        m = {"avg_acc": round(s.avg_acc, 2), "forgetting": round(s.forgetting, 2), "bwt": round(s.bwt, 2),
             "new_acc": round(s.new_acc, 2), "forgetting_per_task": [round(f, 2) for f in forgetting_per_task(matrix)]}
    alphas = [r["ema"]["alpha_mean"] for r in records if r.get("ema")]
    fallbacks = [r["ema"]["fallback_fraction"] for r in records if r.get("ema")]
    return {
        **m, "matrix": matrix, "base_after": base_after, "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(sum(r["seconds"] for r in records), 1),
        "alpha_mean": round(sum(alphas) / len(alphas), 5) if alphas else None,
        "fallback_fraction": round(sum(fallbacks) / len(fallbacks), 4) if fallbacks else None,
    }


def run_method(lm, method: str, tasks: Sequence[Task], base_sets: Mapping[str, list[VQASample]],
               template: TuneConfig, work: Path, replay_per_task: int = 16,
               base_replay: Sequence[VQASample] = ()) -> dict:
    """Run `method` over `tasks` from the base model; adapters go under `work/method/`."""
    check_methods([method])
    work = Path(work) / method.replace("+", "_")
    if method == JOINT:
        return _run_joint(lm, tasks, base_sets, template, work)
    if method in GROUP_METHODS:
        return _run_groups(lm, tasks, base_sets, template, work, replay_per_task, GROUP_METHODS[method])
    return _run_sequential(lm, method, tasks, base_sets, template, work, replay_per_task, base_replay)


def _run_sequential(lm, method, tasks, base_sets, template, work, replay_per_task, base_replay) -> dict:
    t0 = time.perf_counter()
    matrix, records = [], []
    adapter: Path | None = None
    replay_pool = list(base_replay) if uses_replay(method) else []
    for j, task in enumerate(tasks):
        cfg = replace(template, method=method, seed=template.seed + j)
        out = work / f"{j:02d}-{task.name}"
        res = tune(lm.model, lm.processor, task.train, cfg, init_adapter=adapter, out_dir=out, replay=replay_pool)
        adapter = out
        records.append(res.record)
        matrix.append(adapter_scores(lm, adapter, [t.test for t in tasks]))
        log.info("%s after %s: %s", method, task.name, matrix[-1])
        if uses_replay(method):
            replay_pool += task.train[:replay_per_task]
    base_after = dict(zip(base_sets, adapter_scores(lm, adapter, list(base_sets.values()))))
    return _summary(matrix, base_after, records, t0)


def _run_joint(lm, tasks, base_sets, template, work) -> dict:
    t0 = time.perf_counter()
    pooled = [s for t in tasks for s in t.train]
    random.Random(template.seed).shuffle(pooled)
    steps = (template.steps or 0) * len(tasks) or None
    cfg = replace(template, method="seq", steps=steps, epochs=template.epochs * len(tasks) if steps is None else template.epochs)
    res = tune(lm.model, lm.processor, pooled, cfg, out_dir=work / "all")
    row = adapter_scores(lm, work / "all", [t.test for t in tasks])
    base_after = dict(zip(base_sets, adapter_scores(lm, work / "all", list(base_sets.values()))))
    return _summary([row], base_after, [res.record], t0)


def _run_groups(lm, tasks, base_sets, template, work, replay_per_task, start_kind: str = "fresh") -> dict:
    from llaca.groups.codebook import InstructionCodebook
    from llaca.groups.grouping import join_decision
    from llaca.groups.routed import evaluate_routed
    from llaca.groups.start import PROBE_SAMPLES, probe, start_adapter

    t0 = time.perf_counter()
    codebook = InstructionCodebook()
    adapters: dict[str, Path] = {}
    pools: dict[str, list[VQASample]] = {}
    taught: dict[str, list[VQASample]] = {}  # every sample each group was trained on
    matrix, records, assignment = [], [], []
    for j, task in enumerate(tasks):
        instructions = [s.question for s in task.train]
        group, score = codebook.match(instructions)
        out = work / f"{j:02d}-{task.name}"
        start, fits, joined = None, {}, False
        if group is None and start_kind in ("probe", "transfer") and adapters:  # rule 2 of `llaca.groups.grouping`
            fits = probe(lm.model, lm.processor, adapters, task.train)
            group = join_decision(fits, [s.answer for s in task.train[:PROBE_SAMPLES]],
                                  lambda g: [s.answer for s in taught[g]])
            joined = group is not None
        if group is None:  # a new group: plain LoRA (no EMA), from where `start_kind` says
            start = start_adapter(start_kind, lm.model, lm.processor, adapters, task.train, codebook=codebook,
                                  instructions=instructions, scratch=work / f"{j:02d}-start", fits=fits,
                                  group_samples=taught)
            group = codebook.add(instructions)
            cfg = replace(template, method="seq", seed=template.seed + j)
            res = tune(lm.model, lm.processor, task.train, cfg, init_adapter=start.adapter, out_dir=out)
        else:  # retrain the matched group with the dynamic EMA and replay of its own earlier samples
            codebook.add(instructions, group)
            cfg = replace(template, method="llaca+replay", seed=template.seed + j)
            res = tune(lm.model, lm.processor, task.train, cfg, init_adapter=adapters[group], out_dir=out,
                       replay=pools[group])
        adapters[group] = out
        taught.setdefault(group, []).extend(task.train)
        pools.setdefault(group, []).extend(task.train[:replay_per_task])
        records.append(res.record)
        assignment.append({"task": task.name, "group": group, "match_score": round(float(score), 3),
                           "joined_by_answers": joined, **(start.record() if start else {})})
        routed = evaluate_routed(lm.model, lm.processor, adapters, codebook.route, [t.test for t in tasks])
        matrix.append([r["accuracy"] for r in routed])
        log.info("%s after %s (group %s): %s", GROUPS, task.name, group, matrix[-1])
    base = evaluate_routed(lm.model, lm.processor, adapters, codebook.route, list(base_sets.values()))
    result = _summary(matrix, {b: r["accuracy"] for b, r in zip(base_sets, base)}, records, t0)
    result["groups"] = assignment
    result["base_routes"] = {b: r["routes"] for b, r in zip(base_sets, base)}
    return result
