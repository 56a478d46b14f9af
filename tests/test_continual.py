"""Each continual method's wiring: replay mixes in earlier samples, groups isolate parameters,
joint trains once on everything, and the bench's methods are the ones named in the issue."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llaca.bench.continual import METHODS, Task, check_methods, run_method
from llaca.learn.tuner import TuneConfig, _batches
from llaca.world.heldout import heldout


def test_bench_lists_every_method_one_a_line_from_a_registry_without_torch():
    root = Path(__file__).resolve().parents[1]
    listed = subprocess.run([sys.executable, "-m", "llaca.bench", "--list"], cwd=root, capture_output=True, text=True,
                            timeout=300)
    assert listed.returncode == 0 and listed.stdout.split("\n")[:-1] == list(METHODS)
    # every listed method names code that runs it: a tuner method, joint, or a group method whose
    # start is one llaca.groups.start knows
    from llaca.config.methods import GROUP_METHODS, JOINT, TUNER_METHODS
    from llaca.groups.start import STARTS

    assert set(METHODS) == {*TUNER_METHODS, *GROUP_METHODS, JOINT} and set(GROUP_METHODS.values()) <= set(STARTS)
    with pytest.raises(ValueError, match="unknown method.*nope"):
        check_methods(["seq", "nope"])
    # the app's settings and the worker's method names load without torch
    probe = "import sys, llaca.config.methods, llaca.config; print(sorted(m for m in ('torch', 'transformers') if m in sys.modules))"
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=root, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0 and loaded.stdout.strip() == "[]", loaded.stderr


def test_replay_really_mixes_in_earlier_samples():
    new = heldout("count", 12, seed=1)
    old = heldout("position", 6, seed=2)
    cfg = TuneConfig(method="llaca+replay", batch_size=8, replay_fraction=0.25)
    batches = list(_batches(new, old, cfg, 20))
    assert all(len(b) == 8 for b in batches)
    assert all(sum(s.task == "position" for s in b) == 2 for b in batches)  # 25% of every batch
    assert {s.id for b in batches for s in b if s.task == "position"} == {s.id for s in old}
    plain = list(_batches(new, old, TuneConfig(method="llaca", batch_size=8), 20))
    assert not any(s.task == "position" for b in plain for s in b)  # only the replay methods replay


def _tasks(names, n_train=16, n_test=8):
    return [Task(n, heldout(n, n_train, seed=3 + k), heldout(n, n_test, seed=300 + k)) for k, n in enumerate(names)]


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "adapter_model.safetensors"))


@pytest.mark.slow
def test_groups_isolate_parameters_and_route(tiny, tmp_path):
    """Two families become two groups: the second task trains a fresh LoRA from the base model
    and leaves the first group's adapter exactly as it was; questions route to their group and
    base questions to the base model; a third task like the first continues its group."""
    tasks = _tasks(["count", "letter", "count"])
    template = TuneConfig(method="seq", steps=3, batch_size=4, lr=1e-3)
    base_sets = {"color": heldout("color", 6, seed=9)}
    work = tmp_path / "w"
    res = run_method(tiny, "llaca+groups", tasks, base_sets, template, work, replay_per_task=4)
    groups = [g["group"] for g in res["groups"]]
    assert groups[0] != groups[1] and groups[2] == groups[0]
    first, second, third = (work / "llaca_groups" / f"{j:02d}-{t.name}" for j, t in enumerate(tasks))
    record = json.loads((third / "run_record.json").read_text())
    assert record["method"] == "llaca+replay" and record["init_adapter"] == str(first)
    assert record["replay_pool"] == 4  # the group's own earlier samples, nothing of the letter group
    assert json.loads((second / "run_record.json").read_text())["init_adapter"] is None
    # the letter group's training did not touch the count group's weights
    assert _weights(first).keys() == _weights(second).keys()
    assert any(not torch.equal(_weights(first)[k], _weights(second)[k]) for k in _weights(first))
    assert res["base_routes"] == {"color": {"base": 6}}
    assert res["base_after"]["color"] >= 90  # base questions are answered by the untouched base model
    assert len(res["matrix"]) == 3 and res["forgetting"] is not None


@pytest.mark.slow
def test_joint_trains_once_on_all_tasks_with_the_summed_budget(tiny, tmp_path):
    tasks = _tasks(["count", "position"])
    template = TuneConfig(method="seq", steps=2, batch_size=4)
    res = run_method(tiny, "joint", tasks, {"color": heldout("color", 4, seed=9)}, template, tmp_path)
    assert len(res["matrix"]) == 1 and len(res["matrix"][0]) == 2
    assert res["forgetting"] is None and res["avg_acc"] == round(sum(res["matrix"][0]) / 2, 2)
    record = json.loads((tmp_path / "joint" / "all" / "run_record.json").read_text())
    assert record["steps"] == 4 and record["samples"] == 32
