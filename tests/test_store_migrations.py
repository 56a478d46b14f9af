"""Feedback store: schema migrations upgrade an existing database without loss."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

import feedback_store.schema as schema
from feedback_store import SCHEMA_VERSION, FeedbackStore, SchemaVersionError
from feedback_store.connection import Connections
from tests.test_store_support import png_bytes

# A version-1 database exactly as the first release wrote it, by hand (not through the
# migration code) so the test cannot drift along with it.
V1_DDL = """
CREATE TABLE schema_migrations (version INTEGER PRIMARY KEY, name TEXT NOT NULL, applied_at REAL NOT NULL);
CREATE TABLE sessions (id TEXT PRIMARY KEY, created_at REAL NOT NULL, user TEXT, client TEXT);
CREATE TABLE images (sha256 TEXT PRIMARY KEY, path TEXT NOT NULL, width INTEGER NOT NULL,
    height INTEGER NOT NULL, format TEXT NOT NULL, bytes INTEGER NOT NULL, source_format TEXT,
    created_at REAL NOT NULL);
CREATE TABLE adapter_versions (version TEXT PRIMARY KEY,
    parent_version TEXT REFERENCES adapter_versions(version), path TEXT NOT NULL,
    method TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('candidate', 'current', 'rejected', 'retired')),
    metrics TEXT NOT NULL DEFAULT '{}', library_versions TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL);
CREATE TABLE messages (id TEXT PRIMARY KEY, session_id TEXT NOT NULL REFERENCES sessions(id),
    parent_id TEXT REFERENCES messages(id), role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL, image_sha256 TEXT REFERENCES images(sha256),
    adapter_version TEXT REFERENCES adapter_versions(version), gen_params TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL);
CREATE INDEX idx_messages_session ON messages(session_id);
CREATE INDEX idx_messages_parent ON messages(parent_id);
CREATE TABLE feedback (id INTEGER PRIMARY KEY, message_id TEXT NOT NULL REFERENCES messages(id),
    kind TEXT NOT NULL CHECK (kind IN ('like', 'dislike', 'correction')), value TEXT,
    corrected_text TEXT, previous_text TEXT, created_at REAL NOT NULL);
CREATE INDEX idx_feedback_message ON feedback(message_id);
CREATE TABLE task_buffers (id INTEGER PRIMARY KEY, session_id TEXT NOT NULL REFERENCES sessions(id),
    status TEXT NOT NULL CHECK (status IN ('open', 'ready', 'training', 'trained', 'rejected')),
    adapter_version TEXT REFERENCES adapter_versions(version), created_at REAL NOT NULL,
    updated_at REAL NOT NULL);
CREATE INDEX idx_task_buffers_session ON task_buffers(session_id);
CREATE TABLE buffer_items (id INTEGER PRIMARY KEY, buffer_id INTEGER NOT NULL REFERENCES task_buffers(id),
    message_id TEXT NOT NULL REFERENCES messages(id), image_sha256 TEXT REFERENCES images(sha256),
    question TEXT NOT NULL, answer TEXT NOT NULL, created_at REAL NOT NULL);
CREATE INDEX idx_buffer_items_buffer ON buffer_items(buffer_id);
"""

V1_DATA = """
INSERT INTO schema_migrations VALUES (1, 'initial', 100.0);
INSERT INTO sessions VALUES ('s-alice', 100.0, 'alice', 'firefox'), ('s-bob', 101.0, NULL, NULL);
INSERT INTO images VALUES ('{sha}', 'images/{sha}.png', 32, 24, 'PNG', {size}, 'PNG', 100.0);
INSERT INTO adapter_versions VALUES
    ('v1', NULL, 'adapters/v1', 'llaca', 'current', '{{"acc": 0.5}}', '{{"peft": "0.13"}}', 110.0),
    ('v2', 'v1', 'adapters/v2', 'llaca', 'current', '{{"acc": 0.7}}', '{{"peft": "0.13"}}', 120.0);
INSERT INTO messages VALUES
    ('q1', 's-alice', NULL, 'user', 'What colour?', '{sha}', NULL, '{{}}', 102.0),
    ('a1', 's-alice', 'q1', 'assistant', 'green', NULL, 'v1', '{{"temperature": 0.2}}', 103.0),
    ('q2', 's-alice', 'a1', 'user', 'And the shape?', NULL, NULL, '{{}}', 104.0),
    ('a2', 's-alice', 'q2', 'assistant', 'circle', NULL, 'v1', '{{}}', 105.0),
    ('q3', 's-bob', NULL, 'user', 'Hi?', NULL, NULL, '{{}}', 106.0),
    ('a3', 's-bob', 'q3', 'assistant', 'Hello', NULL, NULL, '{{}}', 107.0);
INSERT INTO feedback VALUES
    (1, 'a1', 'correction', NULL, 'red', 'green', 108.0),
    (2, 'a2', 'correction', NULL, 'square', 'circle', 109.0),
    (3, 'a3', 'like', '1', NULL, NULL, 110.0);
INSERT INTO task_buffers VALUES
    (1, 's-alice', 'ready', NULL, 108.0, 108.5),
    (2, 's-alice', 'open', NULL, 109.0, 109.0),
    (3, 's-alice', 'open', NULL, 109.5, 109.5);
INSERT INTO buffer_items VALUES
    (1, 1, 'a1', '{sha}', 'What colour?', 'red', 108.0),
    (2, 3, 'a2', '{sha}', 'And the shape?', 'square', 109.5);
"""


def write_v1_database(data_dir: Path) -> str:
    """A v1 store with data, including states v2 forbids (two open buffers in one
    session, two current adapters). Returns the image's sha256."""
    (data_dir / "images").mkdir(parents=True)
    image = png_bytes()
    import hashlib

    sha = hashlib.sha256(image).hexdigest()
    (data_dir / "images" / f"{sha}.png").write_bytes(image)
    conn = sqlite3.connect(data_dir / "store.db")
    conn.executescript(V1_DDL + V1_DATA.format(sha=sha, size=len(image)))
    conn.execute("PRAGMA user_version = 1")
    conn.commit()
    conn.close()
    return sha


def columns(db_path: Path) -> dict[str, list[str]]:
    conn = sqlite3.connect(db_path)
    tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' ORDER BY name")]
    result = {t: [c[1] for c in conn.execute(f"PRAGMA table_info({t})")] for t in tables}
    conn.close()
    return result


def test_hand_written_v1_matches_what_migration_1_builds(tmp_path):
    write_v1_database(tmp_path / "hand")
    conns = Connections(tmp_path / "code.db", busy_timeout=5, synchronous="FULL", journal_mode="WAL")
    assert schema.migrate(conns, lambda: 0.0, target=1) == [1]
    conns.close()
    assert columns(tmp_path / "hand" / "store.db") == columns(tmp_path / "code.db")


def test_v1_database_is_upgraded_without_loss(tmp_path):
    data = tmp_path / "data"
    sha = write_v1_database(data)
    store = FeedbackStore(data)
    try:
        db = store._conns.get()
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION
        assert [r[0] for r in db.execute("SELECT version FROM schema_migrations ORDER BY version")] == [1, 2]
        # every old row is still there, unchanged
        assert [m.text for m in store.session_history("s-alice")] == ["What colour?", "green", "And the shape?", "circle"]
        assert store.get_message("s-alice", "a1").gen_params == {"temperature": 0.2}
        assert store.get_session("s-alice").user == "alice"
        assert store.image_path(sha).read_bytes() == png_bytes()
        assert store.conversation_image("a2") == sha
        # new columns were backfilled
        feedback = store.session_feedback("s-alice")
        assert [(f.id, f.kind, f.corrected_text, f.previous_text) for f in feedback] == [
            (1, "correction", "red", "green"), (2, "correction", "square", "circle")
        ]
        assert [f.id for f in store.session_feedback("s-bob")] == [3]
        buffers = {b.id: b for b in store.session_buffers("s-alice")}
        assert [i.split for b in buffers.values() for i in b.items] == ["train", "train"]
        assert [i.feedback_id for b in buffers.values() for i in b.items] == [1, 2]
        assert buffers[1].ready_at == 108.5 and buffers[1].attempts == 0
        # states v2 forbids were repaired, not dropped
        assert (buffers[2].status, buffers[3].status) == ("ready", "open")
        adapters = {a.version: a for a in store.list_adapters()}
        assert (adapters["v1"].status, adapters["v2"].status) == ("retired", "current")
        assert adapters["v2"].metrics == {"acc": 0.7} and adapters["v2"].parent_version == "v1"
        assert store.integrity_check() == ["ok"]
        # and the upgraded store works: the old ready buffer is claimable, corrections land
        claimed = store.claim_ready_buffer("w", 60)
        assert claimed.id == 1 and [i.answer for i in claimed.items] == ["red"]
        state = store.add_correction("s-alice", "a2", "a square")
        assert (state.buffer_id, state.size) == (3, 1)
        assert store.worker_states() == []
    finally:
        store.close()
    FeedbackStore(data).close()  # reopening applies nothing twice
    conn = sqlite3.connect(data / "store.db")
    assert conn.execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 2
    conn.close()


def test_several_threads_opening_an_old_database_upgrade_it_once(tmp_path):
    write_v1_database(tmp_path / "data")
    stores, errors = [], []
    barrier = threading.Barrier(4)

    def open_store() -> None:
        barrier.wait()
        try:
            stores.append(FeedbackStore(tmp_path / "data"))
        except BaseException as exc:  # noqa: BLE001
            errors.append(exc)

    threads = [threading.Thread(target=open_store) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == [] and len(stores) == 4
    assert stores[0]._conns.get().execute("SELECT count(*) FROM schema_migrations").fetchone()[0] == 2
    for s in stores:
        s.close()


def test_a_failing_migration_leaves_the_old_version_intact(tmp_path, monkeypatch):
    data = tmp_path / "data"
    write_v1_database(data)

    def broken(db) -> None:
        db.table("task_buffers").add_column("half_done", str)
        raise RuntimeError("disk full halfway through")

    monkeypatch.setattr(schema, "MIGRATIONS", (schema.MIGRATIONS[0], (2, "broken", broken)))
    with pytest.raises(RuntimeError, match="halfway"):
        FeedbackStore(data)
    conn = sqlite3.connect(data / "store.db")
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert "half_done" not in [c[1] for c in conn.execute("PRAGMA table_info(task_buffers)")]
    assert conn.execute("SELECT count(*) FROM messages").fetchone()[0] == 6
    conn.close()


def test_newer_or_foreign_databases_are_refused(tmp_path):
    newer = tmp_path / "newer"
    newer.mkdir()
    conn = sqlite3.connect(newer / "store.db")
    conn.execute("PRAGMA user_version = 99")
    conn.close()
    with pytest.raises(SchemaVersionError, match="schema version 99.*Upgrade LLaCA Studio"):
        FeedbackStore(newer)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    conn = sqlite3.connect(foreign / "store.db")
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.close()
    with pytest.raises(SchemaVersionError, match="not a feedback store"):
        FeedbackStore(foreign)
    for path in (newer, foreign):  # refused without being touched
        conn = sqlite3.connect(path / "store.db")
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
        conn.close()
        assert sorted(p.name for p in path.iterdir()) == ["store.db"]
    conn = sqlite3.connect(foreign / "store.db")
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["recipes"]
    conn.close()
