"""Measure the learning worker's settings for online learning with instruction groups.

    python benchmarks/worker_defaults.py [--families position,count,letter,exists] [--per-family 48]
        [--configs "buffer=8 steps=80 lr=3e-4" "buffer=16 steps=120 lr=1e-3" ...] [--json F]

For each configuration, one simulated user teaches the families in sequence through the real
store and the real worker (in this process, the app's default learn method unless `method=`): `--per-family` corrections per
family on fresh synthetic images of 64-128 px, in buffers of `buffer`; the worker learns every
buffer as it fills. Then the served routed system answers fresh images of every family and of
the base families (colour, shape). Reported per configuration: accuracy per family, the base
families against the base model measured in the same run, the share of corrections learned
by a promoted version, versions promoted and rejected, and worker seconds per buffer.

A configuration is a list of `key=value`: buffer, steps, lr, heldout (held-out share),
replay (share of each batch replayed from the group's learned corrections; `pool`: the pool's
own share), batch and method (a group method of `llaca.config.methods`); what a configuration does not set is the worker's default.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from feedback_store import FeedbackStore, NothingToTeachError  # noqa: E402
from llaca.config.settings import Settings  # noqa: E402
from llaca.worker.loop import LearningWorker, WorkerConfig  # noqa: E402
from llaca.worker.policy import routed_hits, served_system  # noqa: E402
from llaca.world.heldout import heldout  # noqa: E402

SIZES = (64, 128)
DEFAULT_CONFIGS = ("", "lr=1e-3", "steps=120", "replay=pool", "buffer=16 steps=120")


KINDS = {"buffer": int, "steps": int, "lr": float, "heldout": float, "replay": str, "batch": int, "method": str}


def parse_config(text: str) -> dict:
    """`key=value ...` over the worker's defaults (the app's buffer size, `Settings`, `WorkerConfig`)."""
    from dataclasses import fields

    from llaca.worker.loop import WorkerConfig

    defaults = {f.name: f.default for f in fields(WorkerConfig)}
    settings = Settings()
    out = {"buffer": settings.buffer_size, "steps": settings.learn_steps, "lr": defaults["lr"],
           "heldout": defaults["heldout_fraction"], "replay": str(defaults["group_replay"] or "pool"),
           "batch": defaults["batch_size"], "method": settings.learn_method}
    for part in text.split():
        key, _, value = part.partition("=")
        if key not in KINDS:
            raise SystemExit(f"unknown setting {key!r} in {text!r}; known: {', '.join(KINDS)}")
        out[key] = KINDS[key](value)
    return out


def teach(store, family: str, n: int, buffer: int, seed: int) -> None:
    """`n` corrections of `family` (fresh images) from one session, in buffers of `buffer`."""
    import io

    session = store.start_session(client="worker_defaults")
    for s in heldout(family, n, seed=seed, size=SIZES):
        png = io.BytesIO()
        s.image.save(png, format="PNG")
        q = store.record_user_message(session.id, s.question, image_bytes=png.getvalue())
        a = store.record_answer(session.id, q.id, "wrong", None, {})
        store.add_correction(session.id, a.id, s.answer, ready_threshold=buffer)
    try:
        store.mark_ready(session.id)  # a last partial buffer
    except NothingToTeachError:  # the corrections filled whole buffers
        pass


def run_config(lm, cfg: dict, families: list[str], per_family: int, eval_n: int, base: dict) -> dict:
    with tempfile.TemporaryDirectory(prefix="llaca-defaults-") as tmp:
        store = FeedbackStore(tmp)
        worker = LearningWorker(WorkerConfig(
            Settings(data_dir=Path(tmp), learn_method=cfg["method"], learn_steps=cfg["steps"]), lr=cfg["lr"],
            heldout_fraction=cfg["heldout"], batch_size=cfg["batch"],
            group_replay=None if cfg["replay"] == "pool" else float(cfg["replay"])), store, lm=lm)
        t0, buffers, after = time.perf_counter(), 0, []
        for k, family in enumerate(families):
            teach(store, family, per_family, cfg["buffer"], seed=5000 + 97 * k)
            while worker.run_once():
                buffers += 1
            after.append(score(lm, store, families[: k + 1], eval_n))
        seconds = time.perf_counter() - t0
        final = score(lm, store, families + ["color", "shape"], eval_n)
        learned, total = store.learned_share()
        statuses = [a.status for a in store.list_adapters()]
        store.close()
    forgetting = {f: round(max(row[f] for row in after if f in row) - final[f], 1) for f in families}
    return {"config": cfg, "accuracy": final, "base": base, "forgetting": forgetting,
            "learned": learned, "corrections": total, "promoted": sum(s != "rejected" for s in statuses),
            "rejected": statuses.count("rejected"), "buffers": buffers, "seconds_per_buffer": round(seconds / max(1, buffers), 1)}


def score(lm, store, families: list[str], n: int) -> dict:
    _, system = served_system(store)
    sets = [heldout(f, n, seed=424242 + k, size=SIZES) for k, f in enumerate(families)]
    return {f: round(100.0 * sum(h) / len(h), 1) for f, h in zip(families, routed_hits(lm, system, sets))}


def main(argv=None) -> int:
    import torch

    from llaca.groups.system import RoutedSystem
    from llaca.model.llava import load_model

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/llava-tiny")
    ap.add_argument("--families", default="position,count,letter,exists")
    ap.add_argument("--per-family", type=int, default=48)
    ap.add_argument("--eval-n", type=int, default=100)
    ap.add_argument("--configs", nargs="+", default=list(DEFAULT_CONFIGS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    lm = load_model(args.model, device="cpu")
    families = args.families.split(",")
    base_sets = [heldout(f, args.eval_n, seed=424242 + 10 + k, size=SIZES) for k, f in enumerate(("color", "shape"))]
    base = {f: round(100.0 * sum(h) / len(h), 1)
            for f, h in zip(("color", "shape"), routed_hits(lm, RoutedSystem.empty(), base_sets))}
    results = []
    for text in args.configs:
        r = run_config(lm, parse_config(text), families, args.per_family, args.eval_n, base)
        text = text or "defaults"
        results.append({"label": text, **r})
        acc = " ".join(f"{f} {r['accuracy'][f]:.0f}" for f in families + ["color", "shape"])
        print(f"{text:<40} {acc} | learned {r['learned']}/{r['corrections']} | promoted {r['promoted']} rejected "
              f"{r['rejected']} | {r['seconds_per_buffer']} s/buffer | forgetting {r['forgetting']}", flush=True)
    print(f"\nbase model (same run): colour {base['color']:.0f}, shape {base['shape']:.0f}; "
          f"{args.per_family} corrections per family, {args.eval_n} fresh {SIZES[0]}-{SIZES[1]} px images per family")
    if args.json:
        args.json.write_text(json.dumps({"families": families, "per_family": args.per_family, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
