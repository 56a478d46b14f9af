"""The adapter metrics record: one typed, versioned record per adapter, round-tripped through the store."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

from feedback_store import FeedbackStore
from llaca.worker.guard import EARLIER, NEW, PROBE, PairedSet, decide_paired
from llaca.worker.record import (
    METRICS_SCHEMA_VERSION,
    AdapterMetrics,
    MetricsRecordError,
)


def record_after(served, buffer_id: int, name: str, candidate: dict, current: dict) -> AdapterMetrics:
    buffer = SimpleNamespace(id=buffer_id, session_id="s1")
    def hits(pct: float) -> list[bool]:  # 100 items, `pct` of them right
        return [True] * round(pct) + [False] * (100 - round(pct))

    sets = [PairedSet(t, NEW if t == f"buffer {buffer_id}" else PROBE if t == "color" else EARLIER,
                      hits(candidate[t]), hits(current[t])) for t in candidate]
    report = decide_paired(sets, 5.0)
    return AdapterMetrics.for_candidate(name, served, buffer, report, ["color"], {"method": "llaca", "steps": 80}, 12.34)


def test_the_record_round_trips_through_the_store(tmp_path):
    store = FeedbackStore(tmp_path)
    first = record_after(None, 1, "v1", {"buffer 1": 90.0, "color": 99.0}, {"buffer 1": 10.0, "color": 100.0})
    store.register_adapter("v1", None, tmp_path / "adapters" / "v1", "llaca", first.to_dict(), {"torch": "x"})
    stored = store.get_adapter("v1")
    assert AdapterMetrics.from_dict(stored.metrics) == first
    assert stored.metrics["schema_version"] == METRICS_SCHEMA_VERSION
    assert first.tasks == ["color", "buffer 1"] and first.row_labels == ["base", "v1"]
    assert first.matrix == [[100.0, 10.0], [99.0, 90.0]] and first.tune == {
        **dict.fromkeys(first.tune), "method": "llaca", "steps": 80}
    store.close()


def test_a_later_candidate_extends_the_served_versions_matrix():
    served = SimpleNamespace(version="v1", metrics=record_after(
        None, 1, "v1", {"buffer 1": 90.0, "color": 99.0}, {"buffer 1": 10.0, "color": 100.0}).to_dict())
    second = record_after(served, 2, "v2", {"buffer 2": 80.0, "buffer 1": 84.0, "color": 97.0},
                          {"buffer 2": 0.0, "buffer 1": 90.0, "color": 99.0})
    assert second.tasks == ["color", "buffer 1", "buffer 2"] and second.row_labels == ["base", "v1", "v2"]
    assert second.matrix == [[100.0, 10.0, None], [99.0, 90.0, None], [97.0, 84.0, 80.0]]
    assert second.forgetting == {"color": 3.0, "buffer 1": 6.0}  # best earlier row minus the last; llaca.learn.metrics
    assert second.worst_forgetting == 6.0 and second.average_accuracy == pytest.approx((97 + 84 + 80) / 3)
    assert not second.guard.passed and "buffer 1 fell" in second.guard.reason
    summary = second.summary()
    assert summary["forgetting"] == second.forgetting and summary["average_accuracy"] == second.average_accuracy


def test_records_this_code_cannot_read_are_refused_with_the_reason():
    good = record_after(None, 1, "v1", {"buffer 1": 90.0, "color": 99.0}, {"buffer 1": 10.0, "color": 100.0}).to_dict()
    with pytest.raises(MetricsRecordError, match="schema version 2, newer than this code reads"):
        AdapterMetrics.from_dict({**good, "schema_version": METRICS_SCHEMA_VERSION + 1})
    with pytest.raises(MetricsRecordError, match="no schema_version"):
        AdapterMetrics.from_dict({"matrix": [[1.0]], "avg_acc": 1.0})
    with pytest.raises(MetricsRecordError, match="lack matrix"):
        AdapterMetrics.from_dict({k: v for k, v in good.items() if k != "matrix"})
