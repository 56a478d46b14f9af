"""The continual benchmark CLI runs every method end to end and writes its results; runs merge."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_bench_runs_every_method_learns_the_tasks_and_merges(tmp_path, capsys):
    """One `--methods all` run on the three --quick tasks, few steps at a higher learning rate (CI is
    short): every method lands in the JSON, the table and the plot; the tasks are really learned;
    the run's result split in two merges back into the same result; a bad name is refused."""
    from llaca.bench.cli import main
    from llaca.bench.continual import METHODS

    out = tmp_path / "bench"
    r = subprocess.run(
        [sys.executable, "-m", "llaca.bench", "--quick", "--methods", "all", "--steps", "16", "--lr", "3e-3",
         "--batch-size", "8", "--train-n", "32", "--eval-n", "10", "--replay-per-task", "4",
         "--json", str(out / "r.json"), "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "r.json").read_text())
    assert result["tasks"] == ["count", "position", "letter"]
    assert list(result["methods"]) == list(METHODS)
    for m, res in result["methods"].items():
        assert set(res) >= {"avg_acc", "forgetting", "bwt", "new_acc", "matrix", "seconds"}, m
        rows = 1 if m == "joint" else 3
        assert len(res["matrix"]) == rows and all(len(row) == 3 for row in res["matrix"]), m
        assert all(0 <= v <= 100 for row in res["matrix"] for v in row), m
    # the tasks are really learned (zero-shot the base model answers none of these formats)
    assert max(result["zero_shot"]) < 20, result["zero_shot"]
    assert max(res["new_acc"] for res in result["methods"].values() if res["new_acc"] is not None) >= 60
    assert result["methods"]["llaca"]["alpha_mean"] is not None
    assert result["methods"]["joint"]["forgetting"] is None
    assert [g["group"] for g in result["methods"]["llaca+groups"]["groups"]] == ["g1", "g2", "g3"]
    table = (out / "bench.md").read_text()
    assert table.startswith("Tasks: count, position, letter")
    assert all(f"| {m} |" in table for m in METHODS)
    assert (out / "bench.png").stat().st_size > 10_000

    # --merge: the same run written as two results (as one process per method would) merges back
    parts = []
    for k, names in enumerate((METHODS[:5], METHODS[5:])):
        part = {**result, "methods": {m: result["methods"][m] for m in names}}
        parts.append(tmp_path / f"part{k}.json")
        parts[-1].write_text(json.dumps(part))
    merged = tmp_path / "merged"
    assert main(["--merge", *map(str, parts), "--out", str(merged)]) == 0
    assert json.loads((merged / "bench.json").read_text()) == result
    assert (merged / "bench.md").read_text() == table and (merged / "bench.png").stat().st_size > 10_000
    with pytest.raises(SystemExit) as exit_:  # a method in two results is refused
        main(["--merge", str(parts[0]), str(parts[0]), "--out", str(tmp_path / "twice")])
    assert exit_.value.code == 2 and "appears in more than one result" in capsys.readouterr().err

    with pytest.raises(SystemExit) as exit_:
        main(["--methods", "seq,nope"])
    assert exit_.value.code == 2 and "unknown method(s) nope" in capsys.readouterr().err
