"""The continual benchmark CLI runs end to end (`--quick`, as CI runs it) and writes its results."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from tests.conftest import ROOT


@pytest.mark.slow
def test_bench_quick_writes_json_table_and_plot(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run(
        [sys.executable, "-m", "llaca.bench", "--quick", "--methods", "seq,llaca", "--json", str(out / "r.json"),
         "--out", str(out)],
        cwd=ROOT, capture_output=True, text=True, timeout=900,
    )
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((out / "r.json").read_text())
    assert result["tasks"] == ["count", "position", "letter"]
    for m in ("seq", "llaca"):
        res = result["methods"][m]
        assert set(res) >= {"avg_acc", "forgetting", "bwt", "new_acc", "matrix", "seconds"}
        assert len(res["matrix"]) == 3 and all(len(row) == 3 for row in res["matrix"])
        assert all(0 <= v <= 100 for row in res["matrix"] for v in row)
    assert result["methods"]["seq"]["new_acc"] > 40  # the tasks are really learned
    assert result["methods"]["llaca"]["alpha_mean"] is not None
    assert (out / "bench.md").read_text().startswith("Tasks: count, position, letter")
    assert (out / "bench.png").stat().st_size > 10_000


@pytest.mark.slow
def test_bench_quick_accepts_every_method_and_merges(tmp_path):
    """Every method runs under --quick (a few steps here, to keep CI short); runs merge into one result."""
    from llaca.bench.continual import METHODS

    outs = []
    for k, methods in enumerate((METHODS[:4], METHODS[4:])):
        out = tmp_path / f"part{k}"
        r = subprocess.run(
            [sys.executable, "-m", "llaca.bench", "--quick", "--methods", ",".join(methods), "--steps", "4",
             "--train-n", "16", "--eval-n", "6", "--replay-per-task", "4", "--json", str(out / "r.json"), "--out", str(out)],
            cwd=ROOT, capture_output=True, text=True, timeout=900,
        )
        assert r.returncode == 0, r.stderr[-3000:]
        outs.append(out / "r.json")
    merged = tmp_path / "merged"
    r = subprocess.run([sys.executable, "-m", "llaca.bench", "--merge", *map(str, outs), "--out", str(merged)],
                       cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    result = json.loads((merged / "bench.json").read_text())
    assert list(result["methods"]) == list(METHODS)
    assert len(result["methods"]["joint"]["matrix"]) == 1 and result["methods"]["joint"]["forgetting"] is None
    assert [g["group"] for g in result["methods"]["llaca+groups"]["groups"]] == ["g1", "g2", "g3"]
    assert "| joint |" in (merged / "bench.md").read_text() and (merged / "bench.png").stat().st_size > 10_000
    bad = subprocess.run([sys.executable, "-m", "llaca.bench", "--methods", "seq,nope"], cwd=ROOT, capture_output=True,
                         text=True, timeout=120)
    assert bad.returncode == 2 and "unknown method(s) nope" in bad.stderr
