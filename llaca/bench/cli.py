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
import tempfile
from pathlib import Path

import torch

from llaca.bench.continual import METHODS, Task, check_methods, run_method
from llaca.config.settings import DEFAULT_MODEL
from llaca.learn.dataset import read_folder
from llaca.learn.evaluate import adapter_scores
from llaca.learn.tuner import TuneConfig
from llaca.model.llava import load_model
from llaca.world.families import BASE_FAMILIES, CONTINUAL_SEQUENCE
from llaca.world.heldout import heldout

log = logging.getLogger("llaca.bench")
QUICK_TASKS = ("count", "position", "letter")


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
        tasks.append(Task(task_name(Path(d)), samples, test))
    names = [t.name for t in tasks]
    if len(set(names)) != len(names):
        raise SystemExit(f"--data folders must have distinct names (they name the tasks); got {', '.join(names)}")
    return tasks


def task_name(path: Path) -> str:
    """A task is named after its folder, also when the path given is the folder's data.json."""
    return path.parent.name if path.is_file() else path.name


def _num(v) -> str:
    return "n/a" if v is None else f"{v:.1f}"


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
        cells = [_num(r[k]) for k in ("avg_acc", "forgetting", "bwt", "new_acc")]
        lines.append(f"| {name} | {' | '.join(cells)} | {base} | {r['train_seconds']:.0f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llaca.bench", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default=DEFAULT_MODEL, help=f"model folder or hub id (default: {DEFAULT_MODEL})")
    ap.add_argument("--methods", default="seq,ema,llaca",
                    help=f"comma-separated, from: {', '.join(METHODS)}; or all (default: seq,ema,llaca)")
    ap.add_argument("--list", action="store_true", help="print every method name, one a line, and exit")
    ap.add_argument("--data", nargs="+", type=Path, help="LLaVA-format folders, one per task, in order")
    ap.add_argument("--eval-data", nargs="+", type=Path, help="held-out folders in the same order (default: split of --data)")
    ap.add_argument("--steps", type=int, default=200, help="optimizer steps per task, the same for every method (default: 200)")
    ap.add_argument("--epochs", type=float, default=None, help="epochs per task instead of --steps (default: unset)")
    ap.add_argument("--lr", type=float, default=1e-3, help="learning rate (default: 1e-3)")
    ap.add_argument("--batch-size", type=int, default=16, help="samples per optimizer step (default: 16)")
    ap.add_argument("--train-n", type=int, default=400, help="synthetic training samples per task (default: 400)")
    ap.add_argument("--eval-n", type=int, default=100, help="held-out samples per task (default: 100)")
    ap.add_argument("--replay-per-task", type=int, default=16, help="stored samples kept per finished task for the replay methods and per group for llaca+groups (default: 16)")
    ap.add_argument("--seed", type=int, default=0, help="seed of data, order and initialisation (default: 0)")
    ap.add_argument("--quick", action="store_true", help=f"3 tasks ({', '.join(QUICK_TASKS)}), fewer steps: minutes, for CI")
    ap.add_argument("--device", default=None, help="cpu, cuda, cuda:1 ... (default: cuda when available)")
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's choice)")
    ap.add_argument("--json", type=Path, default=None, help="where to write the JSON result (default: OUT/bench.json)")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/bench"),
                    help="folder for bench.md and bench.png (default: benchmarks/out/bench)")
    ap.add_argument("--merge", nargs="+", type=Path, metavar="JSON",
                    help="combine result files of the same tasks and settings (e.g. one process per method) "
                         "into one result, table and plot under --out; runs nothing")
    args = ap.parse_args(argv)
    if args.list:
        print("\n".join(METHODS))
        return 0
    if args.merge:
        try:
            result = merge_results([json.loads(p.read_text()) for p in args.merge])
        except ValueError as e:
            ap.error(str(e))
        return write_outputs(result, args.json or args.out / "bench.json", args.out)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    methods = list(METHODS) if args.methods.strip() == "all" else [m.strip() for m in args.methods.split(",") if m.strip()]
    try:
        check_methods(methods)
    except ValueError as e:
        ap.error(str(e))
    if args.quick:
        args.steps, args.train_n, args.eval_n = min(args.steps, 120), min(args.train_n, 200), min(args.eval_n, 60)

    lm = load_model(args.model, device=args.device)
    if args.data:
        tasks = folder_tasks(args.data, args.eval_data, args.eval_n, args.seed)
    else:
        tasks = synthetic_tasks(QUICK_TASKS if args.quick else CONTINUAL_SEQUENCE, args.train_n, args.eval_n, args.seed)
    base_sets = {b: heldout(b, args.eval_n, seed=args.seed * 1000 + 900 + k) for k, b in enumerate(BASE_FAMILIES)}
    base_before = dict(zip(base_sets, adapter_scores(lm, None, list(base_sets.values()))))
    zero_shot = adapter_scores(lm, None, [t.test for t in tasks])
    # +replay methods keep a few stored samples of what came before: base-family samples drawn
    # apart from the evaluation sets (other seeds), then each finished task's training samples
    base_replay = [s for k, b in enumerate(base_sets) for s in heldout(b, args.replay_per_task, seed=args.seed * 1000 + 950 + k)]
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
            template = TuneConfig(method="seq", steps=None if args.epochs else args.steps, epochs=args.epochs or 1.0,
                                  batch_size=args.batch_size, lr=args.lr, seed=args.seed)
            result["methods"][m] = run_method(lm, m, tasks, base_sets, template, work, args.replay_per_task, base_replay)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return write_outputs(result, args.json or args.out / "bench.json", args.out)


def merge_results(results: list[dict]) -> dict:
    """One result from several runs of the same tasks and settings (e.g. one process per method)."""
    first = results[0]
    keys = ("tasks", "model", "settings")
    for r in results[1:]:
        for k in keys:
            a = {x: y for x, y in r[k].items() if x != "threads"} if k == "settings" else r[k]
            b = {x: y for x, y in first[k].items() if x != "threads"} if k == "settings" else first[k]
            if a != b:
                raise ValueError(f"cannot merge runs with different {k}: {b} vs {a}")
    merged = {**first, "methods": {}}
    for r in results:
        for m, v in r["methods"].items():
            if m in merged["methods"]:
                raise ValueError(f"method {m} appears in more than one result")
            merged["methods"][m] = v
    return merged


def write_outputs(result: dict, json_path: Path, out: Path) -> int:
    out.mkdir(parents=True, exist_ok=True)
    json_path.parent.mkdir(parents=True, exist_ok=True)
    json_path.write_text(json.dumps(result, indent=1))
    table = markdown(result)
    (out / "bench.md").write_text(table)
    from llaca.bench.plots import benchmark_figure, save

    save(benchmark_figure(result["tasks"], result["methods"]), out / "bench.png")
    print(table)
    print(f"wrote {json_path}, {out / 'bench.md'}, {out / 'bench.png'}")
    return 0
