"""Feedback store: adapter versions (one current, promote, reject, rollback) and worker status."""

from __future__ import annotations

import os
import sqlite3
import threading

import pytest

from feedback_store import (
    AdapterExistsError,
    AdapterStateError,
    FeedbackStore,
    InvalidInputError,
    InvalidParamsError,
    UnknownAdapterError,
)
from tests.store_helpers import FakeClock

LIBS = {"peft": "0.21.2", "transformers": "5.23.0", "torch": "2.13.0+cpu"}


def register(store: FeedbackStore, parent: str | None = None, **metrics: float):
    version = store.next_adapter_version()
    return store.register_adapter(
        version, parent, store.data_dir / "adapters" / version, "llaca-ema", metrics, LIBS
    )


def statuses(store: FeedbackStore) -> dict[str, str]:
    return {a.version: a.status for a in store.list_adapters()}


def test_versions_are_numbered_and_registered_as_candidates(store):
    assert store.next_adapter_version() == "v1" and store.current_adapter() is None
    v1 = register(store, accuracy=0.5)
    assert (v1.version, v1.status, v1.parent_version, v1.method) == ("v1", "candidate", None, "llaca-ema")
    assert v1.metrics == {"accuracy": 0.5} and v1.library_versions == LIBS
    assert v1.path == str(store.data_dir / "adapters" / "v1")
    store.register_adapter("experiment-b", "v1", "/elsewhere/b", "fixed-ema", {}, {})
    assert store.next_adapter_version() == "v2"
    v2 = register(store, parent="v1")
    assert v2.parent_version == "v1"
    assert store.get_adapter("experiment-b").path == "/elsewhere/b"
    assert [a.version for a in store.list_adapters()] == ["v1", "experiment-b", "v2"]
    assert store.current_adapter() is None  # registering never serves


def test_register_validation(store):
    register(store)
    with pytest.raises(AdapterExistsError, match="already exists"):
        store.register_adapter("v1", None, "x", "llaca", {}, {})
    with pytest.raises(UnknownAdapterError):
        store.register_adapter("v2", "v0", "x", "llaca", {}, {})
    with pytest.raises(InvalidInputError, match="not a valid name"):
        store.register_adapter("../v2", None, "x", "llaca", {}, {})
    with pytest.raises(InvalidParamsError, match="adapter metrics"):
        store.register_adapter("v2", None, "x", "llaca", {"acc": object()}, {})
    assert list(statuses(store)) == ["v1"]


def test_promote_keeps_exactly_one_current(store):
    register(store), register(store), register(store)
    store.promote_adapter("v1")
    assert store.current_adapter().version == "v1"
    store.promote_adapter("v2")
    assert statuses(store) == {"v1": "retired", "v2": "current", "v3": "candidate"}
    assert store.promote_adapter("v2").status == "current"  # idempotent
    assert statuses(store) == {"v1": "retired", "v2": "current", "v3": "candidate"}
    with pytest.raises(UnknownAdapterError):
        store.promote_adapter("v9")


def test_the_database_itself_refuses_two_current_versions(store):
    register(store), register(store)
    store.promote_adapter("v1")
    with pytest.raises(sqlite3.IntegrityError):
        store._conns.get().execute("UPDATE adapter_versions SET status = 'current' WHERE version = 'v2'")


def test_reject_and_rollback(store):
    for _ in range(3):
        register(store)
    store.promote_adapter("v1")
    store.promote_adapter("v2")
    with pytest.raises(AdapterStateError, match="v2 is current; it cannot be rejected") as served:
        store.reject_adapter("v2", "worse")
    assert (served.value.version, served.value.status) == ("v2", "current")
    rejected = store.reject_adapter("v3", "forgetting 9% on task 1")
    assert (rejected.status, rejected.reason) == ("rejected", "forgetting 9% on task 1")
    with pytest.raises(AdapterStateError, match="was rejected") as was:
        store.promote_adapter("v3")
    assert (was.value.status, was.value.reason) == ("rejected", "forgetting 9% on task 1")
    with pytest.raises(AdapterStateError, match="was rejected"):
        store.rollback_to("v3")
    assert store.rollback_to("v1").status == "current"
    assert statuses(store) == {"v1": "current", "v2": "retired", "v3": "rejected"}
    assert store.rollback_to(None) is None
    assert store.current_adapter() is None
    assert statuses(store) == {"v1": "retired", "v2": "retired", "v3": "rejected"}
    with pytest.raises(UnknownAdapterError):
        store.rollback_to("v4")


def test_metrics_json_cannot_hold_are_stored_as_null(store):
    diverged = register(store, accuracy=0.75, loss_last=float("nan"), top=float("inf"))  # JSON has no NaN
    assert diverged.metrics == {"accuracy": 0.75, "loss_last": None, "top": None}
    assert store.get_adapter(diverged.version).metrics == diverged.metrics


def test_adapter_paths_inside_the_data_dir_follow_a_moved_data_dir(tmp_path):
    s = FeedbackStore(tmp_path / "old")
    register(s)
    s.close()
    os.rename(tmp_path / "old", tmp_path / "new")
    moved = FeedbackStore(tmp_path / "new")
    assert moved.get_adapter("v1").path == str(tmp_path / "new" / "adapters" / "v1")
    moved.close()


def test_concurrent_promotions_leave_one_current(store):
    for _ in range(8):
        register(store)
    barrier = threading.Barrier(8)

    def promote(version: str) -> None:
        barrier.wait()
        for _ in range(5):
            store.promote_adapter(version)

    threads = [threading.Thread(target=promote, args=(f"v{i}",)) for i in range(1, 9)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert list(statuses(store).values()).count("current") == 1
    assert set(statuses(store).values()) == {"current", "retired"}


def test_worker_status_heartbeat(tmp_path):
    clock = FakeClock()
    s = FeedbackStore(tmp_path / "d", clock=clock)
    first = s.set_worker_state("gpu-1", "training", {"buffer": 3, "step": 10})
    clock.advance(5)
    s.set_worker_state("cpu-1", "idle", {})
    clock.advance(5)
    s.set_worker_state("gpu-1", "evaluating", {"buffer": 3})
    states = {w.worker_id: w for w in s.worker_states()}
    assert first.pid == os.getpid()
    assert (states["gpu-1"].state, states["gpu-1"].detail) == ("evaluating", {"buffer": 3})
    assert states["gpu-1"].updated_at == clock.now and states["cpu-1"].updated_at == clock.now - 5
    assert len(states) == 2
    with pytest.raises(InvalidInputError):
        s.set_worker_state("", "idle", {})
    s.close()
