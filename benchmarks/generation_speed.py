"""Greedy generation speed of the embedded model on one CPU core, against a baseline model.

Batch 1, greedy, a fixed number of new tokens (end-of-sequence is suppressed so every run
decodes the same length), the same images and prompts for every model; median over
--repeats of the tokens/s of one answer. The baseline is measured in the same run: by
default the tiny model as committed at --baseline-rev (extracted from git into a temporary
folder), so the ratio says what the rebuild cost in speed.

    python benchmarks/generation_speed.py                      # models/llava-tiny vs its previous build
    python benchmarks/generation_speed.py --baseline models/other --threads 1 --tokens 64
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from llaca.model.chat import messages_for  # noqa: E402
from llaca.model.llava import load_model  # noqa: E402
from llaca.world.heldout import heldout  # noqa: E402


def extract_model(rev: str, into: Path) -> Path:
    """The files of models/llava-tiny at git revision `rev`, written under `into`."""
    names = subprocess.run(["git", "ls-tree", "--name-only", f"{rev}:models/llava-tiny"], cwd=ROOT,
                           capture_output=True, text=True, check=True).stdout.split()
    for name in names:
        blob = subprocess.run(["git", "show", f"{rev}:models/llava-tiny/{name}"], cwd=ROOT, capture_output=True, check=True)
        (into / name).write_bytes(blob.stdout)
    return into


@torch.no_grad()
def tokens_per_second(path: Path, tokens: int, repeats: int) -> float:
    lm = load_model(path, device="cpu")
    samples = heldout("describe", repeats + 1, seed=777)
    rates = []
    for k, s in enumerate(samples):
        prompt = lm.processor.apply_chat_template(messages_for([(s.question, None)]), add_generation_prompt=True)
        inputs = lm.processor(images=s.image, text=prompt, return_tensors="pt")
        t0 = time.perf_counter()
        out = lm.model.generate(**inputs, max_new_tokens=tokens, min_new_tokens=tokens, do_sample=False)
        dt = time.perf_counter() - t0
        assert out.shape[1] - inputs["input_ids"].shape[1] == tokens
        if k:  # the first answer warms up
            rates.append(tokens / dt)
    return statistics.median(rates)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=ROOT / "models" / "llava-tiny", help="the model measured (default: models/llava-tiny)")
    ap.add_argument("--baseline", type=Path, default=None, help="baseline model folder (default: the model at --baseline-rev)")
    ap.add_argument("--baseline-rev", default="c628efd", help="git revision of the baseline tiny model (default: c628efd, the previous build)")
    ap.add_argument("--tokens", type=int, default=64, help="new tokens per answer (default: 64)")
    ap.add_argument("--repeats", type=int, default=9, help="timed answers per model (default: 9)")
    ap.add_argument("--threads", type=int, default=1, help="torch CPU threads (default: 1, one core)")
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)
    with tempfile.TemporaryDirectory(prefix="llaca-genspeed-") as tmp:
        baseline = args.baseline or extract_model(args.baseline_rev, Path(tmp))
        base_rate = tokens_per_second(baseline, args.tokens, args.repeats)
        rate = tokens_per_second(args.model, args.tokens, args.repeats)
    label = str(args.baseline) if args.baseline else f"models/llava-tiny at {args.baseline_rev}"
    print(f"greedy generation, batch 1, {args.tokens} new tokens, {args.threads} thread(s), median of {args.repeats}")
    print(f"  baseline ({label}): {base_rate:7.1f} tokens/s   1.00")
    print(f"  {args.model.name} (this build):            {rate:7.1f} tokens/s   {rate / base_rate:.2f}")
    print(f"  budget 300 tokens/s: {'met' if rate >= 300 else 'MISSED'} ({rate / 300:.2f}x)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
