"""What the base model knows of each continual family's concept, asked in its own base words.

A continual task teaches a new instruction format on top of a concept the base model already
has (testbed v2). This script measures that concept on the continual family's own images, with
the base questions the model was trained on, so a learnability score can be read against the
ceiling the base sets:

- count:        "How many objects are in the image?" on `count` images, exact;
- position, letter: "Describe the image." on their images, the caption exact (it names the
                object and its quadrant);
- box:          the object's edges ("Where are the edges of the red star?"), IoU > 0.5;
- exists:       "Is there a red star in the picture?" with the asked object, yes or no right;
- unanswerable: the same with the asked shape named alone, yes or no right;
- choice:       "Is there a star in the picture?" with the asked shape named alone: right if the
                answer names it with its true colour ("Yes, there is a red star ..."): which
                colour goes with the shape, asked in words both builds were trained on (the
                option letter is the format the task teaches).

    python benchmarks/concept_ceiling.py --threads 2 --n 200 --out benchmarks/results/concept_ceiling
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llaca.config.settings import DEFAULT_MODEL  # noqa: E402
from llaca.learn.dataset import VQASample  # noqa: E402
from llaca.learn.evaluate import generate_answers, is_correct  # noqa: E402
from llaca.model.llava import load_model  # noqa: E402
from llaca.world.families import (  # noqa: E402
    CONTINUAL_SEQUENCE,
    QUESTIONS,
    caption,
    count_answer,
    edges_answer,
    edges_question,
    generate,
    presence_answer,
    presence_question,
)
from llaca.world.learnability import EVAL_SIZES  # noqa: E402

FAMILIES = CONTINUAL_SEQUENCE


def _yes(text: str) -> bool:
    return text.strip().lower().startswith("yes")


def probes(family: str, item) -> list[tuple[str, str]]:
    """The base (question, reference) pairs that test `family`'s concept on `item`'s image."""
    scene, question = item.scene, item.turns[0][0]
    if family == "count":
        return [(QUESTIONS["objects"], count_answer(len(scene.objects)))]
    if family in ("position", "letter"):
        return [(QUESTIONS["describe"], caption(scene))]
    if family == "box":
        obj = scene.objects[0]
        return [(edges_question(obj), edges_answer(scene, obj))]
    if family == "exists":
        target = re.match(r"Is there an? (\w+ \w+)\?", question).group(1)
        return [(presence_question(target), presence_answer(scene, target))]
    if family == "unanswerable":
        target = re.match(r"What color is the (\w+)\?", question).group(1)
        return [(presence_question(target), presence_answer(scene, target))]
    if family == "choice":
        shape = re.match(r"What color is the (\w+)\?", question).group(1)
        return [(presence_question(shape), presence_answer(scene, shape))]
    raise ValueError(f"no concept probe for {family!r}")


def right(family: str, prediction: str, reference: str) -> bool:
    if family in ("exists", "unanswerable"):
        return _yes(prediction) == _yes(reference)
    if family == "choice":
        named = re.match(r"Yes, there is an? (\w+ \w+)", prediction.strip())
        return named is not None and named.group(1) == re.match(r"Yes, there is an? (\w+ \w+)", reference).group(1)
    return is_correct(prediction, reference)


def ceiling(lm, family: str, n: int, size, seed: int) -> float:
    """% of `n` fresh `family` images whose concept the base model gets right."""
    items = generate(family, n, seed=seed, size=size)
    asked = [probes(family, it) for it in items]
    flat = [VQASample(f"{family}-{i}-{j}", it.image, [qa], family)
            for i, (it, qas) in enumerate(zip(items, asked)) for j, qa in enumerate(qas)]
    predictions = iter(generate_answers(lm.model, lm.processor, flat))
    ok = [all(right(family, next(predictions), ref) for _, ref in qas) for qas in asked]
    return round(100.0 * sum(ok) / len(ok), 1)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=DEFAULT_MODEL)
    ap.add_argument("--families", default=",".join(FAMILIES))
    ap.add_argument("--n", type=int, default=200, help="fresh images per family and size (default: 200)")
    ap.add_argument("--seed", type=int, default=20_261)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/concept_ceiling"))
    args = ap.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    lm = load_model(args.model)
    table = {f: {label: ceiling(lm, f, args.n, size, args.seed) for label, size in EVAL_SIZES}
             for f in args.families.split(",")}
    lines = ["| family | base concept 64px | base concept 96-128px |", "|---|---|---|"]
    lines += [f"| {f} | {row['64px']} | {row['96-128px']} |" for f, row in table.items()]
    md = "\n".join(lines) + f"\n\n{args.n} fresh images per family and size; model {args.model}.\n"
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "concept_ceiling.json").write_text(json.dumps({"model": args.model, "n": args.n, "table": table}, indent=1))
    (args.out / "concept_ceiling.md").write_text(md)
    print(md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
