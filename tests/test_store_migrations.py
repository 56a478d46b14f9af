"""Feedback store schema: a new database gets the current schema, built once and atomically;
a database this code does not know (another version, or not a feedback store) is refused
untouched. No database was released before this schema, so there are no migrations to test
(``feedback_store/schema.py`` says how to add one)."""

from __future__ import annotations

import sqlite3
import threading
from pathlib import Path

import pytest

import feedback_store.schema as schema
from feedback_store import SCHEMA_VERSION, FeedbackStore, SchemaVersionError

TABLES = ["adapter_versions", "buffer_items", "feedback", "images", "jobs", "messages", "reviews", "sessions",
          "task_buffers", "worker_status"]


def inspect(db_path: Path) -> tuple[int, list[str], list[str]]:
    """(user_version, tables, indexes) of a database file."""
    conn = sqlite3.connect(db_path)
    version = conn.execute("PRAGMA user_version").fetchone()[0]
    names = {kind: [r[0] for r in conn.execute(
        "SELECT name FROM sqlite_master WHERE type = ? AND name NOT LIKE 'sqlite_%' ORDER BY name", [kind])]
        for kind in ("table", "index")}
    conn.close()
    return version, names["table"], names["index"]


def test_a_new_database_gets_the_current_schema(tmp_path):
    FeedbackStore(tmp_path / "data").close()
    version, tables, indexes = inspect(tmp_path / "data" / "store.db")
    assert version == SCHEMA_VERSION and tables == TABLES
    assert {"idx_task_buffers_one_open", "idx_adapter_versions_one_current"} <= set(indexes)
    with FeedbackStore(tmp_path / "data") as store:  # reopening changes nothing
        store.start_session()
    assert inspect(tmp_path / "data" / "store.db") == (version, tables, indexes)


def test_several_threads_creating_a_database_build_it_once(tmp_path):
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
    assert len({s.start_session().id for s in stores}) == 4
    for s in stores:
        s.close()
    assert inspect(tmp_path / "data" / "store.db")[:2] == (SCHEMA_VERSION, TABLES)


def test_a_failure_while_creating_leaves_an_empty_database(tmp_path, monkeypatch):
    monkeypatch.setattr(schema, "SCHEMA", schema.SCHEMA + "CREATE TABLE sessions (id TEXT);")  # fails last
    with pytest.raises(sqlite3.OperationalError, match="already exists"):
        FeedbackStore(tmp_path / "data")
    assert inspect(tmp_path / "data" / "store.db") == (0, [], [])
    monkeypatch.undo()
    FeedbackStore(tmp_path / "data").close()  # and a later open builds it
    assert inspect(tmp_path / "data" / "store.db")[:2] == (SCHEMA_VERSION, TABLES)


@pytest.mark.parametrize("version", [SCHEMA_VERSION + 1, 99, 1])
def test_another_schema_version_is_refused_untouched(tmp_path, version):
    conn = sqlite3.connect(tmp_path / "store.db")
    conn.execute("CREATE TABLE sessions (id TEXT PRIMARY KEY)")
    conn.execute(f"PRAGMA user_version = {version}")
    conn.close()
    with pytest.raises(SchemaVersionError, match=f"schema version {version}; this code reads version {SCHEMA_VERSION}") as err:
        FeedbackStore(tmp_path)
    assert (err.value.version, err.value.supported, err.value.path) == (version, SCHEMA_VERSION, tmp_path / "store.db")
    assert inspect(tmp_path / "store.db") == (version, ["sessions"], [])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.db"]  # no images/, no WAL files


def _version3_schema() -> str:
    """The schema as version 3 wrote it: no authors, no review queue."""
    from feedback_store.schema import SCHEMA

    v3 = SCHEMA.replace("    client TEXT,\n    author TEXT,\n    quota_key TEXT\n", "    client TEXT\n")
    for index in ("CREATE INDEX idx_sessions_author ON sessions(author);",
                  "CREATE INDEX idx_sessions_quota_key ON sessions(quota_key);"):
        v3 = v3.replace(index, "")
    assert "author" not in v3[:v3.index("CREATE TABLE images")]
    return v3[:v3.index("CREATE TABLE reviews")] + v3[v3.index("CREATE TABLE worker_status"):]


def test_a_version_3_database_is_upgraded_in_place_with_authors(tmp_path):
    conn = sqlite3.connect(tmp_path / "store.db")
    conn.executescript(_version3_schema())
    conn.execute("INSERT INTO sessions (id, created_at, user, client) VALUES ('0123456789ab-guest', 1.0, NULL, 'x')")
    conn.execute("INSERT INTO sessions (id, created_at, user, client) VALUES ('s2', 2.0, 'ada', NULL)")
    conn.execute("PRAGMA user_version = 3")
    conn.commit()
    conn.close()
    with FeedbackStore(tmp_path) as store:
        assert store.author_of("0123456789ab-guest") == "guest-01234567"
        assert store.author_of("s2") == "ada" and store.quota_key_of("s2") == "ada"
        assert store.pending_reviews() == []
    version, tables, indexes = inspect(tmp_path / "store.db")
    assert version == SCHEMA_VERSION and tables == TABLES and "idx_sessions_author" in indexes


def test_a_foreign_database_is_refused_untouched(tmp_path):
    conn = sqlite3.connect(tmp_path / "store.db")
    conn.execute("CREATE TABLE recipes (name TEXT)")
    conn.close()
    with pytest.raises(SchemaVersionError, match="not a feedback store") as err:
        FeedbackStore(tmp_path)
    assert (err.value.version, err.value.tables) == (0, ["recipes"])
    conn = sqlite3.connect(tmp_path / "store.db")
    assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "delete"
    assert [r[0] for r in conn.execute("SELECT name FROM sqlite_master")] == ["recipes"]
    conn.close()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["store.db"]
