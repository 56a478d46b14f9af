"""CLI of the synthetic world: export datasets, build the tiny model, evaluate a model on a family.

    python -m llaca.world export --family count --n 200 --seed 1 --out DIR
    python -m llaca.world build --out models/llava-tiny
    python -m llaca.world evaluate --model models/llava-tiny --family color --n 500
    python -m llaca.world learnability --out benchmarks/results/learnability
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path

from llaca.config.settings import DEFAULT_MODEL

from .families import CONTINUAL_SEQUENCE, FAMILIES
from .tiny import TinyArch


def _size(text: str) -> int | tuple[int, int]:
    if "-" in text:
        lo, hi = text.split("-")
        return (int(lo), int(hi))
    return int(text)


def _share(text: str) -> float:
    value = float(text)
    if not 0.0 <= value <= 1.0:
        raise argparse.ArgumentTypeError(f"a share between 0 and 1, not {text}")
    return value


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m llaca.world", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    ex = sub.add_parser("export", help="write a family as a LLaVA-format folder")
    ex.add_argument("--family", required=True, choices=sorted(FAMILIES))
    ex.add_argument("--n", type=int, default=200)
    ex.add_argument("--seed", type=int, default=0)
    ex.add_argument("--size", type=_size, default=64, help="canvas side in px, or a range like 48-160")
    ex.add_argument("--out", type=Path, required=True)
    b = sub.add_parser("build", help="train the tiny LLaVA from scratch")
    b.add_argument("--out", type=Path, default=Path("models/llava-tiny"))
    b.add_argument("--steps", type=int, default=None, help="LLaVA-stage steps (default: BuildConfig's)")
    b.add_argument("--vision-steps", type=int, default=None, help="vision pre-training steps (0: skip the stage)")
    b.add_argument("--seed", type=int, default=0)
    b.add_argument("--threads", type=int, default=None)
    b.add_argument("--device", default="cpu", help="where to train (cpu, cuda); the committed model is built on cpu")
    b.add_argument("--mixed-precision", choices=("bf16", "no"), default="no",
                   help="no: plain fp32, as the committed model was built (default); "
                        "bf16: forward passes under bf16 autocast with fp32 weights, about 1.4x faster on a CPU with bf16")
    b.add_argument("--vision-hidden", type=int, default=None, help=f"vision tower width (default {TinyArch.vision_hidden})")
    b.add_argument("--vision-heads", type=int, default=None, help=f"vision tower attention heads (default {TinyArch.vision_heads})")
    b.add_argument("--named-color", type=_share, default=0.0,
                   help="share of training images also asked the colour of a shape named alone (default 0, the committed model)")
    ev = sub.add_parser("evaluate", help="accuracy of a model on fresh held-out samples of a family")
    ev.add_argument("--model", default=DEFAULT_MODEL)
    ev.add_argument("--family", required=True, choices=sorted(FAMILIES))
    ev.add_argument("--n", type=int, default=500)
    ev.add_argument("--seed", type=int, default=12345)
    ev.add_argument("--size", type=_size, default=64)
    ev.add_argument("--device", default=None)
    le = sub.add_parser("learnability", help="train one single-task LoRA per continual family and score it")
    le.add_argument("--model", default=DEFAULT_MODEL)
    le.add_argument("--families", default=",".join(CONTINUAL_SEQUENCE), help="comma-separated continual families")
    le.add_argument("--train-n", default="48,400", help="training-set sizes, comma-separated (default: 48,400)")
    le.add_argument("--eval-n", type=int, default=200, help="held-out samples per family and size (default: 200)")
    le.add_argument("--threads", type=int, default=None)
    le.add_argument("--device", default=None)
    le.add_argument("--out", type=Path, default=Path("benchmarks/out/learnability"))
    args = ap.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    if args.cmd == "export":
        from llaca.learn.dataset import write_folder

        from .heldout import heldout

        samples = heldout(args.family, args.n, seed=args.seed, size=args.size)
        path = write_folder(samples, args.out)
        print(f"wrote {len(samples)} {args.family} samples to {path}")
    elif args.cmd == "build":
        from .build import BuildConfig, build

        cfg = BuildConfig(seed=args.seed, threads=args.threads, device=args.device, mixed_precision=args.mixed_precision,
                          named_color=args.named_color)
        if args.vision_hidden is not None:
            cfg.arch.vision_hidden = args.vision_hidden
        if args.vision_heads is not None:
            cfg.arch.vision_heads = args.vision_heads
        if args.steps is not None:
            cfg.steps = args.steps
        if args.vision_steps is not None:
            cfg.vision.steps = args.vision_steps
        record = build(cfg, args.out)
        print(json.dumps(record, indent=1))
    elif args.cmd == "learnability":
        import torch

        from llaca.model.llava import load_model

        from .learnability import learnability, markdown, write_report

        if args.threads:
            torch.set_num_threads(args.threads)
        lm = load_model(args.model, device=args.device)
        report = learnability(lm, [f.strip() for f in args.families.split(",")],
                              [int(n) for n in args.train_n.split(",")], args.eval_n)
        report["model"] = args.model
        paths = write_report(report, args.out)
        print(markdown(report))
        print("wrote", *paths)
    else:
        from llaca.learn.evaluate import evaluate
        from llaca.model.llava import load_model

        from .heldout import heldout

        lm = load_model(args.model, device=args.device)
        samples = heldout(args.family, args.n, seed=args.seed, size=args.size)
        res = evaluate(lm.model, lm.processor, samples)
        print(f"{args.family}: {res.accuracy:.1f}% of {res.n} ({args.model})")
        if args.family == "describe":
            from llaca.learn.evaluate import caption_object_score

            score = sum(caption_object_score(p, s.answer) for p, s in zip(res.predictions, samples)) / len(samples)
            print(f"describe, object by object (name and quadrant): {100 * score:.1f}%")
    return 0


if __name__ == "__main__":
    sys.exit(main())
