"""The app words the feedback store's typed errors for people: what is wrong and what to do.

The store's own messages state facts only (``tests/test_store_bad_input.py`` checks that);
``app.errors.user_message`` is the one place that turns them into advice.
"""

from __future__ import annotations

import sqlite3

import pytest

from app.errors import user_message
from feedback_store import FeedbackStore, StoreError, filesystem
from tests.store_helpers import ask, png_bytes


def raised(action) -> StoreError:
    with pytest.raises(StoreError) as info:
        action()
    return info.value


def test_bad_input_is_worded_with_what_to_do(store):
    s = store.start_session()
    _, answer = ask(store, s, "What colour?", "red", image=png_bytes())
    cases = [
        (lambda: store.record_user_message(s.id, "q", image_bytes=b"%PDF-1.7"),
         "not an image that can be read. Upload a PNG, JPEG, WebP, GIF or BMP image."),
        (lambda: store.record_user_message(s.id, "q", image_bytes=b""), "empty (0 bytes). Choose the file again."),
        (lambda: store.record_user_message(s.id, "q", image_bytes=b"\x89PNG\r\n\x1a\n" + bytes(20_000_001)),
         "That image is too large: the image file is 20.0 MB; the limit is 20.0 MB. Save it smaller"),
        (lambda: store.record_user_message(s.id, "   "), "The question is empty. Type some text and try again."),
        (lambda: store.record_user_message(s.id, "x" * 4001),
         "The question is too long (4,001 characters; the limit is 4,000). Shorten it and try again."),
        (lambda: store.record_user_message(s.id, b"caf\xe9"), "The question is not valid text. Re-type it"),
        (lambda: store.add_correction(s.id, answer.id, " red "), "same as the original answer. Change it, or use 👍"),
        (lambda: store.add_correction(s.id, "nope", "blue"), "not part of this conversation"),
        (lambda: store.record_feedback(s.id, answer.id, "love"), "There is no rating 'love'"),
        (lambda: store.mark_ready(s.id), "nothing to teach yet in this session: correct an answer first"),
        (lambda: store.record_user_message("gone", "q"), "This chat session is unknown"),
        (lambda: store.rollback_to("v9"), "There is no adapter version 'v9'. Pick one from the list of versions."),
    ]
    for action, words in cases:
        assert words in user_message(raised(action))


def test_store_trouble_is_worded_with_what_to_do(tmp_path, monkeypatch):
    table = f"1 0 0:1 / / rw - ext4 /dev/a rw\n2 1 0:2 / {tmp_path} rw - nfs4 s:/v rw\n"
    monkeypatch.setattr(filesystem, "read_mount_table", lambda: table)
    text = user_message(raised(lambda: FeedbackStore(tmp_path / "nfs")))
    assert "network filesystem (nfs4)" in text and "LLACA_DATA_DIR" in text and "llaca.tune" in text
    monkeypatch.undo()
    newer = tmp_path / "newer"
    newer.mkdir()
    sqlite3.connect(newer / "store.db").execute("PRAGMA user_version = 99").connection.close()
    text = user_message(raised(lambda: FeedbackStore(newer)))
    assert "schema version 99" in text and "Point LLACA_DATA_DIR (--data-dir) at another folder" in text
    busy = FeedbackStore(tmp_path / "busy", busy_timeout=0.1)
    blocker = sqlite3.connect(tmp_path / "busy" / "store.db", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")
    try:
        assert "busy (locked for over 0.1 s). Try again in a moment." in user_message(raised(busy.start_session))
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
        busy.close()
