"""Learnability report: can one single-task LoRA teach the base model each continual family?

For every continual family it trains a LoRA from the base model with the tuner's defaults
(method `seq`: plain LoRA, the question here is what a task can teach, not forgetting) on
N fresh samples, for each N given (48: a user's buffer; 400: a dataset), and scores it on
fresh held-out samples at 64 px and at 96-128 px. The base model's zero-shot accuracy on the
same held-out sets is reported beside it (low: the instruction format is new).

    python -m llaca.world learnability --out benchmarks/results/learnability
"""

from __future__ import annotations

import json
import shutil
import tempfile
import time
from dataclasses import asdict
from pathlib import Path
from typing import Sequence

from llaca.learn.evaluate import adapter_scores
from llaca.learn.tuner import TuneConfig, tune

from .families import CONTINUAL_SEQUENCE
from .heldout import heldout

EVAL_SIZES: tuple[tuple[str, int | tuple[int, int]], ...] = (("64px", 64), ("96-128px", (96, 128)))
TRAIN_SEED, EVAL_SEED = 20_000, 30_000


def _eval_sets(family: str, n: int) -> dict[str, list]:
    return {label: heldout(family, n, seed=EVAL_SEED + k, size=size) for k, (label, size) in enumerate(EVAL_SIZES)}


def _scores(lm, adapter: Path | None, sets: dict[str, list]) -> dict[str, float]:
    return dict(zip(sets, adapter_scores(lm, adapter, list(sets.values()), digits=1)))


def learnability(lm, families: Sequence[str] = CONTINUAL_SEQUENCE, train_ns: Sequence[int] = (48, 400),
                 eval_n: int = 200, cfg: TuneConfig | None = None, progress: bool = True) -> dict:
    """{"families": {family: {"zero_shot": {size: %}, "N=48": {size: %}, ...}}, "settings": ...}."""
    cfg = cfg or TuneConfig(method="seq")
    work = Path(tempfile.mkdtemp(prefix="llaca-learnability-"))
    out: dict = {"settings": {"tune": asdict(cfg), "train_n": list(train_ns), "eval_n": eval_n,
                              "eval_sizes": {label: size for label, size in EVAL_SIZES}}, "families": {}}
    try:
        for family in families:
            sets = _eval_sets(family, eval_n)
            row = {"zero_shot": _scores(lm, None, sets)}
            for n in train_ns:
                t0 = time.perf_counter()
                train = heldout(family, n, seed=TRAIN_SEED)
                adapter = work / f"{family}-{n}"
                tune(lm.model, lm.processor, train, cfg, out_dir=adapter, show_progress=progress)
                row[f"N={n}"] = _scores(lm, adapter, sets)
                row[f"N={n}"]["seconds"] = round(time.perf_counter() - t0, 1)
            out["families"][family] = row
            if progress:
                print(family, json.dumps(row), flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return out


def markdown(report: dict) -> str:
    ns = report["settings"]["train_n"]
    sizes = [label for label, _ in EVAL_SIZES]
    head = ["family", *(f"zero-shot {s}" for s in sizes), *(f"N={n} {s}" for n in ns for s in sizes)]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for fam, row in report["families"].items():
        cells = [fam, *(f"{row['zero_shot'][s]:.1f}" for s in sizes), *(f"{row[f'N={n}'][s]:.1f}" for n in ns for s in sizes)]
        lines.append("| " + " | ".join(cells) + " |")
    t = report["settings"]["tune"]
    lines += ["", f"Single-task LoRA from the base model, method {t['method']}, {t['steps']} steps, batch {t['batch_size']}, "
                  f"lr {t['lr']}, r {t['lora_r']}; {report['settings']['eval_n']} fresh held-out samples per size. "
                  "Box: IoU > 0.5 counts as right."]
    return "\n".join(lines) + "\n"


def write_report(report: dict, out: Path) -> tuple[Path, Path]:
    out.mkdir(parents=True, exist_ok=True)
    (out / "learnability.json").write_text(json.dumps(report, indent=1))
    (out / "learnability.md").write_text(markdown(report))
    return out / "learnability.json", out / "learnability.md"
