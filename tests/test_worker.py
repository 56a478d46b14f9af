"""The learning worker on the real tiny model: learn, guard, reject, and survive SIGKILLs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from feedback_store import FeedbackStore
from llaca.adapter_files import publish, staging_dir, sweep_staging
from llaca.tune import TrainingCommandError
from llaca.evaluate import adapter_scores
from llaca.guard import EARLIER, NEW, PROBE, EvalSet, decide
from llaca.adapter_metrics import AdapterMetrics
from llaca.config import Settings
from llaca.worker import LearningWorker, WorkerConfig, sweep_training_dirs
from llaca.world.heldout import heldout
from tests.conftest import ROOT, TINY
from tests.worker_helpers import is_complete, teach


def test_guard_rule():
    sets = [EvalSet("buffer 2", NEW, [1] * 10), EvalSet("buffer 1", EARLIER, [1] * 10), EvalSet("color", PROBE, [1] * 50)]
    ok = decide({"buffer 2": 80, "buffer 1": 96, "color": 98}, {"buffer 2": 10, "buffer 1": 100, "color": 100}, sets, 5)
    assert ok.passed and ok.reason.startswith("passed")
    no_gain = decide({"buffer 2": 10, "buffer 1": 100, "color": 100}, {"buffer 2": 10, "buffer 1": 100, "color": 100}, sets, 5)
    assert not no_gain.passed and "did not improve" in no_gain.reason
    forgot = decide({"buffer 2": 90, "buffer 1": 100, "color": 40}, {"buffer 2": 10, "buffer 1": 100, "color": 100}, sets, 5)
    assert not forgot.passed and "base probe color fell 100% -> 40%" in forgot.reason
    earlier = decide({"buffer 2": 90, "buffer 1": 80, "color": 100}, {"buffer 2": 10, "buffer 1": 100, "color": 100}, sets, 5)
    assert not earlier.passed and "earlier task buffer 1" in earlier.reason


def test_publish_is_atomic_and_leftovers_are_swept(tmp_path):
    stage = staging_dir(tmp_path, "x")
    stage.mkdir()
    (stage / "adapter_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError):
        publish(stage, tmp_path, "v1")  # incomplete: never published
    (stage / "adapter_model.safetensors").write_bytes(b"0")
    final = publish(stage, tmp_path, "v1")
    assert final == tmp_path / "v1" and is_complete(final) and not stage.exists()
    leftover = staging_dir(tmp_path, "y")
    leftover.mkdir()
    assert sweep_staging(tmp_path) == [leftover] and not leftover.exists()


def served_accuracy(lm, store, family, n=100, seed=31337, size=64):
    cur = store.current_adapter()
    return adapter_scores(lm, cur.path if cur else None, [heldout(family, n, seed=seed, size=size)])[0]


@pytest.mark.slow
def test_learns_a_new_family_and_keeps_the_base(tiny, tmp_path):
    store = FeedbackStore(tmp_path)
    base = {f: served_accuracy(tiny, store, f) for f in ("color", "shape")}
    assert served_accuracy(tiny, store, "position") < 50
    _, buffer_id = teach(store, "position", 48, seed=5)
    worker = LearningWorker(WorkerConfig(Settings(data_dir=tmp_path, learn_method="llaca")), store, lm=tiny)
    assert worker.run_once()
    buf = store.get_buffer(buffer_id)
    assert buf.status == "promoted", buf.reason
    cur = store.current_adapter()
    assert cur is not None and cur.version == buf.adapter_version and is_complete(Path(cur.path))
    metrics = AdapterMetrics.from_dict(cur.metrics)
    assert metrics.guard.passed and metrics.row_labels == ["base", cur.version] and metrics.buffer == buffer_id
    held = [it for it in store.buffer_items(buffer_id) if it.split == "heldout"]
    assert len(held) == 10 and metrics.guard.sizes[f"buffer {buffer_id}"] == 10  # 20% held out
    assert {it.id for it in store.heldout_items("promoted")} == {it.id for it in held}  # guards later buffers
    assert served_accuracy(tiny, store, "position") >= 80
    for f in ("color", "shape"):
        assert served_accuracy(tiny, store, f) >= base[f] - 5, f
    assert {s.state for s in store.worker_states()} == {"promoted"}


@pytest.mark.slow
def test_guard_rejects_corrections_that_would_destroy_colour(tiny, tmp_path):
    store = FeedbackStore(tmp_path)
    _, buffer_id = teach(store, "color", 24, seed=9, answer_for=lambda s: "blue")
    worker = LearningWorker(WorkerConfig(Settings(data_dir=tmp_path, learn_method="llaca")), store, lm=tiny)
    assert worker.run_once()
    buf = store.get_buffer(buffer_id)
    assert buf.status == "rejected" and "color" in buf.reason and "fell" in buf.reason
    assert store.current_adapter() is None  # still serving the base model
    rejected = store.list_adapters()
    assert len(rejected) == 1 and rejected[0].status == "rejected"
    assert rejected[0].version == f"buffer-{buffer_id}" and buf.adapter_version == rejected[0].version
    assert store.next_adapter_version() == "v1"  # a rejected candidate takes no version number


def start_worker(data_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "llaca.worker", "--data-dir", str(data_dir), "--model", str(TINY), "--device", "cpu",
         "--lease", "4", "--poll", "0.3", "--learn-steps", "30", "--lr", "1e-3", "--worker-threads", "1", "--probe-n", "12",
         "--learn-method", "llaca", *extra],  # a later --learn-method in `extra` wins
        cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )


def wait_for(pred, timeout: float, what: str):
    end = time.time() + timeout
    while time.time() < end:
        got = pred()
        if got:
            return got
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.mark.slow
def test_sigkill_during_training_loses_nothing(tmp_path):
    store = FeedbackStore(tmp_path)
    _, buffer_id = teach(store, "position", 12, seed=3)
    proc = start_worker(tmp_path)
    try:
        wait_for(lambda: any(s.state == "training" and s.detail.get("step", 0) >= 10 for s in store.worker_states()),
                 120, "training to be under way")
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    finally:
        proc.kill()
    assert store.get_buffer(buffer_id).status == "training"  # claimed by the dead worker
    assert store.current_adapter() is None
    # a new worker takes the buffer once the lease has expired, and finishes it
    wait_for(lambda: store.get_buffer(buffer_id).lease_until < time.time(), 10, "the lease to expire")
    proc = start_worker(tmp_path, "--once")
    assert proc.wait(180) == 0, proc.stderr.read()[-2000:]
    buf = store.get_buffer(buffer_id)
    assert buf.status in ("promoted", "rejected") and buf.attempts == 2
    assert not list((tmp_path / "adapters").glob("*.tmp"))
    assert all(is_complete(p) for p in (tmp_path / "adapters").iterdir())


@pytest.mark.slow
# The single-adapter path's two recovery states: nothing published (a staging folder to discard),
# and a registered candidate to finish; the group policy's after-publish and after-register are
# in test_group_learning.py.
@pytest.mark.parametrize("point", ["before-publish", "after-register"])
def test_sigkill_during_promotion_never_serves_a_broken_version(tmp_path, point):
    from llaca.model import load_model
    from llaca.serving import BASE, Assistant, ServedVersion

    store = FeedbackStore(tmp_path)
    _, buffer_id = teach(store, "position", 12, seed=4)
    proc = start_worker(tmp_path, "--once", "--crash-at", point, "--guard-margin", "100")
    assert proc.wait(180) == -signal.SIGKILL, proc.stderr.read()[-2000:]
    cur = store.current_adapter()
    if point == "after-promote":
        assert cur is not None and is_complete(Path(cur.path))
    else:
        assert cur is None  # the served version is the last promoted one: still the base model
    # what the app would serve now loads cleanly
    lm = load_model(TINY, device="cpu")
    served = lambda: ServedVersion(cur.version, Path(cur.path)) if cur else ServedVersion(BASE, None)  # noqa: E731
    assistant = Assistant(lm, served)
    assert assistant.version == (cur.version if cur else BASE)
    # restart after the lease expired: leftovers swept, the buffer finished (recovered or trained again)
    wait_for(lambda: store.get_buffer(buffer_id).lease_until < time.time(), 10, "the lease to expire")
    proc = start_worker(tmp_path, "--once", "--guard-margin", "100")
    assert proc.wait(180) == 0, proc.stderr.read()[-2000:]
    assert not list((tmp_path / "adapters").glob("*.tmp"))
    buf = store.get_buffer(buffer_id)
    assert buf.status == "promoted"
    assert is_complete(Path(store.current_adapter().path))


@pytest.mark.slow
def test_trains_through_a_training_command(tiny, tmp_path, monkeypatch):
    """The worker writes the training set, runs `python -m llaca.tune` as a subprocess, and
    guards and promotes its adapter as one trained in-process (default method: the adapter
    is the group's, inside the routed version)."""
    from llaca.routed_system import RoutedSystem

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    store = FeedbackStore(tmp_path)
    _, buffer_id = teach(store, "position", 12, seed=5)
    cfg = WorkerConfig(Settings(data_dir=tmp_path, model=str(TINY), learn_steps=20, guard_margin=100, worker_threads=1,
                                train_command=f"{sys.executable} -m llaca.tune"), lr=1e-3, probe_n=12)
    worker = LearningWorker(cfg, store, lm=tiny)
    seen = []
    worker.state = lambda state, **detail: seen.append((state, detail))  # progress reaches the worker state
    assert worker.run_once()
    buf = store.get_buffer(buffer_id)
    assert buf.status == "promoted", buf.reason
    cur = store.current_adapter()
    assert cur.version == buf.adapter_version and list(RoutedSystem.load(cur.path).adapters) == ["g1"]
    record = json.loads((Path(cur.path) / "g1" / "run_record.json").read_text())
    assert record["num_processes"] == 1 and record["steps"] == 20 and record["samples"] == 10  # 2 held out
    assert cur.metrics["tune"]["num_processes"] == 1 and cur.metrics["tune"]["global_batch"] == record["global_batch"]
    steps = [d for state, d in seen if state == "training" and "step" in d]
    assert [(d["step"], d["total"]) for d in steps] == [(0, 20), (10, 20), (20, 20)] and steps[-1]["loss"] > 0
    assert list((tmp_path / "training").iterdir()) == []  # the training set is removed afterwards


@pytest.mark.slow
def test_a_failing_training_command_leaves_the_buffer_to_its_lease(tiny, tmp_path):
    store = FeedbackStore(tmp_path)
    _, buffer_id = teach(store, "position", 4, seed=6)
    cfg = WorkerConfig(Settings(data_dir=tmp_path, model=str(TINY), learn_steps=2,
                                train_command=f"{sys.executable} -m llaca.tune --no-such-flag"), probe_n=4)
    worker = LearningWorker(cfg, store, lm=tiny)
    with pytest.raises(TrainingCommandError, match="exited with status 2"):
        worker.run_once()
    buf = store.get_buffer(buffer_id)
    assert buf.status == "training" and buf.lease_until > time.time()  # back to the queue when the lease expires
    assert store.list_adapters() == [] and store.current_adapter() is None
    assert list((tmp_path / "training").iterdir()) == []


def test_training_dirs_of_dead_workers_are_swept(tmp_path):
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    mine = tmp_path / f"buffer1-pid{os.getpid()}-abc"
    gone = tmp_path / f"buffer2-pid{dead.pid}-def"
    for p in (mine, gone):
        p.mkdir()
    assert sweep_training_dirs(tmp_path) == [gone] and mine.exists() and not gone.exists()


def test_only_a_promoted_candidate_takes_a_version_number(tmp_path):
    store = FeedbackStore(tmp_path)
    worker = LearningWorker(WorkerConfig(Settings(data_dir=tmp_path)), store)

    def staged(tag: str) -> Path:
        stage = staging_dir(worker.adapters_dir, tag)
        stage.mkdir()
        for name in ("adapter_config.json", "adapter_model.safetensors"):
            (stage / name).write_text("{}")
        return stage

    assert worker._publish(staged("a"), 4, promoted=False)[0] == "buffer-4"
    assert worker._publish(staged("b"), 4, promoted=False)[0] == "buffer-4-1"  # a folder left by a crash
    assert worker._publish(staged("c"), 5, promoted=True)[0] == "v1"
    store.close()
