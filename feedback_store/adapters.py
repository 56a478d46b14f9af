"""Adapter versions (candidate -> current -> retired, or rejected) and worker status.

Exactly one version is ``current`` at a time, or none (the base model). Promotion,
rollback and rejection are single transactions, and a partial unique index makes two
current versions impossible even for buggy callers. The store records where an
adapter lives (``path``) but never reads it: it knows nothing about models.
"""

from __future__ import annotations

import logging
import os
import re
import socket
from pathlib import Path
from typing import Any, Mapping

from sqlite_utils import Database

from .base import StoreBase
from .errors import AdapterExistsError, AdapterStateError, InvalidInputError
from .queries import one, require_adapter
from .records import AdapterVersion, WorkerState, from_row
from .validation import clean_text, require_worker, to_json

log = logging.getLogger(__name__)

VERSION_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$")
_NUMBERED = re.compile(r"^v(\d+)$")


class Adapters(StoreBase):
    """Adapter version registry and the worker heartbeat table."""

    def _adapter(self, row: Mapping[str, Any]) -> AdapterVersion:
        path = Path(row["path"])
        return from_row(AdapterVersion, row, path=str(path if path.is_absolute() else self.data_dir / path))

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
            names = [r["version"] for r in db.query("SELECT version FROM adapter_versions")]
        return f"v{max((int(m.group(1)) for n in names if (m := _NUMBERED.match(n))), default=0) + 1}"

    def register_adapter(
        self, version: str, parent_version: str | None, path: str | Path, method: str,
        metrics: Mapping[str, Any] | None = None, library_versions: Mapping[str, Any] | None = None,
    ) -> AdapterVersion:
        """Record a newly trained adapter as a ``candidate``."""
        if not isinstance(version, str) or not VERSION_PATTERN.match(version):
            raise InvalidInputError(
                f"adapter version {version!r} is not a valid name (letters, digits, '.', '_' or '-', "
                "at most 64 characters)", field="version", value=version,
            )
        row = {
            "version": version, "parent_version": parent_version, "path": self._stored_path(path),
            "method": clean_text(method, what="training method", max_chars=200), "status": "candidate",
            "metrics": to_json(metrics, what="adapter metrics"),
            "library_versions": to_json(library_versions, what="library versions"), "reason": None,
        }
        with self._conns.write() as db:
            if one(db, "SELECT 1 FROM adapter_versions WHERE version = ?", [version]):
                raise AdapterExistsError(f"adapter version {version} already exists", version=version)
            if parent_version is not None:
                require_adapter(db, parent_version)
            now = self._now()
            db["adapter_versions"].insert({**row, "created_at": now, "updated_at": now})
            return self._adapter(require_adapter(db, version))

    def _retire_current(self, db: Database) -> None:
        db.execute("UPDATE adapter_versions SET status = 'retired', updated_at = ? WHERE status = 'current'",
                   [self._now()])

    def _make_current(self, version: str) -> AdapterVersion:
        with self._conns.write() as db:
            row = require_adapter(db, version)
            if row["status"] == "rejected":
                raise AdapterStateError(
                    f"adapter {version} was rejected ({row['reason'] or 'no reason given'}) and cannot be served",
                    version=version, status="rejected", reason=row["reason"],
                )
            if row["status"] != "current":
                self._retire_current(db)
                db["adapter_versions"].update(version, {"status": "current", "updated_at": self._now()})
            return self._adapter(require_adapter(db, version))

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
                self._retire_current(db)
            log.info("rolled back to the base model")
            return None
        adapter = self._make_current(version)
        log.info("rolled back to adapter %s", version)
        return adapter

    def reject_adapter(self, version: str, reason: str) -> AdapterVersion:
        """Mark a candidate (or retired) version as never to be served."""
        why = clean_text(reason, what="reason", max_chars=4000)
        with self._conns.write() as db:
            if require_adapter(db, version)["status"] == "current":
                raise AdapterStateError(
                    f"adapter {version} is current; it cannot be rejected while it is served",
                    version=version, status="current", reason=None,
                )
            db["adapter_versions"].update(version, {"status": "rejected", "reason": why, "updated_at": self._now()})
            return self._adapter(require_adapter(db, version))

    def current_adapter(self) -> AdapterVersion | None:
        """The version to serve, or None for the base model."""
        with self._conns.read() as db:
            row = one(db, "SELECT * FROM adapter_versions WHERE status = 'current'")
        return self._adapter(row) if row else None

    def get_adapter(self, version: str) -> AdapterVersion:
        with self._conns.read() as db:
            return self._adapter(require_adapter(db, version))

    def list_adapters(self) -> list[AdapterVersion]:
        """All versions, oldest first."""
        with self._conns.read() as db:
            return [self._adapter(r) for r in db["adapter_versions"].rows_where(order_by="created_at, rowid")]

    # -- worker status -----------------------------------------------------------------

    def set_worker_state(self, worker_id: str, state: str, detail: Mapping[str, Any] | None = None) -> WorkerState:
        """Heartbeat: what the worker is doing now (a stale updated_at means it died)."""
        row = {
            "worker_id": require_worker(worker_id), "state": clean_text(state, what="worker state", max_chars=200),
            "detail": to_json(detail, what="worker detail"),
            "updated_at": self._now(), "pid": os.getpid(), "host": socket.gethostname(),
        }
        with self._conns.write() as db:
            db["worker_status"].upsert(row, pk="worker_id")
        return from_row(WorkerState, row)

    def worker_states(self) -> list[WorkerState]:
        with self._conns.read() as db:
            return [from_row(WorkerState, r) for r in db["worker_status"].rows_where(order_by="worker_id")]
