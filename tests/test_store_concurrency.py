"""Feedback store under concurrency: real threads, a second process, and SIGKILL crashes."""

from __future__ import annotations

import gc
import hashlib
import json
import multiprocessing
import random
import signal
import sqlite3
import subprocess
import threading
import time
from collections import Counter

import pytest

from feedback_store import FeedbackStore, StoreBusyError
from tests.store_helpers import ask, child, png_bytes, read_acks, row_counts


def make_ready_buffers(store: FeedbackStore, n: int) -> set[int]:
    ids = set()
    for i in range(n):
        s = store.start_session()
        _, a = ask(store, s, f"q{i}", f"wrong{i}")
        ids.add(store.add_correction(s.id, a.id, f"right{i}", ready_threshold=1).buffer_id)
    return ids


def claim_all(store: FeedbackStore, worker: str, out: list[int], barrier: threading.Barrier) -> None:
    barrier.wait()
    while (buffer := store.claim_ready_buffer(worker, 60)) is not None:
        out.append(buffer.id)
        time.sleep(0.001)  # a real worker trains now; lets the others in


def test_many_threads_never_claim_the_same_buffer(store):
    expected = make_ready_buffers(store, 40)
    claims: dict[str, list[int]] = {f"w{i}": [] for i in range(8)}
    barrier = threading.Barrier(len(claims))
    threads = [threading.Thread(target=claim_all, args=(store, w, out, barrier)) for w, out in claims.items()]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    everything = [b for out in claims.values() for b in out]
    assert Counter(everything).most_common(1)[0][1] == 1  # no buffer twice
    assert set(everything) == expected
    assert sum(1 for out in claims.values() if out) >= 2  # the threads really competed
    for worker, out in claims.items():
        assert all(store.get_buffer(b).claimed_by == worker for b in out)


def test_threads_and_a_second_process_claim_disjoint_buffers(store):
    expected = make_ready_buffers(store, 60)
    proc = child("claimer", str(store.data_dir), "other-process",
                 stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        claims: dict[str, list[int]] = {f"t{i}": [] for i in range(3)}
        barrier = threading.Barrier(len(claims) + 1)
        threads = [threading.Thread(target=claim_all, args=(store, w, out, barrier)) for w, out in claims.items()]
        for t in threads:
            t.start()
        proc.stdin.write("go\n")
        proc.stdin.flush()
        barrier.wait()
        for t in threads:
            t.join()
        other = json.loads(proc.stdout.readline())
        assert proc.wait(timeout=30) == 0
    finally:
        proc.kill()
    mine = [b for out in claims.values() for b in out]
    assert not set(mine) & set(other)
    assert sorted(mine + other) == sorted(expected)
    assert all(store.get_buffer(b).claimed_by == "other-process" for b in other)


def test_threads_and_a_second_process_write_at_the_same_time(store):
    proc = child("corrections", str(store.data_dir), "30", "proc", stdout=subprocess.PIPE, text=True)
    shared_image = png_bytes((42, 42, 42))
    errors: list[BaseException] = []

    def write(tag: str) -> None:
        try:
            s = store.start_session(client=tag)
            for i in range(15):
                _, a = ask(store, s, f"{tag} q{i}", f"{tag} wrong{i}", image=shared_image)
                store.add_correction(s.id, a.id, f"{tag} right{i}")
        except BaseException as exc:  # noqa: BLE001 - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(f"t{i}",)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    other_session = proc.stdout.readline().strip()
    assert proc.wait(timeout=60) == 0
    assert errors == []
    counts = row_counts(store)
    assert counts["feedback"] == counts["buffer_items"] == 4 * 15 + 30
    assert counts["messages"] == 2 * (4 * 15 + 30)
    assert counts["images"] == 1 + 30  # the shared image once, the process's 30 distinct ones
    assert [i.answer for i in store.session_buffers(other_session)[0].items] == [f"proc right{i}" for i in range(30)]
    assert store.integrity_check() == ["ok"]


def test_connections_of_finished_threads_are_released(store):
    def use() -> None:
        store.start_session()

    for _ in range(3):
        threads = [threading.Thread(target=use) for _ in range(10)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    gc.collect()
    assert len(store._conns._handles) <= 1  # only a live thread's (at most this one)
    assert row_counts(store)["sessions"] == 30


def test_a_forked_child_uses_its_own_connection(store):
    session = store.start_session()
    store.record_user_message(session.id, "from the parent")
    results = multiprocessing.get_context("fork").Queue()

    def work() -> None:
        try:
            results.put(store.record_user_message(session.id, "from the child").id)
        except BaseException as exc:  # noqa: BLE001
            results.put(repr(exc))

    proc = multiprocessing.get_context("fork").Process(target=work)
    proc.start()
    child_message = results.get(timeout=30)
    proc.join(timeout=30)
    assert proc.exitcode == 0
    assert store.get_message(session.id, child_message).text == "from the child"
    assert [m.text for m in store.session_history(session.id)] == ["from the parent", "from the child"]


def test_a_writer_blocked_too_long_gets_a_clear_error(tmp_path):
    s = FeedbackStore(tmp_path / "d", busy_timeout=0.2)
    blocker = sqlite3.connect(tmp_path / "d" / "store.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        with pytest.raises(StoreBusyError, match="locked for over 0.2 s") as busy:
            s.start_session()
        assert busy.value.timeout == 0.2
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    assert s.start_session().id  # and it recovers
    s.close()


@pytest.mark.slow
def test_sigkill_never_loses_an_acknowledged_correction(tmp_path):
    data, acks = tmp_path / "data", tmp_path / "acks.log"
    FeedbackStore(data).close()
    rng = random.Random(7)
    kills = 0
    for _ in range(5):
        proc = child("writer", str(data), str(acks))
        before = len(read_acks(acks))
        deadline = time.monotonic() + 20
        while len(read_acks(acks)) < before + 2 and time.monotonic() < deadline and proc.poll() is None:
            time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.05))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert proc.returncode == -signal.SIGKILL
        kills += 1
    acked = read_acks(acks)
    assert kills == 5 and len(acked) >= 10
    s = FeedbackStore(data)
    try:
        assert s.integrity_check() == ["ok"]
        for ack in acked:
            answer = s.get_message(ack["session"], ack["a"])
            item = [i for i in s.buffer_items(ack["buffer"]) if i.message_id == answer.id]
            assert [(i.answer, i.question, i.image_sha256) for i in item] == [
                (ack["answer"], ack["question"], ack["sha"])
            ]
            path = s.image_path(ack["sha"])
            assert hashlib.sha256(path.read_bytes()).hexdigest() == ack["sha"]
        report = s.cleanup_orphans(min_age_seconds=0, dry_run=True)
        assert report.missing_images == ()  # a row never lacks its file
        assert len(report.orphan_images) <= kills  # at most the image in flight per kill
    finally:
        s.close()
