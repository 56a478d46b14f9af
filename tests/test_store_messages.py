"""Feedback store: opening, sessions, messages, images, likes, session views, isolation."""

from __future__ import annotations

import hashlib
import io
import os
import threading
import time

import pytest
from PIL import Image

from feedback_store import (
    SCHEMA_VERSION,
    FeedbackStore,
    InvalidFeedbackError,
    InvalidInputError,
    MessageNotFoundError,
    NotFoundError,
    SessionNotFoundError,
    StoreClosedError,
    UnknownAdapterError,
)
from tests.store_helpers import ask, image_files, jpeg_bytes, png_bytes, row_counts


def test_open_creates_only_the_data_dir_layout(tmp_path):
    data = tmp_path / "data"
    s = FeedbackStore(data)
    try:
        s.start_session()
        assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
        assert (data / "images").is_dir() and (data / "adapters").is_dir()
        db = s._conns.get()
        assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        assert db.execute("PRAGMA foreign_keys").fetchone()[0] == 1
        assert db.execute("PRAGMA synchronous").fetchone()[0] == 2  # FULL
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
    finally:
        s.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]
    assert {"store.db", "images", "adapters"} <= {p.name for p in data.iterdir()}
    with pytest.raises(StoreClosedError):
        s.start_session()
    # reopening an existing store keeps its data
    with FeedbackStore(data) as s2:
        assert s2._conns.get().execute("SELECT count(*) FROM sessions").fetchone()[0] == 1


def test_each_thread_gets_its_own_connection(store):
    seen = []
    t = threading.Thread(target=lambda: seen.append(store._conns.get()))
    t.start()
    t.join()
    assert seen[0] is not store._conns.get()
    assert store._conns.get() is store._conns.get()


def test_start_session(store):
    s = store.start_session(user="ada", client="firefox")
    row = store._conns.get().execute("SELECT id, user, client FROM sessions").fetchone()
    assert s.user == "ada" and s.client == "firefox" and tuple(row) == (s.id, "ada", "firefox")
    anonymous = store.start_session()
    assert anonymous.user is None and anonymous.id != s.id
    with pytest.raises(SessionNotFoundError) as missing:
        store.session_history("no-such-session")
    assert missing.value.session_id == "no-such-session"


def test_user_message_with_image_is_stored_content_addressed(store):
    s = store.start_session()
    q = store.record_user_message(s.id, "What colour?", image_bytes=jpeg_bytes(size=(40, 20)))
    assert q.role == "user" and q.text == "What colour?" and q.parent_id is None
    path = store.image_path(q.image_sha256)
    data = path.read_bytes()
    assert path.parent == store.data_dir / "images"
    assert hashlib.sha256(data).hexdigest() == q.image_sha256
    row = store._conns.get().execute("SELECT width, height, format, source_format, bytes FROM images").fetchone()
    assert tuple(row) == (40, 20, "PNG", "JPEG", len(data))
    with Image.open(io.BytesIO(data)) as im:
        assert im.format == "PNG" and im.mode == "RGB" and im.size == (40, 20)
    assert store.get_message(s.id, q.id) == q


def test_same_pixels_are_stored_once(store):
    s = store.start_session()
    plain = png_bytes((1, 2, 3))
    from PIL import PngImagePlugin

    meta = PngImagePlugin.PngInfo()
    meta.add_text("Comment", "same pixels, different file bytes")
    tagged = png_bytes((1, 2, 3), pnginfo=meta)
    assert plain != tagged
    q1 = store.record_user_message(s.id, "one", image_bytes=plain)
    q2 = store.record_user_message(store.start_session().id, "two", image_bytes=tagged)
    q3 = store.record_user_message(s.id, "three", image_bytes=png_bytes((9, 9, 9)))
    assert q1.image_sha256 == q2.image_sha256 != q3.image_sha256
    assert row_counts(store)["images"] == 2
    assert len(image_files(store)) == 2


def test_exif_orientation_applied_and_metadata_dropped(store):
    image = Image.new("RGB", (60, 20), (10, 200, 10))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees on display
    exif[0x010E] = "secret description"
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", exif=exif.tobytes())
    q = store.record_user_message(store.start_session().id, "rotated?", image_bytes=buffer.getvalue())
    stored = store.image_path(q.image_sha256).read_bytes()
    assert b"secret description" not in stored
    with Image.open(io.BytesIO(stored)) as im:
        assert im.size == (20, 60)
        assert not im.getexif()


def test_transparent_png_is_composited_on_white(store):
    buffer = io.BytesIO()
    Image.new("RGBA", (4, 4), (0, 0, 0, 0)).save(buffer, format="PNG")
    q = store.record_user_message(store.start_session().id, "see-through?", image_bytes=buffer.getvalue())
    with Image.open(store.image_path(q.image_sha256)) as im:
        assert im.mode == "RGB" and im.getpixel((0, 0)) == (255, 255, 255)


def test_follow_up_turns_find_the_conversation_image(store):
    s = store.start_session()
    q1, a1 = ask(store, s, "What colour?", "red", image=png_bytes((255, 0, 0)))
    q2, a2 = ask(store, s, "And its shape?", "square", parent_id=a1.id)
    assert q2.image_sha256 is None and q2.parent_id == a1.id
    q3, a3 = ask(store, s, "Now this one?", "blue", image=png_bytes((0, 0, 255)), parent_id=a2.id)
    _, a4 = ask(store, s, "hello", "hi")  # a conversation without an image
    for answer, fix in ((a2, "circle"), (a3, "green"), (a4, "hello")):  # a correction carries the turn's image
        store.add_correction(s.id, answer.id, fix)
    items = store.session_buffers(s.id)[0].items
    assert [i.image_sha256 for i in items] == [q1.image_sha256, q3.image_sha256, None]
    assert q3.image_sha256 != q1.image_sha256


def test_record_answer_keeps_version_and_params(store):
    s = store.start_session()
    store.register_adapter("v1", None, store.data_dir / "adapters" / "v1", "llaca", {}, {})
    q = store.record_user_message(s.id, "Which side?", image_bytes=png_bytes())
    a = store.record_answer(s.id, q.id, "left", "v1", {"temperature": 0.7, "max_new_tokens": 32})
    assert store.get_message(s.id, a.id) == a
    assert (a.role, a.parent_id, a.adapter_version) == ("assistant", q.id, "v1")
    assert a.gen_params == {"temperature": 0.7, "max_new_tokens": 32}
    assert a.image_sha256 is None
    base = store.record_answer(s.id, q.id, "", None, {})  # stopped before the first token
    assert base.text == "" and base.adapter_version is None
    with pytest.raises(UnknownAdapterError, match="no adapter version 'v9'") as unknown:
        store.record_answer(s.id, q.id, "left", "v9", {})
    assert unknown.value.version == "v9"
    with pytest.raises(InvalidInputError, match="must reply to a user message") as bad:
        store.record_answer(s.id, a.id, "again", None, {})
    assert bad.value.field == "parent_id"
    other = store.start_session()
    with pytest.raises(MessageNotFoundError):
        store.record_answer(other.id, q.id, "left", None, {})
    assert [m.id for m in store.session_history(s.id)] == [q.id, a.id, base.id]


def test_likes_and_dislikes(store):
    s = store.start_session()
    q, a = ask(store, s)
    like = store.record_feedback(s.id, a.id, "like")
    dislike = store.record_feedback(s.id, a.id, "dislike", value="  too vague ")
    assert (like.kind, like.value, like.session_id, like.message_id) == ("like", None, s.id, a.id)
    assert dislike.value == "  too vague " and dislike.id > like.id
    assert store.session_feedback(s.id) == [like, dislike]
    with pytest.raises(InvalidFeedbackError, match="'love' is not 'like' or 'dislike'") as love:
        store.record_feedback(s.id, a.id, "love")
    assert love.value.kind == "love"
    with pytest.raises(InvalidFeedbackError, match="add_correction"):
        store.record_feedback(s.id, a.id, "correction")
    with pytest.raises(InvalidFeedbackError, match="only the assistant's answers"):
        store.record_feedback(s.id, q.id, "like")
    assert len(store.session_feedback(s.id)) == 2


def test_sessions_are_isolated(store):
    alice, bob = store.start_session(user="alice"), store.start_session(user="bob")
    qa, aa = ask(store, alice, "alice's question", "alice's answer", image=png_bytes((1, 1, 1)))
    qb, ab = ask(store, bob, "bob's question", "bob's answer")
    store.record_feedback(alice.id, aa.id, "like")
    store.add_correction(alice.id, aa.id, "alice's fix")
    assert [m.text for m in store.session_history(bob.id)] == ["bob's question", "bob's answer"]
    assert store.session_feedback(bob.id) == [] and store.session_buffers(bob.id) == []
    before = row_counts(store)
    with pytest.raises(MessageNotFoundError) as other:
        store.get_message(bob.id, aa.id)
    with pytest.raises(MessageNotFoundError) as missing:
        store.get_message(bob.id, "00000000-0000-0000-0000-000000000000")
    assert str(other.value) == str(missing.value)  # no hint that the id exists elsewhere
    assert "alice" not in str(other.value) and other.value.facts == {"message_id": aa.id}
    for action in (
        lambda: store.record_feedback(bob.id, aa.id, "dislike"),
        lambda: store.add_correction(bob.id, aa.id, "bob overrides alice"),
        lambda: store.record_user_message(bob.id, "reply", parent_id=aa.id),
        lambda: store.record_answer(bob.id, qa.id, "bob answers alice", None, {}),
    ):
        with pytest.raises(MessageNotFoundError):
            action()
    assert row_counts(store) == before
    assert [b.items[0].answer for b in store.session_buffers(alice.id)] == ["alice's fix"]
    with pytest.raises(SessionNotFoundError):
        store.session_history("not-a-session")


def test_text_bytes_and_nul_characters(store):
    s = store.start_session()
    q = store.record_user_message(s.id, "Quelle couleur ?\x00".encode("utf-8"))
    assert q.text == "Quelle couleur ?"
    assert store.get_message(s.id, q.id).text == "Quelle couleur ?"


def test_image_lookup_errors(store):
    with pytest.raises(NotFoundError, match="no stored image") as missing:
        store.image_path("0" * 64)
    assert missing.value.sha256 == "0" * 64
    with pytest.raises(NotFoundError):
        store.image_path("../../etc/passwd")


def test_cleanup_removes_only_old_orphans(store):
    s = store.start_session()
    q = store.record_user_message(s.id, "kept", image_bytes=png_bytes())
    images = store.data_dir / "images"
    orphan, temp, young = images / ("a" * 64 + ".png"), images / ".tmp-dead", images / ("b" * 64 + ".png")
    for path in (orphan, temp, young):
        path.write_bytes(b"left by a crash")
    old = time.time() - 7200
    for path in (orphan, temp, store.image_path(q.image_sha256)):
        os.utime(path, (old, old))
    report = store.cleanup_orphans(min_age_seconds=3600, dry_run=True)
    assert report.orphan_images == (orphan.name,) and report.temp_files == (temp.name,)
    assert orphan.exists() and temp.exists()
    report = store.cleanup_orphans(min_age_seconds=3600)
    assert report.removed and report.missing_images == ()
    assert not orphan.exists() and not temp.exists() and young.exists()
    assert store.image_path(q.image_sha256).exists()
    store.image_path(q.image_sha256).unlink()
    assert store.cleanup_orphans().missing_images == (q.image_sha256,)
    assert store.integrity_check() == ["ok"]


def test_writer_restores_an_image_file_removed_before_its_row(store, monkeypatch):
    """An image file removed (by cleanup) between the file write and the row's
    transaction is written again under the write lock: a row never lacks its file."""
    import feedback_store.conversations as store_module

    real, calls = store_module.write_image_file, []

    def racing(data_dir, prepared):
        written = real(data_dir, prepared)
        if not calls:
            (data_dir / prepared.relative_path).unlink()  # cleanup ran in between
        calls.append(written)
        return written

    monkeypatch.setattr(store_module, "write_image_file", racing)
    q = store.record_user_message(store.start_session().id, "first", image_bytes=png_bytes((5, 6, 7)))
    assert calls == [True, True]
    assert store.image_path(q.image_sha256).is_file()
    assert store.cleanup_orphans(min_age_seconds=0).missing_images == ()
