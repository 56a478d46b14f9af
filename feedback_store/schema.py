"""The database schema: one script that builds a new database, and the version check.

The schema version is SQLite's ``PRAGMA user_version`` (in the file header, transactional).
A new (empty) database gets ``SCHEMA`` in one ``BEGIN IMMEDIATE`` transaction, the version
re-read under the write lock, so processes opening it at the same moment build it once and
a crash leaves an empty file. A database at any other version is refused with
``SchemaVersionError``, untouched, as is a file that holds tables but no version (not ours).

Migrations: a database at version 3 (the layout before authors and the review queue) is
upgraded in place, in one ``BEGIN IMMEDIATE`` transaction (``MIGRATIONS[3]``): each session
gets its author (its login name, or ``guest-`` and the first 8 characters of its id, as
``FeedbackStore.start_session`` names a guest), and the review queue and the worker's retrain
jobs are created. Older
development layouts are refused, not upgraded. To change the schema: edit ``SCHEMA`` for new
databases, bump ``SCHEMA_VERSION``, and add the statements that turn the previous version
into the new one to ``MIGRATIONS``; test them on a database written by the previous code.
"""

from __future__ import annotations

import logging

from .connection import Connections
from .errors import SchemaVersionError

log = logging.getLogger(__name__)

SCHEMA_VERSION = 4

SCHEMA = """
CREATE TABLE sessions (
    id TEXT PRIMARY KEY,
    created_at REAL NOT NULL,
    user TEXT,
    client TEXT,
    author TEXT,
    quota_key TEXT
);
CREATE INDEX idx_sessions_author ON sessions(author);
CREATE INDEX idx_sessions_quota_key ON sessions(quota_key);
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
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE UNIQUE INDEX idx_adapter_versions_one_current ON adapter_versions(status) WHERE status = 'current';
CREATE TABLE messages (
    id TEXT PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    parent_id TEXT REFERENCES messages(id),
    role TEXT NOT NULL CHECK (role IN ('user', 'assistant')),
    text TEXT NOT NULL,
    image_sha256 TEXT REFERENCES images(sha256),
    adapter_version TEXT REFERENCES adapter_versions(version),
    adapter_group TEXT,
    gen_params TEXT NOT NULL DEFAULT '{}',
    created_at REAL NOT NULL
);
CREATE INDEX idx_messages_session ON messages(session_id);
CREATE INDEX idx_messages_parent ON messages(parent_id);
CREATE TABLE feedback (
    id INTEGER PRIMARY KEY,
    message_id TEXT NOT NULL REFERENCES messages(id),
    session_id TEXT NOT NULL REFERENCES sessions(id),
    kind TEXT NOT NULL CHECK (kind IN ('like', 'dislike', 'correction')),
    value TEXT,
    corrected_text TEXT,
    previous_text TEXT,
    created_at REAL NOT NULL
);
CREATE INDEX idx_feedback_message ON feedback(message_id);
CREATE INDEX idx_feedback_session ON feedback(session_id);
CREATE TABLE task_buffers (
    id INTEGER PRIMARY KEY,
    session_id TEXT NOT NULL REFERENCES sessions(id),
    status TEXT NOT NULL CHECK (status IN ('open', 'ready', 'training', 'promoted', 'rejected')),
    adapter_version TEXT REFERENCES adapter_versions(version),
    claimed_by TEXT,
    lease_until REAL,
    ready_at REAL,
    attempts INTEGER NOT NULL DEFAULT 0,
    reason TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX idx_task_buffers_session ON task_buffers(session_id);
CREATE UNIQUE INDEX idx_task_buffers_one_open ON task_buffers(session_id) WHERE status = 'open';
CREATE INDEX idx_task_buffers_status ON task_buffers(status, ready_at, id);
CREATE TABLE buffer_items (
    id INTEGER PRIMARY KEY,
    buffer_id INTEGER NOT NULL REFERENCES task_buffers(id),
    message_id TEXT NOT NULL REFERENCES messages(id),
    feedback_id INTEGER REFERENCES feedback(id),
    image_sha256 TEXT REFERENCES images(sha256),
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    split TEXT NOT NULL DEFAULT 'train' CHECK (split IN ('train', 'heldout')),
    group_id TEXT,
    learned_in TEXT REFERENCES adapter_versions(version),
    pending_reason TEXT,
    refusals INTEGER NOT NULL DEFAULT 0,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE INDEX idx_buffer_items_buffer ON buffer_items(buffer_id);
CREATE INDEX idx_buffer_items_message ON buffer_items(message_id);
CREATE INDEX idx_buffer_items_group ON buffer_items(group_id);
CREATE TABLE reviews (
    feedback_id INTEGER PRIMARY KEY REFERENCES feedback(id),
    session_id TEXT NOT NULL REFERENCES sessions(id),
    message_id TEXT NOT NULL REFERENCES messages(id),
    author TEXT NOT NULL,
    image_sha256 TEXT REFERENCES images(sha256),
    question TEXT NOT NULL,
    answer TEXT NOT NULL,
    correction TEXT NOT NULL,
    kind TEXT NOT NULL DEFAULT 'review' CHECK (kind IN ('review', 'conflict')),
    status TEXT NOT NULL CHECK (status IN ('pending', 'approved', 'rejected')),
    reason TEXT,
    conflicts TEXT NOT NULL DEFAULT '[]',
    decided_by TEXT,
    created_at REAL NOT NULL,
    decided_at REAL
);
CREATE INDEX idx_reviews_status ON reviews(status, created_at);
CREATE INDEX idx_reviews_session ON reviews(session_id);
CREATE INDEX idx_reviews_author ON reviews(author);
CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    kind TEXT NOT NULL CHECK (kind IN ('retrain')),
    groups TEXT NOT NULL DEFAULT '[]',
    reason TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('queued', 'running', 'done', 'failed')),
    claimed_by TEXT,
    version TEXT,
    detail TEXT,
    created_at REAL NOT NULL,
    updated_at REAL NOT NULL
);
CREATE TABLE worker_status (
    worker_id TEXT PRIMARY KEY,
    state TEXT NOT NULL,
    detail TEXT NOT NULL DEFAULT '{}',
    updated_at REAL NOT NULL,
    pid INTEGER,
    host TEXT
);
"""



_REVIEWS = SCHEMA[SCHEMA.index("CREATE TABLE reviews"):SCHEMA.index("CREATE TABLE worker_status")]

MIGRATIONS: dict[int, str] = {
    3: """
ALTER TABLE sessions ADD COLUMN author TEXT;
ALTER TABLE sessions ADD COLUMN quota_key TEXT;
UPDATE sessions SET author = coalesce(user, 'guest-' || substr(id, 1, 8));
UPDATE sessions SET quota_key = author;
CREATE INDEX idx_sessions_author ON sessions(author);
CREATE INDEX idx_sessions_quota_key ON sessions(quota_key);
""" + _REVIEWS,
}
"""From version N (the key): the statements that bring a database to version N + 1."""


def check_version(connections: Connections) -> int:
    """The file's schema version (0: new), refusing one this code cannot open; changes nothing."""
    db = connections.get()
    version = int(db.execute("PRAGMA user_version").fetchone()[0])
    tables = db.table_names()
    if version == 0 and tables:
        raise SchemaVersionError(
            f"{connections.db_path} is not a feedback store: it holds other tables ({', '.join(tables[:5])})",
            path=connections.db_path, version=0, supported=SCHEMA_VERSION, tables=tables,
        )
    if version not in (0, SCHEMA_VERSION, *MIGRATIONS):
        raise SchemaVersionError(
            f"{connections.db_path} has schema version {version}; this code reads version {SCHEMA_VERSION} only",
            path=connections.db_path, version=version, supported=SCHEMA_VERSION, tables=tables,
        )
    return version


def _run(db, script: str) -> None:
    for statement in script.split(";"):
        if statement.strip():
            db.execute(statement)


def create(connections: Connections) -> bool:
    """Give a new database the schema, or upgrade an older one (True); leave a current one
    alone (False)."""
    if check_version(connections) == SCHEMA_VERSION:
        return False
    with connections.write() as db:
        version = check_version(connections)  # re-read under the write lock: another process may be first
        if version == SCHEMA_VERSION:
            return False
        if version == 0:
            _run(db, SCHEMA)
        else:
            while version < SCHEMA_VERSION:
                _run(db, MIGRATIONS[version])
                version += 1
        db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
    log.info("feedback store %s %s (schema version %d)", connections.db_path,
             "created" if version == 0 else "upgraded", SCHEMA_VERSION)
    return True
