"""Routing measurement for the instruction codebook (llaca/groups/codebook.py).

    python benchmarks/routing.py [--train 48] [--heldout 200] [--matchers all] [--out benchmarks/out/routing]

A codebook gets one group per continual family (`--taught`, default the continual sequence),
each from `--train` training questions (seed 0), as a user's buffer would bring. Then:

  * routing: `--heldout` held-out questions (seed 10000) of EVERY family in `FAMILIES` are
    routed; a taught family must go to its own group, every other family to the base model
    (None). Families of the base-training branch that this checkout's `FAMILIES` lacks
    (`objects`, `find`, `edges`) are added from copies of their question templates;
  * matching at training time: a new buffer (`--train` questions, seed 20000) of each taught
    family must match its own group and no other; a buffer of each other family must match none;
  * speed: mean time of one `route()` call, uncached and cached (process CPU time, since this
    machine is shared; wall time beside it in the JSON).

For each matcher it prints a confusion table (rows: true family, columns: routed group or
base) and the accuracy, and writes Markdown and JSON to `--out`. Exits 1 if the first matcher
(the default, `nearest`) routes or matches anything wrong.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llaca.groups.codebook import InstructionCodebook  # noqa: E402
from llaca.world.families import CONTINUAL_SEQUENCE, FAMILIES, generate  # noqa: E402
from llaca.world.palette import COLOR_NAMES, LETTERS, SHAPES  # noqa: E402

TRAIN_SEED, HELDOUT_SEED, BUFFER_SEED = 0, 10_000, 20_000
BASE = "base"

# name -> InstructionCodebook keyword arguments
MATCHERS: dict[str, dict] = {
    "nearest": {},  # the default: slots masked, codebook IDF, nearest neighbour, margin
    "nearest-unmasked": {"mask_slots": False},
    "released@0.30": {"matcher": "released", "threshold": 0.30},
    "released@0.90": {"matcher": "released", "threshold": 0.90},
    "released-last-line@0.30": {"matcher": "released", "threshold": 0.30, "last_line": True},
    "released-last-line@0.90": {"matcher": "released", "threshold": 0.90, "last_line": True},
    "released-masked@0.90": {"matcher": "released", "threshold": 0.90, "mask_slots": True},
}


def _objects(rng: random.Random) -> str:
    return "How many objects are in the image?"


def _find(rng: random.Random) -> str:
    kind = rng.random()
    if kind < 0.3:
        return f"Find the letter {rng.choice(LETTERS)}."
    if kind < 0.5:
        return f"Find the {rng.choice(SHAPES)}."
    return f"Find the {rng.choice(COLOR_NAMES)} {rng.choice(SHAPES)}."


def _edges(rng: random.Random) -> str:
    target = f"letter {rng.choice(LETTERS)}" if rng.random() < 0.3 else f"{rng.choice(COLOR_NAMES)} {rng.choice(SHAPES)}"
    return f"Where are the edges of the {target}?"


# Question templates of base families that the base-training branch adds (copied from it);
# used only while this checkout's FAMILIES lacks them. They must all route to the base model.
EXTRA_BASE = {"objects": _objects, "find": _find, "edges": _edges}


def questions(family: str, n: int, seed: int) -> list[str]:
    if family in FAMILIES:
        return [item.turns[0][0] for item in generate(family, n, seed)]
    rng = random.Random(f"{family}:{seed}")
    return [EXTRA_BASE[family](rng) for _ in range(n)]


def all_families(taught: list[str]) -> list[str]:
    fams = list(FAMILIES) + [f for f in EXTRA_BASE if f not in FAMILIES]
    return taught + [f for f in fams if f not in taught]


def evaluate(name: str, kwargs: dict, taught: list[str], families: list[str], n_train: int, n_heldout: int) -> dict:
    book = InstructionCodebook(**kwargs)
    group_of = {f: book.add(questions(f, n_train, TRAIN_SEED), name=f) for f in taught}
    family_of = {g: f for f, g in group_of.items()}
    columns = taught + [BASE]
    confusion: dict[str, dict[str, int]] = {}
    t0 = time.perf_counter()
    for fam in families:
        row = dict.fromkeys(columns, 0)
        for q in questions(fam, n_heldout, HELDOUT_SEED):
            g = book.route(q)
            row[BASE if g is None else family_of[g]] += 1
        confusion[fam] = row
    route_s = time.perf_counter() - t0
    correct = sum(confusion[f][f if f in taught else BASE] for f in families)
    total = sum(sum(r.values()) for r in confusion.values())
    per_family = {f: confusion[f][f if f in taught else BASE] / sum(confusion[f].values()) for f in families}

    matching = {}
    for fam in families:
        g, score = book.match(questions(fam, n_train, BUFFER_SEED))
        expected = group_of.get(fam)
        matching[fam] = {"matched": BASE if g is None else family_of[g], "score": round(score, 4), "ok": g == expected}

    # score gaps: per family, the lowest own-group score and the highest score of any other group
    gaps = {}
    for fam in families:
        own, other = [], []
        for q in set(questions(fam, n_heldout, HELDOUT_SEED)):
            s = book.scores(q)
            mine = group_of.get(fam)
            if mine is not None:
                own.append(s[mine])
            other.append(max((v for g, v in s.items() if g != mine), default=0.0))
        gaps[fam] = {"min_own": round(min(own), 4) if own else None, "max_other": round(max(other), 4)}
    return {
        "matcher": name, "settings": book.settings(), "accuracy": correct / total, "correct": correct, "total": total,
        "per_family": per_family, "confusion": confusion, "columns": columns, "matching": matching,
        "matching_ok": all(m["ok"] for m in matching.values()), "scores": gaps, "route_wall_s": route_s,
    }


def route_timing(kwargs: dict, taught: list[str], families: list[str], n_train: int, n: int, repeats: int = 5) -> dict:
    """Mean time of one route() call over `n` questions of every family, uncached (the cache is
    cleared before each call) and cached. CPU time of this process is the measure (this
    machine is shared); wall time is reported beside it."""
    book = InstructionCodebook(**kwargs)
    for f in taught:
        book.add(questions(f, n_train, TRAIN_SEED), name=f)
    qs = [q for fam in families for q in questions(fam, n, HELDOUT_SEED + 1)]

    def uncached() -> None:
        for q in qs:
            book.clear_cache()
            book.route(q)

    def cached() -> None:
        for q in qs:
            book.route(q)

    out = {"questions": len(qs), "repeats": repeats}
    for label, fn in (("uncached", uncached), ("cached", cached)):
        fn()  # warm-up (and, for the cached run, fills the cache)
        cpu, wall = [], []
        for _ in range(repeats):
            c, w = time.process_time(), time.perf_counter()
            fn()
            cpu.append((time.process_time() - c) / len(qs) * 1e6)
            wall.append((time.perf_counter() - w) / len(qs) * 1e6)
        out[f"{label}_cpu_us"] = statistics.median(cpu)
        out[f"{label}_wall_us"] = statistics.median(wall)
    return out


def table(result: dict) -> str:
    cols = result["columns"]
    head = "| true family | " + " | ".join(cols) + " | accuracy |"
    lines = [head, "|" + "---|" * (len(cols) + 2)]
    for fam, row in result["confusion"].items():
        cells = [f"**{row[c]}**" if c == fam or (c == BASE and fam not in cols) else str(row[c]) for c in cols]
        lines.append(f"| {fam} | " + " | ".join(cells) + f" | {result['per_family'][fam]:.1%} |")
    return "\n".join(lines)


def markdown(results: list[dict], args, command: str) -> str:
    out = [
        "# Instruction codebook routing",
        "",
        f"    {command}",
        "",
        f"One group per taught family ({', '.join(args.taught)}), each added from {args.train} training questions "
        f"(seed {TRAIN_SEED}); {args.heldout} held-out questions (seed {HELDOUT_SEED}) of every family routed. "
        "Taught families must route to their own group, all others to the base model. "
        "`objects`, `find`, `edges` come from copies of the base-training branch's templates when this "
        "checkout's `FAMILIES` lacks them.",
        "",
        "Route time: process CPU time of one `route()` call, mean over 50 questions of every family, median of "
        "5 runs (the cache cleared before each uncached call).",
        "",
        "| matcher | settings | routing accuracy | training-time matching | route uncached | route cached |",
        "|---|---|---|---|---|---|",
    ]
    for r in results:
        s = r["settings"]
        desc = f"{s['name']}, threshold {s['threshold']}, margin {s['margin']}, masked {s['mask_slots']}, last line {s['last_line']}"
        bad = [f"{f}->{m['matched']}" for f, m in r["matching"].items() if not m["ok"]]
        t = r.get("timing")
        times = f"{t['uncached_cpu_us']:.1f} us | {t['cached_cpu_us']:.1f} us" if t else "- | -"
        out.append(f"| {r['matcher']} | {desc} | {r['accuracy']:.2%} ({r['correct']}/{r['total']}) | "
                   + ("all correct" if not bad else "wrong: " + ", ".join(bad)) + f" | {times} |")
    for r in results:
        out += ["", f"## {r['matcher']}", "", table(r), "", "Training-time matching of a new buffer (score of the best group):", ""]
        out.append(", ".join(f"{f} -> {m['matched']} ({m['score']:.2f}){'' if m['ok'] else ' WRONG'}" for f, m in r["matching"].items()))
        out += ["", "Scores on held-out questions (lowest own-group / highest other-group):", ""]
        out.append(", ".join(f"{f} {g['min_own'] if g['min_own'] is not None else '-'} / {g['max_other']}" for f, g in r["scores"].items()))
    return "\n".join(out) + "\n"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--taught", default=",".join(CONTINUAL_SEQUENCE), help="families taught as groups")
    ap.add_argument("--train", type=int, default=48, help="training questions per taught family")
    ap.add_argument("--heldout", type=int, default=200, help="held-out questions per family")
    ap.add_argument("--matchers", default="all", help=f"comma list of: {', '.join(MATCHERS)}")
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/routing"), help="writes OUT.md and OUT.json")
    ap.add_argument("--no-timing", action="store_true")
    args = ap.parse_args(argv)
    args.taught = [f.strip() for f in args.taught.split(",") if f.strip()]
    unknown = [f for f in args.taught if f not in FAMILIES]
    if unknown:
        ap.error(f"unknown families: {unknown}")
    names = list(MATCHERS) if args.matchers == "all" else [m.strip() for m in args.matchers.split(",")]
    for n in names:
        if n not in MATCHERS:
            ap.error(f"unknown matcher {n!r}; choose from {', '.join(MATCHERS)}")
    families = all_families(args.taught)
    command = "python benchmarks/routing.py " + " ".join(argv if argv is not None else sys.argv[1:])

    results = []
    for name in names:
        r = evaluate(name, MATCHERS[name], args.taught, families, args.train, args.heldout)
        results.append(r)
        print(f"\n== {name}: routing accuracy {r['accuracy']:.2%} ({r['correct']}/{r['total']}), "
              f"training-time matching {'all correct' if r['matching_ok'] else 'WRONG'} ({r['route_wall_s']:.1f} s)")
        print(table(r))
        if not args.no_timing:
            r["timing"] = t = route_timing(MATCHERS[name], args.taught, families, args.train, 50)
            print(f"route time per question (CPU): uncached {t['uncached_cpu_us']:.1f} us, cached {t['cached_cpu_us']:.1f} us "
                  f"(wall {t['uncached_wall_us']:.1f} / {t['cached_wall_us']:.1f} us)")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".md").write_text(markdown(results, args, command.strip()))
    args.out.with_suffix(".json").write_text(json.dumps(
        {"command": command.strip(), "taught": args.taught, "families": families, "train": args.train,
         "heldout": args.heldout, "results": results}, indent=1))
    print(f"\nwrote {args.out.with_suffix('.md')} and .json")
    return 0 if all(r["accuracy"] == 1.0 and r["matching_ok"] for r in results[:1]) else 1


if __name__ == "__main__":
    sys.exit(main())
