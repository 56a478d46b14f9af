"""Per-thread SQLite connections and the two transaction shapes the store uses.

Gradio runs handlers in worker threads and SQLite connections must not be shared
between threads, so every thread gets its own connection (opened lazily, closed when
the thread ends or on ``close()``). A forked child process opens fresh connections
instead of reusing the parent's. Each connection has foreign keys on, the configured
``synchronous`` level and a busy timeout; the database file itself is in WAL mode.

``write()`` is ``BEGIN IMMEDIATE ... COMMIT``: it takes the single write lock up front
(waiting up to the busy timeout), so the reads inside it see the latest data and no
other thread or process can interleave - every store operation is one of these.
``read()`` is a deferred transaction: one consistent snapshot for a multi-query read.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import threading
import weakref
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from sqlite_utils import Database

from .errors import StoreBusyError, StoreClosedError

log = logging.getLogger(__name__)

SYNCHRONOUS_LEVELS = ("OFF", "NORMAL", "FULL", "EXTRA")
JOURNAL_MODES = ("WAL", "DELETE", "TRUNCATE", "PERSIST")


class _Handle:
    """Owns one thread's connection; weak-referenceable (sqlite3.Connection is not)."""

    __slots__ = ("pid", "db", "__weakref__")

    def __init__(self, pid: int, db: Database) -> None:
        self.pid = pid
        self.db = db


class Connections:
    """Hands each thread its own ``sqlite_utils.Database`` on the same file."""

    def __init__(
        self, db_path: Path, *, busy_timeout: float, synchronous: str, journal_mode: str
    ) -> None:
        synchronous = synchronous.upper()
        journal_mode = journal_mode.upper()
        if synchronous not in SYNCHRONOUS_LEVELS:
            raise ValueError(f"synchronous must be one of {SYNCHRONOUS_LEVELS}, not {synchronous!r}")
        if journal_mode not in JOURNAL_MODES:
            raise ValueError(f"journal_mode must be one of {JOURNAL_MODES}, not {journal_mode!r}")
        self.db_path = db_path
        self.busy_timeout = busy_timeout
        self.synchronous = synchronous
        self.journal_mode = journal_mode
        self._local = threading.local()
        self._handles: "weakref.WeakSet[_Handle]" = weakref.WeakSet()
        self._guard = threading.Lock()
        self._closed = False

    def _open(self) -> Database:
        conn = sqlite3.connect(
            str(self.db_path), timeout=self.busy_timeout, isolation_level=None,
            check_same_thread=False,
        )
        try:
            conn.execute("PRAGMA foreign_keys = ON")
            conn.execute(f"PRAGMA synchronous = {self.synchronous}")
            conn.execute("PRAGMA temp_store = MEMORY")  # no temp files outside the data dir
            return Database(conn, execute_plugins=False)
        except BaseException:
            conn.close()
            raise

    def get(self) -> Database:
        """This thread's connection (opened on first use)."""
        if self._closed:
            raise StoreClosedError("the feedback store is closed")
        handle: _Handle | None = getattr(self._local, "handle", None)
        pid = os.getpid()
        if handle is None or handle.pid != pid:
            # After fork the inherited handle belongs to the parent: never touch it.
            handle = _Handle(pid, self._open())
            self._local.handle = handle
            with self._guard:
                self._handles.add(handle)
        return handle.db

    def set_journal_mode(self) -> None:
        """Switch the file to the configured journal mode (persistent for WAL)."""
        db = self.get()
        mode = db.conn.execute(f"PRAGMA journal_mode = {self.journal_mode}").fetchone()[0]
        if mode.upper() != self.journal_mode:
            log.warning("SQLite kept journal_mode=%s (asked for %s)", mode, self.journal_mode)

    @contextmanager
    def write(self) -> Iterator[Database]:
        """One write transaction (BEGIN IMMEDIATE); commits on success, rolls back on error."""
        db = self.get()
        if db.conn.in_transaction:
            raise RuntimeError("feedback_store: nested write transaction (a bug in the store)")
        try:
            db.execute("BEGIN IMMEDIATE")
            with db.conn:  # COMMIT, or ROLLBACK on an exception
                yield db
        except sqlite3.OperationalError as exc:
            if db.conn.in_transaction:
                db.conn.rollback()
            if "locked" in str(exc) or "busy" in str(exc):
                raise StoreBusyError(
                    f"the database stayed locked for over {self.busy_timeout:g} s", timeout=self.busy_timeout
                ) from exc
            raise

    @contextmanager
    def read(self) -> Iterator[Database]:
        """One consistent snapshot for several queries (or join the open transaction)."""
        db = self.get()
        if db.conn.in_transaction:
            yield db
            return
        db.execute("BEGIN")
        with db.conn:
            yield db

    def close(self) -> None:
        """Close every connection this process opened. Call once no thread is using the store."""
        self._closed = True
        pid = os.getpid()
        with self._guard:
            handles = list(self._handles)
            self._handles = weakref.WeakSet()
        for handle in handles:
            if handle.pid == pid:
                try:
                    handle.db.conn.close()
                except sqlite3.Error:  # pragma: no cover - best effort at shutdown
                    log.debug("closing a connection failed", exc_info=True)

