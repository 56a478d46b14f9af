"""Accuracy against the number of corrections, and which group each wording of a question joins.

    python benchmarks/group_curves.py [--methods llaca+groups,llaca+groups+probe]
        [--families count,position,letter,choice,box,exists,unanswerable] [--per-family 48]
        [--wording one|paraphrased] [--eval-n 60] [--json F] [--plot F.png]

One simulated user teaches the families in sequence through the real store and the real
learning worker (in this process, the worker's defaults but for `--methods`): `--per-family`
corrections per family on fresh synthetic images of 64-128 px, in the app's buffers of 8.
After every buffer the served system answers `--eval-n` fresh images of the family being
taught, so each family gets a curve of accuracy against corrections (8, 16, ... 48).

`--wording paraphrased` words each buffer's questions by one of three paraphrases of the
family in turn (`PARAPHRASES`, this project's own; the family's usual question is the first),
as different users would. Served accuracy is then measured on the three taught wordings
(mixed) and on a fourth wording no one taught (`unseen`), and the routing table says which
group each wording's corrections joined, and where each wording is routed when asked.
Reported per method: the curves, the final accuracy of every family, the corrections needed
to reach 80% of the family's final accuracy under `llaca+groups` (measured in the same run),
forgetting (each family's best level minus its last), and the routing table.
"""

from __future__ import annotations

import argparse
import io
import json
import logging
import re
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feedback_store import FeedbackStore, NothingToTeachError  # noqa: E402
from llaca.config.settings import Settings  # noqa: E402
from llaca.learn.dataset import VQASample  # noqa: E402
from llaca.worker.loop import LearningWorker, WorkerConfig  # noqa: E402
from llaca.worker.policy import routed_hits, served_system  # noqa: E402
from llaca.world.heldout import heldout  # noqa: E402

SIZES = (64, 128)
BUFFER = 8
_OBJECT = re.compile(r"^Is there an? (.+?)\? Answer yes or no\.$")
_NAMED = re.compile(r"^What color is the (\w+)\? If it is not in the image, answer unanswerable\.$")
# Per family: three taught wordings (the first is the family's own question) and one unseen.
PARAPHRASES: dict[str, list[str]] = {
    "count": ["How many shapes are there?", "Count the shapes in the image.",
              "What is the number of shapes? Answer with a number.", "How many shapes can you see?"],
    "position": ["Where is the shape? Answer with top left, top right, bottom left or bottom right.",
                 "Where is the shape?", "In which quarter of the image is the shape?",
                 "Which corner of the picture is the shape in?"],
    "letter": ["What letter is written in the image?", "Which letter is shown?",
               "Read the letter in the picture. Answer with the letter only.", "What letter do you see?"],
    "box": ["Give the bounding box of the shape as [x1, y1, x2, y2] with coordinates between 0 and 1.",
            "Where exactly is the shape? Give [x1, y1, x2, y2] in 0-1 coordinates.",
            "Bounding box of the shape, as [x1, y1, x2, y2]?", "Locate the shape as [x1, y1, x2, y2]."],
    "exists": ["Is there a {}? Answer yes or no.", "Does the image contain a {}?",
               "Can you see a {} in the picture? Reply yes or no.", "Is a {} shown?"],
    "unanswerable": ["What color is the {}? If it is not in the image, answer unanswerable.",
                     "Which color does the {} have? Say unanswerable if there is none.",
                     "Tell me the color of the {}, or unanswerable if it is absent.",
                     "What is the {}'s color? If there is no {}, answer unanswerable."],
}


def reworded(sample: VQASample, family: str, k: int) -> VQASample:
    """`sample` asked with wording `k` of its family (0: as drawn)."""
    if k == 0 or family not in PARAPHRASES:
        return sample
    question, answer = sample.turns[0]
    template = PARAPHRASES[family][k]
    slot = None
    for pattern in (_OBJECT, _NAMED):
        m = pattern.match(question.replace("<image>", "").strip())
        if m:
            slot = m.group(1)
    text = template.format(*([slot] * template.count("{}"))) if "{}" in template else template
    return VQASample(f"{sample.id}-w{k}", sample.image, [(text, answer)], sample.task, dict(sample.meta))


def teach(store, family: str, n: int, seed: int, paraphrased: bool) -> str:
    """`n` corrections of `family` in buffers of `BUFFER`, each buffer in one wording."""
    session = store.start_session(client="group_curves")
    for i, s in enumerate(heldout(family, n, seed=seed, size=SIZES)):
        s = reworded(s, family, (i // BUFFER) % 3) if paraphrased else s
        png = io.BytesIO()
        s.image.save(png, format="PNG")
        q = store.record_user_message(session.id, s.question, image_bytes=png.getvalue())
        a = store.record_answer(session.id, q.id, "wrong", None, {})
        store.add_correction(session.id, a.id, s.answer, ready_threshold=BUFFER)
    try:
        store.mark_ready(session.id)
    except NothingToTeachError:
        pass
    return session.id


def eval_sets(family: str, n: int, seed: int, paraphrased: bool) -> dict[str, list[VQASample]]:
    drawn = heldout(family, n, seed=seed, size=SIZES)
    if not paraphrased:
        return {"taught": drawn}
    return {"taught": [reworded(s, family, i % 3) for i, s in enumerate(drawn)],
            "unseen": [reworded(s, family, 3) for s in drawn]}


def accuracy(lm, store, sets: dict[str, list]) -> dict[str, float]:
    _, system = served_system(store)
    hits = routed_hits(lm, system, list(sets.values()))
    return {k: round(100.0 * sum(h) / max(1, len(h)), 1) for k, h in zip(sets, hits)}


def routing_table(store, session_id: str, family: str, paraphrased: bool) -> dict:
    """Which groups the family's corrections joined, per wording, and where each wording routes."""
    _, system = served_system(store)
    words = PARAPHRASES.get(family, [None])[: 4 if paraphrased else 1]
    sample = heldout(family, 1, seed=99, size=SIZES)[0]
    joined: dict[str, set] = {}
    for b in store.session_buffers(session_id):
        for it in store.buffer_items(b.id):
            joined.setdefault(it.question, set()).add(it.group_id)
    out = {}
    for k in range(len(words)):
        q = reworded(sample, family, k).question
        key = next((t for t in joined if _same_wording(t, q)), None)
        out[f"wording {k}" + (" (unseen)" if k == 3 else "")] = {
            "question": q, "joined": sorted(g for g in joined.get(key, ()) if g), "routes_to": system.route(q) or "base"}
    return out


def _same_wording(a: str, b: str) -> bool:
    strip = lambda t: re.sub(r"\b(red|green|blue|yellow|purple|orange|circle|square|triangle|star)s?\b", "_", t)  # noqa: E731
    return strip(a) == strip(b)


def run_method(lm, method: str, families: list[str], per_family: int, eval_n: int, paraphrased: bool) -> dict:
    with tempfile.TemporaryDirectory(prefix="llaca-curves-") as tmp:
        store = FeedbackStore(tmp)
        worker = LearningWorker(WorkerConfig(Settings(data_dir=Path(tmp), learn_method=method)), store, lm=lm)
        curves, final_rows, table = {}, [], {}
        for k, family in enumerate(families):
            session = teach(store, family, per_family, seed=7000 + 97 * k, paraphrased=paraphrased)
            sets = eval_sets(family, eval_n, seed=8000 + 97 * k, paraphrased=paraphrased)
            points, taught = [], 0
            while worker.run_once():
                taught = min(per_family, taught + BUFFER)
                points.append({"corrections": taught, **accuracy(lm, store, sets)})
                print(f"{method:<22} {family:<13} {taught:>3} corrections: {points[-1]}", flush=True)
            curves[family] = points
            table[family] = routing_table(store, session, family, paraphrased)
            final_rows.append(family)
        final = {f: accuracy(lm, store, eval_sets(f, eval_n, seed=8000 + 97 * k, paraphrased=paraphrased))
                 for k, f in enumerate(families)}
        learned, total = store.learned_share()
        groups = store.group_counts()
        store.close()
    forgetting = {f: round(max(p["taught"] for p in curves[f]) - final[f]["taught"], 1) for f in families}
    return {"curves": curves, "final": final, "forgetting": forgetting, "learned": learned, "corrections": total,
            "groups": len(groups), "routing": table}


def to_reach(points: list[dict], level: float) -> int | None:
    """Corrections needed before the taught accuracy reaches `level` (None: never)."""
    return next((p["corrections"] for p in points if p["taught"] >= level), None)


def main(argv=None) -> int:
    import torch

    from llaca.model.llava import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/llava-tiny")
    ap.add_argument("--methods", default="llaca+groups,llaca+groups+probe")
    ap.add_argument("--families", default="count,position,letter,choice,box,exists,unanswerable")
    ap.add_argument("--per-family", type=int, default=48)
    ap.add_argument("--eval-n", type=int, default=60)
    ap.add_argument("--wording", choices=("one", "paraphrased"), default="one")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    ap.add_argument("--plot", type=Path, default=None, help="PNG of accuracy against corrections per family")
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.WARNING, format="%(name)s: %(message)s")
    logging.getLogger("llaca.worker.policy").setLevel(logging.INFO)  # each new wording's probe and decision
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device="cpu")
    families, methods = args.families.split(","), args.methods.split(",")
    paraphrased = args.wording == "paraphrased"
    results = {m: run_method(lm, m, families, args.per_family, args.eval_n, paraphrased) for m in methods}
    baseline = results[methods[0]]
    print(f"\n{args.per_family} corrections per family in buffers of {BUFFER}, wording {args.wording}; "
          f"accuracy (%) on {args.eval_n} fresh images; baseline {methods[0]} (same run)")
    head = "corrections " + " ".join(f"{p['corrections']:>5}" for p in baseline["curves"][families[0]])
    for f in families:
        level = 0.8 * baseline["final"][f]["taught"]
        print(f"\n{f}: {head}   to reach {level:.0f}%")
        for m in methods:
            pts = results[m]["curves"][f]
            extra = f"  unseen wording {results[m]['final'][f]['unseen']:.0f}" if paraphrased else ""
            print(f"  {m:<24} " + " ".join(f"{p['taught']:>5.0f}" for p in pts)
                  + f"   {to_reach(pts, level)}{extra}")
    for m in methods:
        r = results[m]
        print(f"\n{m}: {r['groups']} groups, learned {r['learned']}/{r['corrections']}, forgetting {r['forgetting']}")
        if paraphrased:
            for f, rows in r["routing"].items():
                print(f"  {f}: " + "; ".join(f"{k} -> joined {v['joined'] or '-'}, routes to {v['routes_to']}"
                                            for k, v in rows.items()))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"families": families, "methods": methods, "per_family": args.per_family,
                                         "wording": args.wording, "eval_n": args.eval_n, "results": results}, indent=1))
    if args.plot:
        from llaca.bench.plots import curves_figure, save

        save(curves_figure(families, {m: results[m]["curves"] for m in methods}), args.plot)
    return 0


if __name__ == "__main__":
    sys.exit(main())
