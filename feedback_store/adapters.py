"""Adapter versions (candidate -> current -> retired, or rejected) and worker status.

Exactly one version is ``current`` at a time, or none (the base model). Promotion,
rollback and rejection are single transactions, and a partial unique index makes two
current versions impossible even for buggy callers. The store records where an
adapter lives (``path``) but never reads it: it knows nothing about models.
"""

from __future__ import annotations

import json
import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Callable, Mapping

from .connection import Connections
from .errors import AdapterExistsError, AdapterStateError, InvalidInputError
from .queries import fetch_all, fetch_one, require_adapter_exists
from .records import AdapterVersion, WorkerState
from .validation import clean_text, to_json

log = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NUMBERED = re.compile(r"^v(\d+)$")


class AdapterOpsMixin:
    """Adapter version registry and the worker heartbeat table."""

    _conns: Connections
    data_dir: Path
    _now: Callable[[], float]

    def _adapter(self, row: Mapping[str, Any]) -> AdapterVersion:
        path = Path(row["path"])
        return AdapterVersion.from_row(row, str(path if path.is_absolute() else self.data_dir / path))

    def _stored_path(self, path: str | Path) -> str:
        """Relative to the data dir when inside it, so the data dir can move."""
        candidate = Path(path).absolute()
        try:
            return candidate.resolve().relative_to(self.data_dir.resolve()).as_posix()
        except ValueError:
            return str(candidate)

    def next_adapter_version(self) -> str:
        """The next free name "v1", "v2", ... for a candidate about to be promoted (a rejected
        candidate is registered under another name and takes no number; two racing
        workers: one register fails with AdapterExistsError and should ask again)."""
        with self._conns.read() as db:
            numbers = [
                int(m.group(1)) for r in fetch_all(db, "SELECT version FROM adapter_versions")
                if (m := _NUMBERED.match(r["version"]))
            ]
        return f"v{max(numbers, default=0) + 1}"

    def register_adapter(
        self,
        version: str,
        parent_version: str | None,
        path: str | Path,
        method: str,
        metrics: Mapping[str, Any] | None = None,
        library_versions: Mapping[str, Any] | None = None,
    ) -> AdapterVersion:
        """Record a newly trained adapter as a ``candidate``."""
        if not isinstance(version, str) or not VERSION_PATTERN.match(version):
            raise InvalidInputError(
                f"Adapter version {version!r} is not a valid name: use letters, digits, '.', '_' "
                "or '-', at most 64 characters (for example 'v3')."
            )
        method = clean_text(method, what="training method", max_chars=200)
        metrics_json = to_json(metrics, what="adapter metrics")
        libs_json = to_json(library_versions, what="library versions")
        stored_path = self._stored_path(path)
        with self._conns.write() as db:
            if fetch_one(db, "SELECT 1 FROM adapter_versions WHERE version = ?", [version]):
                raise AdapterExistsError(
                    f"Adapter version {version} already exists. Ask next_adapter_version() for a free name."
                )
            if parent_version is not None:
                require_adapter_exists(db, parent_version)
            now = self._now()
            db.table("adapter_versions").insert(
                {
                    "version": version, "parent_version": parent_version, "path": stored_path,
                    "method": method, "status": "candidate", "metrics": metrics_json,
                    "library_versions": libs_json, "reason": None, "created_at": now,
                    "updated_at": now,
                }
            )
            return self._adapter(require_adapter_exists(db, version))

    def _make_current(self, version: str) -> AdapterVersion:
        with self._conns.write() as db:
            row = require_adapter_exists(db, version)
            if row["status"] == "rejected":
                raise AdapterStateError(
                    f"Adapter {version} was rejected ({row['reason'] or 'no reason given'}) and "
                    "cannot be served. Choose another version."
                )
            if row["status"] != "current":
                now = self._now()
                db.execute(
                    "UPDATE adapter_versions SET status = 'retired', updated_at = ? WHERE status = 'current'",
                    [now],
                )
                db.execute(
                    "UPDATE adapter_versions SET status = 'current', updated_at = ? WHERE version = ?",
                    [now, version],
                )
            return self._adapter(require_adapter_exists(db, version))

    def promote_adapter(self, version: str) -> AdapterVersion:
        """Make ``version`` the one current adapter; the previous current is retired."""
        adapter = self._make_current(version)
        log.info("adapter %s is now current", version)
        return adapter

    def rollback_to(self, version: str | None) -> AdapterVersion | None:
        """Serve an earlier (non-rejected) version again; ``None`` rolls back to the base
        model (no current adapter)."""
        if version is None:
            with self._conns.write() as db:
                db.execute(
                    "UPDATE adapter_versions SET status = 'retired', updated_at = ? WHERE status = 'current'",
                    [self._now()],
                )
            log.info("rolled back to the base model")
            return None
        adapter = self._make_current(version)
        log.info("rolled back to adapter %s", version)
        return adapter

    def reject_adapter(self, version: str, reason: str) -> AdapterVersion:
        """Mark a candidate (or retired) version as never to be served."""
        why = clean_text(reason, what="reason", max_chars=4000)
        with self._conns.write() as db:
            row = require_adapter_exists(db, version)
            if row["status"] == "current":
                raise AdapterStateError(
                    f"Adapter {version} is being served. Roll back to another version first, then reject it."
                )
            db.execute(
                "UPDATE adapter_versions SET status = 'rejected', reason = ?, updated_at = ? "
                "WHERE version = ?",
                [why, self._now(), version],
            )
            return self._adapter(require_adapter_exists(db, version))

    def current_adapter(self) -> AdapterVersion | None:
        """The version to serve, or None for the base model."""
        with self._conns.read() as db:
            row = fetch_one(db, "SELECT * FROM adapter_versions WHERE status = 'current'")
        return self._adapter(row) if row else None

    def get_adapter(self, version: str) -> AdapterVersion:
        with self._conns.read() as db:
            return self._adapter(require_adapter_exists(db, version))

    def list_adapters(self) -> list[AdapterVersion]:
        """All versions, oldest first."""
        with self._conns.read() as db:
            rows = fetch_all(db, "SELECT * FROM adapter_versions ORDER BY created_at, rowid")
        return [self._adapter(r) for r in rows]

    def update_adapter_metrics(self, version: str, metrics: Mapping[str, Any]) -> AdapterVersion:
        """Merge ``metrics`` into the version's metrics (keys given replace old ones)."""
        to_json(metrics, what="adapter metrics")  # validate before taking the lock
        with self._conns.write() as db:
            row = require_adapter_exists(db, version)
            merged = {**json.loads(row["metrics"] or "{}"), **dict(metrics)}
            db.execute(
                "UPDATE adapter_versions SET metrics = ?, updated_at = ? WHERE version = ?",
                [to_json(merged, what="adapter metrics"), self._now(), version],
            )
            return self._adapter(require_adapter_exists(db, version))

    # -- worker status -----------------------------------------------------------------

    def set_worker_state(
        self, worker_id: str, state: str, detail: Mapping[str, Any] | None = None
    ) -> WorkerState:
        """Heartbeat: what the worker is doing now (a stale updated_at means it died)."""
        if not isinstance(worker_id, str) or not worker_id.strip():
            raise InvalidInputError("worker_id must be a non-empty string naming the worker.")
        row = {
            "worker_id": worker_id,
            "state": clean_text(state, what="worker state", max_chars=200),
            "detail": to_json(detail, what="worker detail"),
            "updated_at": self._now(), "pid": os.getpid(), "host": socket.gethostname(),
        }
        with self._conns.write() as db:
            db.table("worker_status").upsert(row, pk="worker_id")
        return WorkerState.from_row(row)

    def worker_states(self) -> list[WorkerState]:
        with self._conns.read() as db:
            rows = fetch_all(db, "SELECT * FROM worker_status ORDER BY worker_id")
        return [WorkerState.from_row(r) for r in rows]

