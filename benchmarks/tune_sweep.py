"""Which tuner settings teach a 48-sample task best? A sweep over single-task LoRAs.

For each named setting (overrides of `TuneConfig`'s defaults), each continual family and each
N, trains one LoRA from the base model with method `seq` on N fresh samples and scores it on
fresh held-out samples at 64 px and 96-128 px, exactly as the learnability report does. The
first setting is the baseline (the current defaults); every row prints its mean accuracy
beside it as a ratio, measured in the same run.

    python benchmarks/tune_sweep.py --families count,letter --ns 48 \
        --setting base: --setting lr2e-3:lr=2e-3 --setting proj:train_projector=1
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import fields
from pathlib import Path

import torch

from llaca.learn.tuner import TuneConfig
from llaca.model.llava import load_model
from llaca.world.families import CONTINUAL_SEQUENCE
from llaca.world.learnability import learnability


def parse_setting(text: str) -> tuple[str, dict]:
    """"name:key=val,key=val" -> (name, overrides), values typed like the TuneConfig field."""
    name, _, rest = text.partition(":")
    types = {f.name: f.type for f in fields(TuneConfig)}
    over = {}
    for kv in filter(None, rest.split(",")):
        key, _, val = kv.partition("=")
        if key not in types:
            raise SystemExit(f"unknown TuneConfig field {key!r}")
        t = str(types[key])
        over[key] = (val not in ("0", "false", "False")) if "bool" in t else int(val) if t.startswith("int") else \
            float(val) if "float" in t else val
    return name, over


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="models/llava-tiny")
    ap.add_argument("--families", default=",".join(CONTINUAL_SEQUENCE))
    ap.add_argument("--ns", default="48,400")
    ap.add_argument("--eval-n", type=int, default=200)
    ap.add_argument("--setting", action="append", default=[], help="name:key=val,... (first = baseline)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/tune_sweep.json"))
    a = ap.parse_args(argv)
    torch.set_num_threads(a.threads)
    lm = load_model(a.model)
    settings = [parse_setting(s) for s in (a.setting or ["defaults:"])]
    fams, ns = a.families.split(","), [int(n) for n in a.ns.split(",")]
    results = {}
    for name, over in settings:
        t0 = time.perf_counter()
        rep = learnability(lm, fams, ns, a.eval_n, TuneConfig(method="seq", **over), progress=False)
        cells = {f: {k: v for k, v in row.items() if k != "zero_shot"} for f, row in rep["families"].items()}
        accs = [v for row in cells.values() for r in row.values() for k, v in r.items() if k != "seconds"]
        results[name] = {"overrides": over, "families": cells, "mean": round(sum(accs) / len(accs), 2),
                         "seconds": round(time.perf_counter() - t0, 1)}
        base = results[settings[0][0]]["mean"]
        print(f"{name:>16} mean {results[name]['mean']:5.1f}  x{results[name]['mean'] / max(base, 1e-9):.3f} of "
              f"{settings[0][0]}  ({results[name]['seconds']} s)  " + json.dumps(cells), flush=True)
        a.out.parent.mkdir(parents=True, exist_ok=True)
        a.out.write_text(json.dumps({"families": fams, "ns": ns, "eval_n": a.eval_n, "results": results}, indent=1))


if __name__ == "__main__":
    main()
