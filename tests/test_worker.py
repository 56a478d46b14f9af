"""The learning worker's loop: publishing, training commands, sweeping leftovers, and a SIGKILL mid-training.

What it learns and how it is guarded is in test_group_learning.py (the policy).
"""

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
from llaca.config.settings import Settings
from llaca.learn.command import TrainingCommandError
from llaca.model.llava import load_model
from llaca.worker.adapter_files import publish, staging_dir, sweep_staging
from llaca.worker.loop import LearningWorker, WorkerConfig, sweep_training_dirs
from tests.conftest import ROOT, TINY
from tests.worker_helpers import is_complete, teach


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


def start_worker(data_dir: Path, *extra: str) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "llaca.worker", "--data-dir", str(data_dir), "--model", str(TINY), "--device", "cpu",
         "--lease", "4", "--poll", "0.3", "--learn-steps", "30", "--lr", "1e-3", "--worker-threads", "1", "--probe-n", "12",
         *extra],
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
    versions = [p for p in (tmp_path / "adapters").iterdir() if p.is_dir()]  # beside codebook.json and the lock
    assert versions and all(is_complete(p) for p in versions)


@pytest.mark.slow
def test_trains_through_a_training_command(tmp_path, monkeypatch):
    """The worker writes the training set, runs `python -m llaca.tune` as a subprocess, and
    guards and promotes its adapter as one trained in-process (default method: the adapter
    is the group's, inside the routed version)."""
    from llaca.groups.system import RoutedSystem

    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    store = FeedbackStore(tmp_path)
    _, buffer_id = teach(store, "position", 12, seed=5)
    cfg = WorkerConfig(Settings(data_dir=tmp_path, model=str(TINY), learn_steps=20, guard_margin=100, worker_threads=1,
                                train_command=f"{sys.executable} -m llaca.tune"), lr=1e-3, probe_n=12)
    worker = LearningWorker(cfg, store, lm=load_model(TINY, device="cpu"))  # its own: the worker wraps it
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
def test_a_failing_training_command_leaves_the_buffer_to_its_lease(tmp_path):
    store = FeedbackStore(tmp_path)
    _, buffer_id = teach(store, "position", 4, seed=6)
    cfg = WorkerConfig(Settings(data_dir=tmp_path, model=str(TINY), learn_steps=2,
                                train_command=f"{sys.executable} -m llaca.tune --no-such-flag"), probe_n=4)
    worker = LearningWorker(cfg, store, lm=load_model(TINY, device="cpu"))  # its own: the worker wraps it
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

    assert worker.publish(staged("a"), 4, promoted=False)[0] == "buffer-4"
    assert worker.publish(staged("b"), 4, promoted=False)[0] == "buffer-4-1"  # a folder left by a crash
    assert worker.publish(staged("c"), 5, promoted=True)[0] == "v1"
    store.close()
