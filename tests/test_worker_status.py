"""Which learning workers the status line and ``/status`` show: a worker that stops cleanly
marks itself stopped, a live one keeps reporting while idle, a silent one is shown for a while
and then left out. Restarting the real app (after `kill`, then after Ctrl+C) leaves one worker in the status line."""

from __future__ import annotations

import signal
import time

import pytest

from app.panels import worker_summary
from feedback_store import FeedbackStore, TaskBuffer, WorkerState
from llaca.config.settings import Settings
from llaca.worker.liveness import HIDE_AFTER_SECONDS, STALE_SECONDS, classify
from llaca.worker.loop import WorkerConfig, start_background
from tests.conftest import TINY

NOW = 1_000_000.0


def row(worker_id: str, state: str, age: float, **detail) -> WorkerState:
    return WorkerState(worker_id, state, detail, NOW - age, None, None)


def test_stopped_and_long_silent_workers_leave_the_status_line():
    workers = [
        row("vm:1", "stopped", 30),
        row("vm:2", "idle", 5),
        row("vm:3", "training", STALE_SECONDS + 10, buffer=4, step=3, total=80),  # killed a while ago
        row("vm:4", "idle", HIDE_AFTER_SECONDS + 10),  # killed long ago
    ]
    groups = classify(workers, NOW)
    assert [w.worker_id for w in groups.live] == ["vm:2"]
    assert [w.worker_id for w in groups.not_responding] == ["vm:3", "vm:4"]
    assert [w.worker_id for w in groups.stopped] == ["vm:1"]
    assert worker_summary(workers, NOW) == "worker vm:2 idle; worker vm:3 not responding (last seen 130 s ago)"
    assert worker_summary([workers[1], workers[0], workers[3]], NOW) == "worker idle"
    assert worker_summary([workers[0]], NOW).startswith("no learning worker is running")
    assert worker_summary([], NOW).startswith("no learning worker has reported yet")


def test_a_worker_beats_while_idle_and_marks_itself_stopped(tmp_path, monkeypatch):
    import llaca.worker.loop as worker_module

    monkeypatch.setattr(worker_module, "HEARTBEAT_SECONDS", 0.2)
    store = FeedbackStore(tmp_path)
    cfg = WorkerConfig(Settings(data_dir=tmp_path, model=str(TINY), idle_ready=0), claim_poll_seconds=0.05, worker_id="test:1")
    worker, thread = start_background(cfg, store)
    try:
        time.sleep(0.3)
        first = store.worker_states()[0].updated_at
        time.sleep(0.5)
        [beat] = store.worker_states()
        assert beat.state == "idle" and beat.updated_at > first  # idle, and still reporting
    finally:
        worker.shutdown(timeout=10)
    assert not thread.is_alive()
    [stopped] = store.worker_states()
    assert stopped.state == "stopped"
    worker.state("training", buffer=1)  # a late report from a dying thread changes nothing
    assert store.worker_states()[0].state == "stopped"
    store.close()


@pytest.mark.slow
def test_restarting_the_app_leaves_one_worker(tmp_path):
    from gradio_client import Client

    from app.server import AppServer

    data = tmp_path / "data"
    for k, sig in enumerate((signal.SIGTERM, signal.SIGINT)):  # `kill`, then Ctrl+C
        server = AppServer(TINY, data, worker=True, log_path=tmp_path / f"app{k}.log").start()
        try:
            client, deadline = Client(server.url, verbose=False), time.monotonic() + 20
            while not (status := client.predict(api_name="/status"))["worker"] and time.monotonic() < deadline:
                time.sleep(0.2)  # the worker thread reports its first state just after start
            ids = {w["worker_id"] for w in status["worker"]}
            assert len(ids) == 1 and ids.pop().endswith(f":{server.proc.pid}"), status
            assert status["learning"] == "worker idle", status  # the page's status line, learning part
            assert len(status["workers_stopped"]) == k and not status["workers_not_responding"], status
        finally:
            server.stop(sig)
        assert server.proc.returncode == 0, server.log()
    store = FeedbackStore(data)
    try:
        assert [w.state for w in store.worker_states()] == ["stopped"] * 2  # the Ctrl+C'd worker too
    finally:
        store.close()


def test_the_worker_command_documents_every_option():
    from llaca.worker.cli import build_parser

    for action in build_parser()._actions:
        if action.dest in ("help", "crash_at"):
            continue
        assert action.help, f"--{action.dest} has no help text"
        assert "default" in action.help or action.dest == "once", f"--{action.dest} does not say its default"


def test_the_buffer_panel_says_what_happens_and_who_will_learn_it():
    from app.panels import buffer_status, learning_rule

    def buffer(status: str, reason: str | None = None):
        return TaskBuffer(1, "s", status, NOW, NOW, None, None, None, 0, None, reason)

    now = time.time()  # buffer_status judges liveness at the current time
    live = [WorkerState("vm:2", "idle", {}, now - 5, None, None)]
    gone = [WorkerState("vm:1", "stopped", {}, now - 5, None, None)]
    assert buffer_status(buffer("ready"), live, 8) == ("ready", "queued for learning")
    assert "no learning worker is running" in buffer_status(buffer("ready"), gone, 8)[1]
    reason = "the new task did not improve on its held-out items (0% -> 0%)"
    assert buffer_status(buffer("rejected", reason), live, 8)[1] == f"rejected: {reason}; the served version stays"
    rule = learning_rule(8)
    assert "8 corrections or on Teach now" in rule and "1 in 5" in rule and "trained again" in rule
