"""The bench on LLaVA-format folders drawn by code that shares nothing with `llaca.world`.

Rehearses the external acceptance check: count, position and letter images drawn by plain PIL
code (`tests/other_drawing.py`: circles and squares, a system font), 48 training samples per
task and 200 test samples, written as LLaVA-format folders (`llaca.learn.dataset.write_folder`) and
run through the bench's command line exactly as a user would:

    python benchmarks/other_code_check.py --methods seq,llaca,llaca+replay,llaca+groups

Prints the bench's table; the diagonal of each method's matrix is what a 48-sample task
teaches, the last row what survives the sequence.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from llaca.learn.dataset import write_folder  # noqa: E402
from tests.other_drawing import other_code_continual  # noqa: E402

TASKS = ("count", "position", "letter")


def write_tasks(root: Path, train_n: int, test_n: int, sides: tuple[int, ...], seed: int) -> tuple[list[Path], list[Path]]:
    data, evals = [], []
    for k, fam in enumerate(TASKS):
        train = [s for i, side in enumerate(sides) for s in
                 other_code_continual(fam, train_n // len(sides) + (i < train_n % len(sides)), side, seed + k)]
        test = [s for i, side in enumerate(sides) for s in
                other_code_continual(fam, test_n // len(sides), side, seed + 100 + k)]
        for split, samples in (("train", train), ("test", test)):
            for i, s in enumerate(samples):  # one id per image: each canvas size's draw counts from 0
                s.id = f"{fam}-{split}-{i}"
        write_folder(train, root / fam)
        write_folder(test, root / f"{fam}_test")
        data.append(root / fam)
        evals.append(root / f"{fam}_test")
    return data, evals


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--methods", default="seq,llaca,llaca+replay,llaca+groups")
    ap.add_argument("--train-n", type=int, default=48)
    ap.add_argument("--test-n", type=int, default=200)
    ap.add_argument("--sides", default="64,96,128", help="canvas sizes the images are drawn at, in turn")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--out", type=Path, default=Path("benchmarks/out/other_code"))
    a, bench_args = ap.parse_known_args(argv)
    with tempfile.TemporaryDirectory(prefix="llaca-other-code-") as tmp:
        data, evals = write_tasks(Path(tmp), a.train_n, a.test_n, tuple(int(s) for s in a.sides.split(",")), a.seed)
        cmd = [sys.executable, "-m", "llaca.bench", "--methods", a.methods, "--data", *map(str, data),
               "--eval-data", *map(str, evals), "--out", str(a.out), *bench_args]
        print("$", " ".join(cmd), flush=True)
        return subprocess.call(cmd)


if __name__ == "__main__":
    raise SystemExit(main())
