"""Feedback store: corrections, task buffers, ready marking, claims, leases, splits."""

from __future__ import annotations

import pytest

from feedback_store import (
    BufferNotFoundError,
    FeedbackStore,
    InvalidInputError,
    LeaseLostError,
    NotFoundError,
    NothingToTeachError,
    UnknownAdapterError,
)
from tests.store_helpers import FakeClock, ask, png_bytes, row_counts


@pytest.fixture
def clock():
    return FakeClock()


@pytest.fixture
def timed(tmp_path, clock):
    s = FeedbackStore(tmp_path / "data", clock=clock, max_claim_attempts=2)
    yield s
    s.close()


def corrected_buffer(store: FeedbackStore, n: int = 2, ready: bool = True, image: bytes | None = None):
    session = store.start_session()
    for i in range(n):
        _, a = ask(store, session, f"q{i}?", f"wrong{i}", image=image or png_bytes((i, 0, 0)))
        store.add_correction(session.id, a.id, f"right{i}")
    if ready:
        return session, store.mark_ready(session.id)
    return session, store.session_buffers(session.id)[-1]


def test_correction_fills_the_open_buffer_with_traceable_items(store):
    s = store.start_session()
    store.register_adapter("v1", None, "adapters/v1", "llaca", {}, {})
    q1, a1 = ask(store, s, "What colour?", "red", image=png_bytes((0, 0, 255)), adapter_version="v1")
    q2, a2 = ask(store, s, "And the shape?", "circle", parent_id=a1.id)
    state1 = store.add_correction(s.id, a1.id, "blue")
    state2 = store.add_correction(s.id, a2.id, "square")
    assert (state1.buffer_id, state1.size, state1.status) == (state2.buffer_id, 1, "open")
    assert state2.size == 2
    [buffer] = store.session_buffers(s.id)
    assert buffer.status == "open" and buffer.session_id == s.id and buffer.size == 2
    first, second = buffer.items
    assert (first.message_id, first.question, first.answer, first.split) == (a1.id, "What colour?", "blue", "train")
    assert first.image_sha256 == q1.image_sha256
    assert (second.question, second.answer, second.image_sha256) == ("And the shape?", "square", q1.image_sha256)
    fb = [f for f in store.session_feedback(s.id) if f.kind == "correction"]
    assert [(f.message_id, f.previous_text, f.corrected_text) for f in fb] == [
        (a1.id, "red", "blue"), (a2.id, "circle", "square")
    ]
    assert first.feedback_id == fb[0].id
    # the item traces back to the answer it corrected and the version that produced it
    assert store.get_message(s.id, first.message_id).adapter_version == "v1"


def test_recorrecting_updates_the_item_instead_of_duplicating(store):
    s = store.start_session()
    _, a = ask(store, s, image=png_bytes())
    store.add_correction(s.id, a.id, "blue")
    state = store.add_correction(s.id, a.id, "navy blue")
    assert state.size == 1
    [item] = store.session_buffers(s.id)[0].items
    assert item.answer == "navy blue"
    corrections = [f for f in store.session_feedback(s.id) if f.kind == "correction"]
    assert [c.corrected_text for c in corrections] == ["blue", "navy blue"]
    assert {c.previous_text for c in corrections} == {"red"}
    assert item.feedback_id == corrections[-1].id
    # still updated in place once the buffer is ready (not yet claimed)
    store.mark_ready(s.id)
    assert store.add_correction(s.id, a.id, "dark blue").status == "ready"
    assert [i.answer for i in store.session_buffers(s.id)[0].items] == ["dark blue"]


def test_correcting_after_training_adds_a_new_item(store):
    s, buffer = corrected_buffer(store, n=1)
    message_id = buffer.items[0].message_id
    store.claim_ready_buffer("w", 60)
    state = store.add_correction(s.id, message_id, "even better")
    assert state.buffer_id != buffer.id and state.size == 1 and state.status == "open"
    assert store.get_buffer(buffer.id).items[0].answer == "right0"


def test_threshold_marks_ready_in_the_same_call_and_opens_a_new_buffer(store):
    s = store.start_session()
    states = []
    for i in range(4):
        _, a = ask(store, s, f"q{i}", f"wrong{i}")
        states.append(store.add_correction(s.id, a.id, f"right{i}", ready_threshold=3))
    assert [(st.size, st.status) for st in states] == [(1, "open"), (2, "open"), (3, "ready"), (1, "open")]
    first, second = store.session_buffers(s.id)
    assert first.status == "ready" and first.ready_at is not None and first.size == 3
    assert second.status == "open" and second.id == states[3].buffer_id
    with pytest.raises(InvalidInputError, match="ready_threshold"):
        store.add_correction(s.id, a.id, "x", ready_threshold=0)


def test_mark_ready(store):
    s = store.start_session()
    with pytest.raises(NothingToTeachError, match="no corrections waiting") as nothing:
        store.mark_ready(s.id)
    assert nothing.value.session_id == s.id
    _, buffer = corrected_buffer(store, n=1, ready=False)
    assert buffer.status == "open"
    with pytest.raises(NothingToTeachError):
        store.mark_ready(s.id)  # another session's open buffer is not this session's
    assert store.get_buffer(buffer.id).status == "open"
    ready = store.mark_ready(buffer.session_id)
    assert (ready.id, ready.status, ready.size) == (buffer.id, "ready", 1) and ready.ready_at is not None
    with pytest.raises(NothingToTeachError):
        store.mark_ready(buffer.session_id)  # no open buffer any more


def test_idle_buffers_become_ready(timed, clock):
    s1, b1 = corrected_buffer(timed, n=1, ready=False)
    clock.advance(100)
    s2, b2 = corrected_buffer(timed, n=1, ready=False)
    timed.start_session()  # a session without corrections has no buffer
    clock.advance(50)
    assert timed.mark_idle_buffers_ready(120) == [b1.id]
    assert timed.mark_idle_buffers_ready(120) == []
    clock.advance(100)
    assert timed.mark_idle_buffers_ready(120) == [b2.id]
    assert {b.status for b in (timed.get_buffer(b1.id), timed.get_buffer(b2.id))} == {"ready"}


def test_claim_takes_the_oldest_ready_buffer_with_a_lease(timed, clock):
    assert timed.claim_ready_buffer("w1", 30) is None
    _, newer_created = corrected_buffer(timed, n=1, ready=False)
    clock.advance(1)
    _, first_ready = corrected_buffer(timed, n=2)
    clock.advance(1)
    timed.mark_ready(newer_created.session_id)
    claimed = timed.claim_ready_buffer("w1", 30)
    assert claimed.id == first_ready.id  # ready first, although created later
    assert (claimed.status, claimed.claimed_by, claimed.attempts) == ("training", "w1", 1)
    assert claimed.lease_until == clock.now + 30 and claimed.size == 2
    assert timed.claim_ready_buffer("w2", 30).id == newer_created.id
    assert timed.claim_ready_buffer("w3", 30) is None


def test_expired_lease_returns_the_buffer_and_the_old_worker_loses_it(timed, clock):
    _, buffer = corrected_buffer(timed, n=1)
    assert timed.claim_ready_buffer("w1", 30).id == buffer.id
    clock.advance(20)
    assert timed.renew_lease(buffer.id, "w1", 30) == clock.now + 30
    clock.advance(29)
    assert timed.claim_ready_buffer("w2", 30) is None  # renewed lease still valid
    clock.advance(2)
    assert timed.get_buffer(buffer.id).status == "training"  # expired, nobody looked yet
    taken = timed.claim_ready_buffer("w2", 30)  # releases the expired lease, then claims
    assert (taken.id, taken.claimed_by, taken.attempts, taken.ready_at) == (buffer.id, "w2", 2, buffer.ready_at)
    assert taken.lease_until == clock.now + 30
    with pytest.raises(LeaseLostError, match="no longer holds task buffer .*: it is training by w2") as lost:
        timed.renew_lease(buffer.id, "w1", 30)
    assert lost.value.facts == {"buffer_id": buffer.id, "worker_id": "w1", "status": "training", "claimed_by": "w2"}
    with pytest.raises(LeaseLostError):
        timed.finish_claim(buffer.id, "w1", "promoted")
    done = timed.finish_claim(buffer.id, "w2", "promoted")
    assert (done.status, done.lease_until, done.claimed_by) == ("promoted", None, "w2")
    with pytest.raises(LeaseLostError, match="it is promoted"):
        timed.finish_claim(buffer.id, "w2", "promoted")


def test_claim_itself_returns_expired_buffers_first(timed, clock):
    _, old = corrected_buffer(timed, n=1)
    clock.advance(1)
    _, new = corrected_buffer(timed, n=1)
    assert timed.claim_ready_buffer("w1", 10).id == old.id
    clock.advance(11)
    again = timed.claim_ready_buffer("w2", 10)  # old was ready first, so it goes first again
    assert (again.id, again.claimed_by, again.attempts) == (old.id, "w2", 2)
    assert timed.claim_ready_buffer("w3", 10).id == new.id


def test_a_buffer_whose_workers_keep_dying_is_set_aside(timed, clock):
    _, buffer = corrected_buffer(timed, n=1)
    timed.claim_ready_buffer("w1", 10)
    clock.advance(11)
    timed.claim_ready_buffer("w2", 10)
    clock.advance(11)
    assert timed.claim_ready_buffer("w3", 10) is None  # max_claim_attempts=2
    dead = timed.get_buffer(buffer.id)
    assert dead.status == "rejected" and "2 training attempts" in dead.reason and "w2" in dead.reason


def test_finish_claim_records_outcome_and_validates(store):
    _, b1 = corrected_buffer(store, n=1)
    _, b2 = corrected_buffer(store, n=1)
    store.claim_ready_buffer("w", 60)
    store.claim_ready_buffer("w", 60)
    with pytest.raises(InvalidInputError, match="'promoted' or 'rejected'"):
        store.finish_claim(b1.id, "w", "done")
    with pytest.raises(InvalidInputError, match="needs a reason"):
        store.finish_claim(b1.id, "w", "rejected", reason="  ")
    with pytest.raises(UnknownAdapterError):
        store.finish_claim(b1.id, "w", "promoted", adapter_version="v7")
    assert store.get_buffer(b1.id).status == "training"
    store.register_adapter("v1", None, "adapters/v1", "llaca", {}, {})
    trained = store.finish_claim(b1.id, "w", "promoted", adapter_version="v1")
    assert (trained.status, trained.adapter_version) == ("promoted", "v1")
    rejected = store.finish_claim(b2.id, "w", "rejected", reason="forgetting 12% > 5% on the probe set")
    assert (rejected.status, rejected.reason) == ("rejected", "forgetting 12% > 5% on the probe set")
    with pytest.raises(BufferNotFoundError):
        store.finish_claim(999, "w", "promoted")
    with pytest.raises(InvalidInputError, match="worker_id"):
        store.claim_ready_buffer("", 60)
    with pytest.raises(InvalidInputError, match="lease_seconds"):
        store.claim_ready_buffer("w", 0)


def test_splits_and_heldout_items_across_trained_buffers(store):
    _, b1 = corrected_buffer(store, n=3)
    _, b2 = corrected_buffer(store, n=2)
    _, b3 = corrected_buffer(store, n=2)
    for buffer in (b1, b2, b3):
        store.claim_ready_buffer("w", 60)
    i1, i2 = b1.items[0].id, b2.items[1].id
    items = store.set_splits(b1.id, {i1: "heldout"})
    assert [i.split for i in items] == ["heldout", "train", "train"]
    store.set_splits(b2.id, {i2: "heldout"})
    store.set_splits(b3.id, {b3.items[0].id: "heldout"})
    before = store.buffer_items(b1.id)
    with pytest.raises(NotFoundError, match=f"not in task buffer {b1.id}"):
        store.set_splits(b1.id, {b1.items[1].id: "heldout", i2: "heldout"})  # i2 is b2's
    assert store.buffer_items(b1.id) == before  # all or nothing
    with pytest.raises(InvalidInputError, match="'train' or 'heldout'"):
        store.set_splits(b1.id, {i1: "test"})
    store.finish_claim(b1.id, "w", "promoted")
    store.finish_claim(b2.id, "w", "promoted")
    store.finish_claim(b3.id, "w", "rejected", reason="guard failed")
    assert [i.id for i in store.heldout_items()] == [i1, i2]
    assert [i.id for i in store.heldout_items("rejected")] == [b3.items[0].id]


def test_buffer_lookups(store):
    s, buffer = corrected_buffer(store, n=2)
    assert store.get_buffer(buffer.id) == buffer
    assert store.buffer_items(buffer.id) == list(buffer.items)
    assert store.session_buffers(s.id) == [buffer]
    for bad in (12345, "1", None):
        with pytest.raises(BufferNotFoundError):
            store.get_buffer(bad)
    assert row_counts(store)["task_buffers"] == 1
