"""Continual benchmark: a task sequence under several methods, from the same starting model.

    python -m llaca.bench --quick                      # 3 synthetic tasks, a few minutes (CI)
    python -m llaca.bench --methods seq,ema,llaca      # the default 7-task synthetic sequence
    python -m llaca.bench --data A B C --eval-data A_test B_test C_test   # your LLaVA-format folders

Writes a JSON result (`{"tasks", "methods": {m: {avg_acc, forgetting, bwt, new_acc, matrix,
seconds, ...}}}`, accuracies in percent), a Markdown table and a PNG. After the last task it
also evaluates the base families (what the model knew before: retention of base knowledge).
"""

from __future__ import annotations

import argparse
import json
import logging
import random
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .dataset import VQASample, read_folder
from .evaluate import adapter_applied, evaluate
from .metrics import forgetting_per_task, summarize
from .model import DEFAULT_MODEL, load_model
from .tuner import METHODS, TuneConfig, tune
from .world.build import heldout
from .world.families import BASE_FAMILIES, CONTINUAL_SEQUENCE

log = logging.getLogger("llaca.bench")
QUICK_TASKS = ("count", "position", "letter")


@dataclass
class Task:
    name: str
    train: list[VQASample]
    test: list[VQASample]


def synthetic_tasks(names, train_n: int, eval_n: int, seed: int) -> list[Task]:
    return [
        Task(n, heldout(n, train_n, seed=seed * 1000 + 17 * k + 1), heldout(n, eval_n, seed=seed * 1000 + 17 * k + 500))
        for k, n in enumerate(names)
    ]


def folder_tasks(data: list[Path], eval_data: list[Path] | None, eval_n: int, seed: int) -> list[Task]:
    if eval_data and len(eval_data) != len(data):
        raise SystemExit(f"--eval-data needs one folder per --data folder ({len(data)}), got {len(eval_data)}")
    tasks = []
    for k, d in enumerate(data):
        samples = read_folder(d)
        if eval_data:
            test = read_folder(eval_data[k])
        else:  # a seeded split of the folder itself
            random.Random(seed + k).shuffle(samples)
            cut = max(1, min(eval_n, len(samples) // 5))
            samples, test = samples[cut:], samples[:cut]
        tasks.append(Task(Path(d).name, samples, test))
    return tasks


def _eval_with_adapter(lm, adapter: Path | None, sets: list[list[VQASample]]) -> list[float]:
    with adapter_applied(lm.model, adapter) as model:
        return [round(evaluate(model, lm.processor, s).accuracy, 2) for s in sets]


def run_method(lm, method: str, tasks: list[Task], base_sets: dict[str, list[VQASample]], args, work: Path) -> dict:
    t0 = time.perf_counter()
    matrix: list[list[float]] = []
    records = []
    adapter: Path | None = None
    # +replay methods keep a few stored samples of what came before: base-family samples drawn
    # apart from the evaluation sets (other seeds), then each finished task's training samples
    replay_pool: list[VQASample] = (
        [s for k, b in enumerate(base_sets) for s in heldout(b, args.replay_per_task, seed=args.seed * 1000 + 950 + k)]
        if "replay" in method else []
    )
    for j, task in enumerate(tasks):
        cfg = TuneConfig(method=method, steps=args.steps, epochs=args.epochs or 1.0, batch_size=args.batch_size,
                         lr=args.lr, seed=args.seed + j)
        if args.epochs:
            cfg.steps = None
        out = work / method / f"{j:02d}-{task.name}"
        res = tune(lm.model, lm.processor, task.train, cfg, init_adapter=adapter, out_dir=out, replay=replay_pool)
        adapter = out
        records.append(res.record)
        row = _eval_with_adapter(lm, adapter, [t.test for t in tasks])
        matrix.append(row)
        log.info("%s after %s: %s", method, task.name, row)
        if "replay" in method:
            replay_pool += task.train[: args.replay_per_task]
    base_after = dict(zip(base_sets, _eval_with_adapter(lm, adapter, list(base_sets.values()))))
    m = summarize(matrix)
    alphas = [r["ema"]["alpha_mean"] for r in records if r.get("ema")]
    fallbacks = [r["ema"]["fallback_fraction"] for r in records if r.get("ema")]
    return {
        "avg_acc": round(m.avg_acc, 2), "forgetting": round(m.forgetting, 2), "bwt": round(m.bwt, 2),
        "new_acc": round(m.new_acc, 2), "matrix": matrix,
        "forgetting_per_task": [round(f, 2) for f in forgetting_per_task(matrix)],
        "base_after": base_after, "seconds": round(time.perf_counter() - t0, 1),
        "train_seconds": round(sum(r["seconds"] for r in records), 1),
        "alpha_mean": round(sum(alphas) / len(alphas), 5) if alphas else None,
        "fallback_fraction": round(sum(fallbacks) / len(fallbacks), 4) if fallbacks else None,
    }


def markdown(result: dict) -> str:
    lines = [
        f"Tasks: {', '.join(result['tasks'])} | steps/task {result['settings']['steps']} | lr {result['settings']['lr']} "
        f"| batch {result['settings']['batch_size']} | seed {result['settings']['seed']}",
        "",
        "| method | avg acc | forgetting | BWT | new-task acc | " + " | ".join(f"base {b}" for b in result["base_before"]) + " | train s |",
        "|---|---|---|---|---|" + "---|" * len(result["base_before"]) + "---|",
    ]
    lines.append("| (start) | | | | | " + " | ".join(f"{v:.1f}" for v in result["base_before"].values()) + " | |")
    for name, r in result["methods"].items():
        base = " | ".join(f"{r['base_after'][b]:.1f}" for b in result["base_before"])
        lines.append(f"| {name} | {r['avg_acc']:.1f} | {r['forgetting']:.1f} | {r['bwt']:.1f} | {r['new_acc']:.1f} | {base} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llaca.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--methods", default="seq,ema,llaca")
    ap.add_argument("--data", nargs="+", type=Path, help="LLaVA-format folders, one per task, in order")
    ap.add_argument("--eval-data", nargs="+", type=Path, help="held-out folders in the same order (default: split of --data)")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per task (same for every method)")
    ap.add_argument("--epochs", type=float, default=None, help="epochs per task instead of --steps")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--train-n", type=int, default=400, help="synthetic training samples per task")
    ap.add_argument("--eval-n", type=int, default=100, help="held-out samples per task")
    ap.add_argument("--replay-per-task", type=int, default=16, help="stored samples per earlier task for +replay methods")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help=f"3 tasks ({', '.join(QUICK_TASKS)}), fewer steps: minutes, for CI")
    ap.add_argument("--device", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/bench"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        ap.error(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    if args.quick:
        args.steps, args.train_n, args.eval_n = min(args.steps, 120), min(args.train_n, 200), min(args.eval_n, 60)

    lm = load_model(args.model, device=args.device)
    if args.data:
        tasks = folder_tasks(args.data, args.eval_data, args.eval_n, args.seed)
    else:
        tasks = synthetic_tasks(QUICK_TASKS if args.quick else CONTINUAL_SEQUENCE, args.train_n, args.eval_n, args.seed)
    base_sets = {b: heldout(b, args.eval_n, seed=args.seed * 1000 + 900 + k) for k, b in enumerate(BASE_FAMILIES)}
    base_before = dict(zip(base_sets, _eval_with_adapter(lm, None, list(base_sets.values()))))
    zero_shot = _eval_with_adapter(lm, None, [t.test for t in tasks])
    work = Path(tempfile.mkdtemp(prefix="llaca-bench-"))
    result = {
        "tasks": [t.name for t in tasks], "model": args.model, "zero_shot": zero_shot, "base_before": base_before,
        "settings": {"steps": args.steps, "epochs": args.epochs, "lr": args.lr, "batch_size": args.batch_size,
                     "train_n": [len(t.train) for t in tasks], "eval_n": [len(t.test) for t in tasks], "seed": args.seed,
                     "replay_per_task": args.replay_per_task, "threads": torch.get_num_threads(), "quick": args.quick},
        "methods": {},
    }
    try:
        for m in methods:
            result["methods"][m] = run_method(lm, m, tasks, base_sets, args, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    args.out.mkdir(parents=True, exist_ok=True)
    json_path = args.json or args.out / "bench.json"
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (args.out / "bench.md").write_text(table)
    from .plots import benchmark_figure, save

    save(benchmark_figure(result["tasks"], result["methods"]), args.out / "bench.png")
    print(table)
    print(f"wrote {json_path}, {args.out / 'bench.md'}, {args.out / 'bench.png'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
