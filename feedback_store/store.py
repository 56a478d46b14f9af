"""``FeedbackStore``: the one object the app and the learning worker use.

It is assembled from its parts: ``base`` (opening, options, closing), ``conversations``
(sessions, messages, images, likes), ``buffers`` (corrections, task buffers, the worker's
claims), ``reviews`` (authors, corrections held for review, quota usage), ``forgetting`` (deleting an
author or a correction, retrain jobs), ``outcomes`` (each correction's group and what became of it) and ``adapters`` (adapter versions, worker status); the housekeeping that spans
them is here. Every public write is one transaction.

One instance may be shared by all threads of a process (each thread gets its own
SQLite connection); other processes on the same host may open the same data dir at once.
"""

from __future__ import annotations

import logging
import time

from .adapters import Adapters
from .files import TMP_PREFIX
from .forgetting import Forgetting
from .images import IMAGES_DIR
from .outcomes import Outcomes
from .records import CleanupReport
from .reviews import Reviews

log = logging.getLogger(__name__)


class FeedbackStore(Reviews, Adapters, Outcomes, Forgetting):
    """Durable record of conversations, feedback, task buffers and adapter versions."""

    def cleanup_orphans(self, min_age_seconds: float = 3600.0, dry_run: bool = False) -> CleanupReport:
        """Remove image files no row references and leftover ``.tmp-*`` files older than
        ``min_age_seconds`` (what a crash between file write and commit leaves behind).
        Also reports image rows whose file is missing (should never happen)."""
        images_dir = self.data_dir / IMAGES_DIR
        cutoff = time.time() - min_age_seconds  # file mtimes are wall-clock
        with self._conns.write() as db:  # writers re-check their file under this lock
            known = {r["sha256"]: r["path"] for r in db.query("SELECT sha256, path FROM images")}
            orphans, temps = [], []
            for entry in images_dir.iterdir():
                if not entry.is_file() or entry.stat().st_mtime > cutoff:
                    continue
                if entry.name.startswith(TMP_PREFIX):
                    temps.append(entry)
                elif entry.suffix == ".png" and entry.stem not in known:
                    orphans.append(entry)
            missing = [sha for sha, path in known.items() if not (self.data_dir / path).is_file()]
            if not dry_run:
                for entry in orphans + temps:
                    entry.unlink(missing_ok=True)
        if orphans or temps or missing:
            log.warning(
                "cleanup: %d orphan image(s), %d temp file(s) %s; %d image row(s) without file",
                len(orphans), len(temps), "found" if dry_run else "removed", len(missing),
            )
        return CleanupReport(
            orphan_images=tuple(sorted(e.name for e in orphans)),
            temp_files=tuple(sorted(e.name for e in temps)),
            missing_images=tuple(sorted(missing)), removed=not dry_run,
        )

    def integrity_check(self) -> list[str]:
        """SQLite's integrity and foreign-key checks; ``["ok"]`` when all is well."""
        with self._conns.read() as db:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
            fk = db.execute("PRAGMA foreign_key_check").fetchall()
        if problems == ["ok"] and not fk:
            return ["ok"]
        return [p for p in problems if p != "ok"] + [f"foreign key: {tuple(r)}" for r in fk]
