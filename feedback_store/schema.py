"""The database schema, built and upgraded by numbered migrations.

The schema version is SQLite's ``PRAGMA user_version`` (transactional, in the file
header); ``schema_migrations`` keeps a human-readable log of what ran when. All pending
migrations run in ONE ``BEGIN IMMEDIATE`` transaction, re-reading the version after
taking the write lock, so two processes opening an old database at the same moment
upgrade it exactly once, and a crash mid-upgrade leaves the old version intact.

A database written by newer code (version above ``SCHEMA_VERSION``) is refused rather
than guessed at. Migrations never drop or rewrite user data; they add columns and
tables, backfill them, and repair states that later constraints forbid.

History:
- v1 ``initial``: sessions, images, messages, feedback, task_buffers, buffer_items,
  adapter_versions.
- v2 ``leases_splits_worker_status``: buffer leases (claimed_by, lease_until, ready_at,
  attempts, reason), train/held-out splits, feedback.session_id, adapter reason and
  updated_at, one-open-buffer-per-session and one-current-adapter unique indexes,
  the worker_status table.
"""

from __future__ import annotations

import logging
from typing import Callable

from sqlite_utils import Database

from .connection import Connections
from .errors import SchemaVersionError

log = logging.getLogger(__name__)

V1_SQL = """
CREATE TABLE IF NOT EXISTS schema_migrations (
    version INTEGER PRIMARY KEY,
    name TEXT NOT NULL,
    applied_at REAL NOT NULL
);
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    user TEXT,
    client TEXT
);
CREATE TABLE images (
    sha256 TEXT PRIMARY KEY,
    path TEXT NOT NULL,
    width INTEGER NOT NULL,
    height INTEGER NOT NULL,
    format TEXT NOT NULL,
    bytes INTEGER NOT NULL,
    source_format TEXT,
    created_at REAL NOT NULL
);
CREATE TABLE adapter_versions (
    version TEXT PRIMARY KEY,
    parent_version TEXT REFERENCES adapter_versions(version),
    path TEXT NOT NULL,
    method TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('candidate', 'current', 'rejected', 'retired')),
    metrics TEXT NOT NULL DEFAULT '{}',
    library_versions TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    parent_id TEXT REFERENCES messages(id),
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    image_sha256 TEXT REFERENCES images(sha256),
    adapter_version TEXT REFERENCES adapter_versions(version),
    gen_params TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX idx_messages_session ON messages(session_id);
CREATE INDEX idx_messages_parent ON messages(parent_id);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages(id),
    kind TEXT NOT NULL CHECK (kind IN ('like', 'dislike', 'correction')),
    value TEXT,
    corrected_text TEXT,
    previous_text TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX idx_feedback_message ON feedback(message_id);
CREATE TABLE task_buffers (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    status TEXT NOT NULL CHECK (status IN ('open', 'ready', 'training', 'promoted', 'rejected')),
    adapter_version TEXT REFERENCES adapter_versions(version),
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX idx_task_buffers_session ON task_buffers(session_id);
CREATE TABLE buffer_items (
    id INTEGER PRIMARY KEY,
    buffer_id INTEGER NOT NULL REFERENCES task_buffers(id),
    message_id TEXT NOT NULL REFERENCES messages(id),
    image_sha256 TEXT REFERENCES images(sha256),
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    created_at REAL NOT NULL
);
CREATE INDEX idx_buffer_items_buffer ON buffer_items(buffer_id);
"""


def _v1_initial(db: Database) -> None:
    db.executescript(V1_SQL)


def _v2_leases_splits_worker_status(db: Database) -> None:
    buffers = db.table("task_buffers")
    buffers.add_column("claimed_by", str)
    buffers.add_column("lease_until", float)
    buffers.add_column("ready_at", float)
    buffers.add_column("attempts", int, not_null_default=0)
    buffers.add_column("reason", str)
    db.execute("UPDATE task_buffers SET ready_at = updated_at WHERE status != 'open'")
    # Repair before the constraint: a session keeps only its newest open buffer
    # open; older open ones become ready (their corrections are kept, not dropped).
    db.execute(
        """UPDATE task_buffers SET status = 'ready', ready_at = updated_at
           WHERE status = 'open' AND id NOT IN (
               SELECT max(id) FROM task_buffers WHERE status = 'open' GROUP BY session_id)"""
    )
    db.execute(
        "CREATE UNIQUE INDEX idx_task_buffers_one_open ON task_buffers(session_id) "
        "WHERE status = 'open'"
    )
    db.execute("CREATE INDEX idx_task_buffers_status ON task_buffers(status, ready_at, id)")

    db.execute(
        "ALTER TABLE buffer_items ADD COLUMN split TEXT NOT NULL DEFAULT 'train' "
        "CHECK (split IN ('train', 'heldout'))"
    )
    db.execute("ALTER TABLE buffer_items ADD COLUMN feedback_id INTEGER REFERENCES feedback(id)")
    db.table("buffer_items").add_column("updated_at", float)
    db.execute("UPDATE buffer_items SET updated_at = created_at")
    db.execute(
        """UPDATE buffer_items SET feedback_id = (
               SELECT max(f.id) FROM feedback f
               WHERE f.message_id = buffer_items.message_id AND f.kind = 'correction')"""
    )
    db.execute("CREATE INDEX idx_buffer_items_message ON buffer_items(message_id)")

    db.execute("ALTER TABLE feedback ADD COLUMN session_id TEXT REFERENCES sessions(id)")
    db.execute(
        "UPDATE feedback SET session_id = "
        "(SELECT m.session_id FROM messages m WHERE m.id = feedback.message_id)"
    )
    db.execute("CREATE INDEX idx_feedback_session ON feedback(session_id)")

    adapters = db.table("adapter_versions")
    adapters.add_column("reason", str)
    adapters.add_column("updated_at", float)
    db.execute("UPDATE adapter_versions SET updated_at = created_at")
    db.execute(
        """UPDATE adapter_versions SET status = 'retired' WHERE status = 'current'
           AND rowid NOT IN (SELECT rowid FROM adapter_versions WHERE status = 'current'
                             ORDER BY created_at DESC, rowid DESC LIMIT 1)"""
    )
    db.execute(
        "CREATE UNIQUE INDEX idx_adapter_versions_one_current ON adapter_versions(status) "
        "WHERE status = 'current'"
    )

    db.table("worker_status").create(
        {"worker_id": str, "state": str, "detail": str, "updated_at": float, "pid": int, "host": str},
        pk="worker_id",
        not_null=["state", "detail", "updated_at"],
        defaults={"detail": "{}"},
    )


Migration = tuple[int, str, Callable[[Database], None]]

MIGRATIONS: tuple[Migration, ...] = (
    (1, "initial", _v1_initial),
    (2, "leases_splits_worker_status", _v2_leases_splits_worker_status),
)
SCHEMA_VERSION: int = MIGRATIONS[-1][0]


def schema_version(db: Database) -> int:
    """The version recorded in the database file (0 for a new, empty file)."""
    return int(db.execute("PRAGMA user_version").fetchone()[0])


def preflight(connections: Connections) -> int:
    """Refuse, without changing the file, a database from newer code or one that is
    not a feedback store; returns its version."""
    db = connections.get()
    version = _check(schema_version(db), connections)
    _check_foreign(db, version, connections)
    return version


def migrate(
    connections: Connections, now: Callable[[], float], target: int = SCHEMA_VERSION
) -> list[int]:
    """Bring the database up to ``target``; returns the versions applied (may be empty)."""
    if not 0 <= target <= SCHEMA_VERSION:
        raise ValueError(f"target must be within 0..{SCHEMA_VERSION}, not {target}")
    if _check(schema_version(connections.get()), connections) >= target:
        return []
    applied: list[int] = []
    with connections.write() as db:
        version = _check(schema_version(db), connections)  # re-read under the write lock
        _check_foreign(db, version, connections)
        for number, name, apply in MIGRATIONS:
            if version < number <= target:
                log.info("feedback store: applying migration %d (%s)", number, name)
                apply(db)
                db.execute(
                    "INSERT OR REPLACE INTO schema_migrations (version, name, applied_at) "
                    "VALUES (?, ?, ?)",
                    [number, name, now()],
                )
                db.execute(f"PRAGMA user_version = {int(number)}")
                applied.append(number)
    return applied


def _check(version: int, connections: Connections) -> int:
    if version > SCHEMA_VERSION:
        raise SchemaVersionError(
            f"{connections.db_path} has schema version {version}, but this software only "
            f"knows versions up to {SCHEMA_VERSION}. Upgrade LLaCA Studio, or point "
            "LLACA_DATA_DIR at another folder."
        )
    return version


def _check_foreign(db: Database, version: int, connections: Connections) -> None:
    names = db.table_names()
    if version == 0 and names and "schema_migrations" not in names:
        raise SchemaVersionError(
            f"{connections.db_path} already holds tables that are not a feedback store "
            f"({', '.join(names[:5])}). Point LLACA_DATA_DIR at another folder."
        )
