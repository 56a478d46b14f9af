"""Forgetting and conflicts without a server: the store's deletions and jobs, the conflict
rule of the guard, conflicts held for review, and provenance in a routed system on disk."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from feedback_store import FeedbackStore, NotFoundError
from feedback_store.status import MAX_REFUSALS
from llaca.worker.guard import CONFLICT, PROBE, PairedSet, decide_paired


def _png(color) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (16, 16), color).save(buf, format="PNG")
    return buf.getvalue()


def _corrected(store, session, color="red", correction="blue", threshold=None):
    q = store.record_user_message(session, "What color is the shape?", image_bytes=_png(color))
    a = store.record_answer(session, q.id, "green")
    return store.add_correction(session, a.id, correction, ready_threshold=threshold)


@pytest.fixture
def store(tmp_path):
    with FeedbackStore(tmp_path / "data") as s:
        yield s


def test_forgetting_an_author_deletes_their_rows_and_only_the_images_no_one_else_uses(store):
    ada, bob = store.start_session(user="ada").id, store.start_session(user="bob").id
    _corrected(store, ada, "red")
    _corrected(store, ada, "yellow")  # only ada's
    _corrected(store, bob, "red")  # the same image as ada's first
    store.hold_correction(ada, store.record_answer(ada, store.record_user_message(ada, "Q?", image_bytes=_png("red")).id,
                                                   "x").id, "y")
    items = store.session_buffers(ada)[0].items
    store.set_item_groups(items[0].buffer_id, {it.id: "g1" for it in items})
    report = store.forget_author("ada")
    assert (report.author, report.sessions, report.corrections, report.groups) == ("ada", 1, 3, ("g1",))
    assert report.images == 1  # yellow; red is still bob's
    with store._conns.read() as db:
        for table, where in (("sessions", "user = 'ada'"), ("reviews", "author = 'ada'")):
            assert not list(db.query(f"SELECT 1 FROM {table} WHERE {where}"))
        assert db.execute("SELECT count(*) FROM images").fetchone()[0] == 1
        assert db.execute("SELECT count(*) FROM buffer_items").fetchone()[0] == 1  # bob's
    assert len(list((store.data_dir / "images").glob("*.png"))) == 1
    with pytest.raises(NotFoundError, match="no author 'ada'"):
        store.forget_author("ada")
    assert store.integrity_check() == ["ok"]


def test_forgetting_one_correction_keeps_the_question_and_the_answer(store):
    s = store.start_session().id
    state = _corrected(store, s)
    (item,) = store.session_buffers(s)[0].items
    report = store.forget_correction(item.feedback_id)
    assert report.corrections == 1 and store.session_buffers(s)[0].items == ()
    assert len(store.session_history(s)) == 2 and state.buffer_id
    with pytest.raises(NotFoundError):
        store.forget_correction(item.feedback_id)


def test_retrain_jobs_are_claimed_once_and_finished(store):
    job = store.request_retrain(["g2", "g1", "g1"], "forgot ada")
    assert job.groups == ("g1", "g2") and job.status == "queued"
    claimed = store.claim_job("w1")
    assert claimed.id == job.id and claimed.status == "running" and store.claim_job("w2") is None
    done = store.finish_job(job.id, "done", None, "nothing left to retrain")
    assert done.status == "done" and store.claim_job("w1") is None


def test_a_conflict_needs_few_items_to_object_and_ignores_one_slip():
    probes = PairedSet("color", PROBE, [True] * 10, [True] * 10)
    two_of_two = PairedSet("what ada taught", CONFLICT, [False, False], [True, True])
    report = decide_paired([probes, two_of_two], margin=5.0)
    assert not report.passed and "conflict: it contradicts what ada taught: 2 of the 2" in report.reason
    one_slip = PairedSet("what ada taught", CONFLICT, [False] + [True] * 7, [True] * 8)
    assert decide_paired([probes, one_slip], margin=5.0).passed
    two_of_eight = PairedSet("what ada taught", CONFLICT, [False, False] + [True] * 6, [True] * 8)
    assert not decide_paired([probes, two_of_eight], margin=5.0).passed  # one buffer's evidence has teeth
    noise = PairedSet("what ada taught", CONFLICT, [False, False, True, True] + [True] * 4, [True, True, False, False] + [True] * 4)
    assert decide_paired([probes, noise], margin=5.0).passed  # as many fixed as broken: not a conflict
    five_of_24 = PairedSet("what ada taught", CONFLICT, [False] * 5 + [True] * 19, [True] * 24)
    assert not decide_paired([probes, five_of_24], margin=5.0).passed  # the measured mirrored poison


def test_a_conflict_held_for_review_overrules_the_other_author_only_when_approved(store):
    ada, bob = store.start_session(user="ada").id, store.start_session(user="bob").id
    _corrected(store, ada, "red", "blue", threshold=1)
    (learned,) = store.session_buffers(ada)[0].items
    _corrected(store, bob, "red", "purple", threshold=1)
    (contra,) = store.session_buffers(bob)[0].items
    with store._conns.write() as db:  # as if v1 learned ada's, and bob's run was refused
        db.execute("INSERT INTO adapter_versions (version, path, method, status, created_at, updated_at) "
                   "VALUES ('v1', 'adapters/v1', 'llaca+groups', 'current', 0, 0)")
        db.execute("UPDATE buffer_items SET learned_in = 'v1' WHERE id = ?", [learned.id])
        db.execute("UPDATE task_buffers SET status = 'rejected'")
    (review,) = store.hold_conflicts([contra.id], "bob's corrections contradict what ada taught group g1", [learned.id])
    assert review.kind == "conflict" and review.author == "bob" and review.conflicts == [learned.id]
    (item,) = store.session_buffers(bob)[0].items
    assert item.refusals == MAX_REFUSALS and item.pending_reason.startswith("conflict, waiting")
    store.approve_reviews([review.feedback_id], by="admin", ready_threshold=8)
    (overruled,) = store.session_buffers(ada)[0].items
    assert overruled.learned_in is None and "overruled" in overruled.pending_reason
    requeued = store.session_buffers(bob)[-1]
    assert requeued.status == "ready" and [i.answer for i in requeued.items] == ["purple"]


def test_provenance_survives_the_disk_and_dropping_a_group(tmp_path):
    from llaca.groups.codebook import InstructionCodebook
    from llaca.groups.system import ADAPTER_FILES, RoutedSystem

    src = tmp_path / "src"
    for g in ("g1", "g2"):
        (src / g).mkdir(parents=True)
        for f in ADAPTER_FILES:
            (src / g / f).write_text(g)
    book = InstructionCodebook()
    system = RoutedSystem.empty(book).replaced("g1", src / "g1", "v1", book, ["ada"]).replaced(
        "g2", src / "g2", "v2", book, ["bob", "ada"])
    system = system.replaced("g1", src / "g1", "v3", book)  # continued: its authors so far are kept
    loaded = RoutedSystem.load(system.write(tmp_path / "v3"))
    assert loaded.authors == {"g1": ["ada"], "g2": ["ada", "bob"]} and loaded.groups_of("bob") == ["g2"]
    dropped = loaded.without(["g1"])
    assert list(dropped.adapters) == ["g2"] and dropped.authors == {"g2": ["ada", "bob"]}
    out = dropped.write(tmp_path / "v4")
    assert (out / "g2" / ADAPTER_FILES[1]).stat().st_ino == (tmp_path / "v3" / "g2" / ADAPTER_FILES[1]).stat().st_ino


def test_conflicts_set_aside_are_not_retried_until_the_author_they_contradict_is_forgotten(store):
    ada, bob = store.start_session(user="ada").id, store.start_session(user="bob").id
    _corrected(store, ada, "red", "blue", threshold=1)
    _corrected(store, bob, "red", "purple", threshold=1)
    (learned,), (contra,) = store.session_buffers(ada)[0].items, store.session_buffers(bob)[0].items
    store.set_item_groups(learned.buffer_id, {learned.id: "g1"})
    store.set_item_groups(contra.buffer_id, {contra.id: "g1"})
    assert store.set_aside([contra.id], "conflict: bob's corrections contradict what ada taught") == 1
    (item,) = store.session_buffers(bob)[0].items
    assert item.refusals == MAX_REFUSALS and item.pending_reason.startswith("conflict: ")
    store.forget_author("ada")
    (item,) = store.session_buffers(bob)[0].items
    assert item.refusals == 0 and "ada was forgotten" in item.pending_reason
