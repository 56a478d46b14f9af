"""Forgetting an author or one correction, and the learning worker's retrain jobs.

``forget_author`` deletes everything the author's sessions left: sessions, messages,
likes and corrections, task buffers and their items, held corrections, and the images no
one else's message, correction or review uses (rows in one transaction; image files after
it commits). ``forget_correction`` deletes one correction: its feedback row, its buffer
item(s) and its review row; the question and the answer stay. Both return the instruction
groups whose corrections were deleted.

The served adapters still carry what those corrections taught until the worker retrains the
groups from the corrections that remain: ``request_retrain`` queues a job (``jobs`` table),
``claim_job`` hands it to a worker (before any buffer), ``finish_job`` records the version
it published.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass

from .base import StoreBase
from .errors import InvalidInputError, NotFoundError
from .images import IMAGES_DIR
from .queries import one
from .validation import clean_text

log = logging.getLogger(__name__)


STALE_JOB_SECONDS = 900.0  # a running job not touched for this long was left by a dead worker


@dataclass(frozen=True)
class ForgetReport:
    """What a forget deleted, and the groups whose adapters must be retrained."""

    author: str | None
    sessions: int
    corrections: int
    messages: int
    images: int
    groups: tuple[str, ...]


@dataclass(frozen=True)
class Job:
    """A retrain job for the learning worker."""

    id: int
    kind: str
    groups: tuple[str, ...]
    reason: str
    status: str  # queued | running | done | failed
    version: str | None
    detail: str | None
    created_at: float
    updated_at: float


def _job(row) -> Job:
    return Job(row["id"], row["kind"], tuple(json.loads(row["groups"] or "[]")), row["reason"], row["status"],
               row["version"], row["detail"], row["created_at"], row["updated_at"])


class Forgetting(StoreBase):
    """Deleting an author's or a correction's rows; retrain jobs."""

    def item_authors(self, item_ids) -> dict[int, str]:
        """{buffer item id: its author} (the author of the session whose buffer holds it)."""
        ids = [int(i) for i in item_ids]
        if not ids:
            return {}
        with self._conns.read() as db:
            rows = db.query(
                f"""SELECT bi.id, s.author FROM buffer_items bi JOIN task_buffers tb ON tb.id = bi.buffer_id
                    JOIN sessions s ON s.id = tb.session_id WHERE bi.id IN ({','.join('?' * len(ids))})""", ids)
            return {r["id"]: r["author"] or "" for r in rows}

    def authors(self) -> list[str]:
        """Every author with a correction in the store (held or in a buffer)."""
        with self._conns.read() as db:
            rows = db.query("""SELECT DISTINCT s.author FROM sessions s WHERE EXISTS
                               (SELECT 1 FROM feedback f WHERE f.session_id = s.id AND f.kind = 'correction')
                               ORDER BY s.author""")
            return [r["author"] for r in rows if r["author"]]

    def forget_author(self, author: str) -> ForgetReport:
        author = clean_text(author, what="author", max_chars=200, error=InvalidInputError).strip()
        with self._conns.write() as db:
            sessions = [r["id"] for r in db.query("SELECT id FROM sessions WHERE author = ?", [author])]
            if not sessions:
                raise NotFoundError(f"no author {author!r} in the store")
            marks = ",".join("?" * len(sessions))
            groups = sorted({r["group_id"] for r in db.query(
                f"""SELECT DISTINCT bi.group_id FROM buffer_items bi JOIN task_buffers tb ON tb.id = bi.buffer_id
                    WHERE tb.session_id IN ({marks}) AND bi.group_id IS NOT NULL""", sessions)})
            images = {r["image_sha256"] for r in db.query(
                f"SELECT DISTINCT image_sha256 FROM messages WHERE session_id IN ({marks}) AND image_sha256 IS NOT NULL",
                sessions)}
            corrections = one(db, f"SELECT count(*) AS n FROM feedback WHERE kind = 'correction' AND session_id IN ({marks})",
                              sessions)["n"]
            messages = one(db, f"SELECT count(*) AS n FROM messages WHERE session_id IN ({marks})", sessions)["n"]
            db.execute(f"DELETE FROM reviews WHERE session_id IN ({marks})", sessions)
            db.execute(f"""DELETE FROM buffer_items WHERE buffer_id IN
                           (SELECT id FROM task_buffers WHERE session_id IN ({marks}))""", sessions)
            db.execute(f"DELETE FROM task_buffers WHERE session_id IN ({marks})", sessions)
            db.execute(f"DELETE FROM feedback WHERE session_id IN ({marks})", sessions)
            db.execute(f"UPDATE messages SET parent_id = NULL WHERE session_id IN ({marks})", sessions)
            db.execute(f"DELETE FROM messages WHERE session_id IN ({marks})", sessions)
            db.execute(f"DELETE FROM sessions WHERE id IN ({marks})", sessions)
            gone = self._unused_images(db, images)
            self._retry_conflicts(db, groups, author)
        self._remove_image_files(gone)
        log.info("forgot author %s: %d session(s), %d correction(s), %d message(s), %d image(s); groups %s",
                 author, len(sessions), corrections, messages, len(gone), groups)
        return ForgetReport(author, len(sessions), int(corrections), int(messages), len(gone), tuple(groups))

    def forget_correction(self, feedback_id: int) -> ForgetReport:
        try:
            fid = int(feedback_id)
        except (TypeError, ValueError):
            raise InvalidInputError(f"a correction id is a whole number, not {feedback_id!r}", field="correction_id") from None
        with self._conns.write() as db:
            row = one(db, "SELECT * FROM feedback WHERE id = ? AND kind = 'correction'", [fid])
            if row is None:
                raise NotFoundError(f"no correction {fid} in the store")
            author = one(db, "SELECT author FROM sessions WHERE id = ?", [row["session_id"]])["author"]
            groups = sorted({r["group_id"] for r in db.query(
                "SELECT group_id FROM buffer_items WHERE feedback_id = ? AND group_id IS NOT NULL", [fid])})
            db.execute("DELETE FROM reviews WHERE feedback_id = ?", [fid])
            db.execute("DELETE FROM buffer_items WHERE feedback_id = ?", [fid])
            db.execute("DELETE FROM feedback WHERE id = ?", [fid])
            self._retry_conflicts(db, groups, f"correction {fid}")
        log.info("forgot correction %d (author %s); groups %s", fid, author, groups)
        return ForgetReport(author, 0, 1, 0, 0, tuple(groups))

    def _retry_conflicts(self, db, groups, forgotten: str) -> None:
        """Corrections set aside as conflicts in these groups are retried with the group's next run:
        what they conflicted with may be what was just forgotten (if not, they are refused again)."""
        for group in groups:
            db.execute("UPDATE buffer_items SET refusals = 0, pending_reason = ?, updated_at = ? WHERE group_id = ? "
                       "AND learned_in IS NULL AND pending_reason LIKE 'conflict: %'",
                       [f"retried with this group's next corrections: {forgotten} was forgotten", self._now(), group])

    @staticmethod
    def _unused_images(db, shas: set[str]) -> list[tuple[str, str]]:
        gone = []
        for sha in sorted(shas):
            used = one(db, """SELECT (SELECT count(*) FROM messages WHERE image_sha256 = ?)
                                   + (SELECT count(*) FROM buffer_items WHERE image_sha256 = ?)
                                   + (SELECT count(*) FROM reviews WHERE image_sha256 = ?) AS n""", [sha] * 3)["n"]
            if not used:
                path = one(db, "SELECT path FROM images WHERE sha256 = ?", [sha])
                db.execute("DELETE FROM images WHERE sha256 = ?", [sha])
                if path:
                    gone.append((sha, path["path"]))
        return gone

    def _remove_image_files(self, gone: list[tuple[str, str]]) -> None:
        for _, rel in gone:
            path = self.data_dir / rel
            if path.parent.name == IMAGES_DIR or path.parent == self.data_dir / IMAGES_DIR:
                path.unlink(missing_ok=True)

    # -- retrain jobs ------------------------------------------------------------------------

    def request_retrain(self, groups, reason: str) -> Job:
        now = self._now()
        row = {"kind": "retrain", "groups": json.dumps(sorted(set(groups))), "reason": reason[:2000],
               "status": "queued", "version": None, "detail": None, "claimed_by": None, "created_at": now,
               "updated_at": now}
        with self._conns.write() as db:
            row["id"] = db["jobs"].insert(row).last_pk
        return _job(row)

    def claim_job(self, worker_id: str) -> Job | None:
        """The oldest queued job (or one left running by a worker that stopped responding),
        now this worker's."""
        with self._conns.write() as db:
            now = self._now()
            row = one(db, "SELECT * FROM jobs WHERE status = 'queued' OR (status = 'running' AND updated_at < ?) "
                          "ORDER BY id LIMIT 1", [now - STALE_JOB_SECONDS])
            if row is None:
                return None
            db["jobs"].update(row["id"], {"status": "running", "claimed_by": worker_id, "updated_at": now})
            return _job({**row, "status": "running", "updated_at": now})

    def finish_job(self, job_id: int, status: str, version: str | None = None, detail: str | None = None) -> Job:
        if status not in ("done", "failed", "queued"):
            raise InvalidInputError(f"a job ends done, failed or queued, not {status!r}", field="status")
        with self._conns.write() as db:
            db["jobs"].update(job_id, {"status": status, "version": version, "detail": (detail or "")[:4000] or None,
                                       "updated_at": self._now()})
            return _job(db["jobs"].get(job_id))

    def jobs(self) -> list[Job]:
        with self._conns.read() as db:
            return [_job(r) for r in db["jobs"].rows_where(order_by="id")]
