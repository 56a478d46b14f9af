"""Task buffers: corrections collect per session, become ready, are claimed by a worker.

Life of a buffer::

    open --(size threshold | user asks | idle timeout)--> ready
    ready --claim (lease; attempts + 1)--> training --finish--> promoted | rejected
    training, lease expired --claim or release_expired_leases--> ready
    training, lease expired, attempts >= max_claim_attempts --same--> rejected

A session has at most one open buffer (a unique index enforces it). Claiming runs in
``BEGIN IMMEDIATE``, so two workers - threads or processes - never get the same buffer.
A worker that lost its lease gets ``LeaseLostError`` from ``renew_lease``/``finish_claim``.
"""

from __future__ import annotations

import logging
from typing import Any, Callable, Mapping

from .connection import Connections
from .errors import (
    BufferStateError,
    InvalidCorrectionError,
    InvalidInputError,
    LeaseLostError,
    NotFoundError,
    NothingToTeachError,
)
from .queries import (
    buffer_row,
    buffer_with_items,
    conversation_image,
    fetch_all,
    fetch_one,
    items_of,
    require_adapter_exists,
    require_answer,
    require_session,
)
from .records import SPLITS, BufferItem, BufferState, TaskBuffer
from .status import BUFFER_OUTCOMES, BufferStatus
from .validation import clean_optional_text, clean_text

log = logging.getLogger(__name__)

NOTHING_TO_TEACH = (
    "There is nothing to teach yet in this session: correct an answer first "
    "(edit the assistant's reply), then ask it to learn."
)


def _worker(worker_id: str) -> str:
    if not isinstance(worker_id, str) or not worker_id.strip():
        raise InvalidInputError("worker_id must be a non-empty string naming the worker.")
    return worker_id


def _positive(value: float, what: str) -> float:
    if not isinstance(value, (int, float)) or not value > 0:
        raise InvalidInputError(f"{what} must be a positive number of seconds, not {value!r}.")
    return float(value)


class BufferOpsMixin:
    """Corrections, task buffers and the worker's claim/lease protocol."""

    _conns: Connections
    max_answer_chars: int
    max_claim_attempts: int
    _now: Callable[[], float]
    _insert_feedback: Callable[..., Any]

    # -- collecting corrections ------------------------------------------------------

    def add_correction(
        self,
        session_id: str,
        message_id: str,
        corrected_text: str | bytes,
        ready_threshold: int | None = None,
    ) -> BufferState:
        """Record a correction of an answer and put (image, question, corrected answer)
        into the session's open buffer (created if needed), all in one transaction.

        Correcting the same message again updates its item while that item's buffer is
        still open or ready (after training it goes into the open buffer as a new item).
        When the buffer reaches ``ready_threshold`` items it is marked ready.
        """
        corrected = clean_text(
            corrected_text, what="corrected answer", max_chars=self.max_answer_chars,
            error=InvalidCorrectionError,
        )
        if ready_threshold is not None and (not isinstance(ready_threshold, int) or ready_threshold < 1):
            raise InvalidInputError(f"ready_threshold must be a positive integer, not {ready_threshold!r}.")
        with self._conns.write() as db:
            answer = require_answer(db, session_id, message_id)
            if corrected.strip() == answer.text.strip():
                raise InvalidCorrectionError(
                    "The corrected answer is the same as the original answer. Change it, or "
                    "use the thumbs-up if the answer was right."
                )
            question = fetch_one(
                db, "SELECT text FROM messages WHERE id = ? AND session_id = ? AND role = 'user'",
                [answer.parent_id, session_id],
            )
            if question is None:
                raise InvalidCorrectionError(
                    "This answer has no question recorded with it, so it cannot be taught. "
                    "Ask the question again and correct the new answer."
                )
            image = conversation_image(db, message_id)
            feedback = self._insert_feedback(
                db, session_id, message_id, "correction", corrected_text=corrected,
                previous_text=answer.text,
            )
            now = self._now()
            existing = fetch_one(
                db,
                """SELECT bi.id, bi.buffer_id FROM buffer_items bi
                   JOIN task_buffers tb ON tb.id = bi.buffer_id
                   WHERE bi.message_id = ? AND tb.session_id = ? AND tb.status IN ('open', 'ready')
                   ORDER BY bi.id DESC LIMIT 1""",
                [message_id, session_id],
            )
            if existing is not None:
                buffer_id = existing["buffer_id"]
                db.table("buffer_items").update(
                    existing["id"], {"answer": corrected, "feedback_id": feedback.id, "updated_at": now}
                )
            else:
                buffer_id = self._open_buffer_id(db, session_id, now)
                db.table("buffer_items").insert(
                    {
                        "buffer_id": buffer_id, "message_id": message_id, "feedback_id": feedback.id,
                        "image_sha256": image, "question": question["text"], "answer": corrected,
                        "split": "train", "created_at": now, "updated_at": now,
                    }
                )
            db.execute("UPDATE task_buffers SET updated_at = ? WHERE id = ?", [now, buffer_id])
            size = db.execute(
                "SELECT count(*) FROM buffer_items WHERE buffer_id = ?", [buffer_id]
            ).fetchone()[0]
            status = buffer_row(db, buffer_id)["status"]
            if status == "open" and ready_threshold is not None and size >= ready_threshold:
                self._set_ready(db, buffer_id, now)
                status = "ready"
        return BufferState(buffer_id=buffer_id, size=size, status=status)

    def _open_buffer_id(self, db: Any, session_id: str, now: float) -> int:
        row = fetch_one(
            db, "SELECT id FROM task_buffers WHERE session_id = ? AND status = 'open'", [session_id]
        )
        if row is not None:
            return int(row["id"])
        return int(
            db.table("task_buffers").insert(
                {"session_id": session_id, "status": "open", "created_at": now, "updated_at": now,
                 "attempts": 0}
            ).last_pk
        )

    def _set_ready(self, db: Any, buffer_id: int, now: float) -> None:
        db.execute(
            "UPDATE task_buffers SET status = 'ready', ready_at = ?, updated_at = ? WHERE id = ?",
            [now, now, buffer_id],
        )

    def mark_ready(self, session_id: str, buffer_id: int | None = None) -> TaskBuffer:
        """Mark the session's open buffer (or the given one of this session) ready to learn.
        Already ready: returned unchanged. Empty or absent: NothingToTeachError."""
        with self._conns.write() as db:
            require_session(db, session_id)
            if buffer_id is None:
                row = fetch_one(
                    db, "SELECT * FROM task_buffers WHERE session_id = ? AND status = 'open'", [session_id]
                )
                if row is None:
                    raise NothingToTeachError(NOTHING_TO_TEACH)
            else:
                row = buffer_row(db, buffer_id, session_id)
                if row["status"] == "ready":
                    return buffer_with_items(db, row["id"])
                if row["status"] != "open":
                    raise BufferStateError(
                        f"Task buffer {buffer_id} is already {row['status']}; new corrections go "
                        "into a new buffer."
                    )
            if not items_of(db, row["id"]):
                raise NothingToTeachError(NOTHING_TO_TEACH)
            self._set_ready(db, row["id"], self._now())
            return buffer_with_items(db, row["id"])

    def mark_idle_buffers_ready(self, idle_seconds: float) -> list[int]:
        """Mark ready every non-empty open buffer without a new correction for
        ``idle_seconds``; returns their ids (the worker's idle timeout)."""
        idle = float(idle_seconds)
        with self._conns.write() as db:
            now = self._now()
            ids = [
                r["id"] for r in fetch_all(
                    db,
                    """SELECT id FROM task_buffers tb WHERE status = 'open' AND updated_at <= ?
                       AND EXISTS (SELECT 1 FROM buffer_items bi WHERE bi.buffer_id = tb.id)
                       ORDER BY id""",
                    [now - idle],
                )
            ]
            for buffer_id in ids:
                self._set_ready(db, buffer_id, now)
        return ids

    # -- the worker's side -----------------------------------------------------------

    def _release_expired(self, db: Any, now: float) -> list[int]:
        """Expired leases: back to ready, or rejected after too many attempts."""
        released = []
        for row in fetch_all(
            db,
            "SELECT * FROM task_buffers WHERE status = 'training' "
            "AND (lease_until IS NULL OR lease_until < ?) ORDER BY id",
            [now],
        ):
            if row["attempts"] >= self.max_claim_attempts:
                reason = (
                    f"set aside after {row['attempts']} training attempts whose workers stopped "
                    f"responding (last: {row['claimed_by']})"
                )
                log.warning("buffer %d %s", row["id"], reason)
                db.execute(
                    "UPDATE task_buffers SET status = 'rejected', reason = ?, lease_until = NULL, "
                    "updated_at = ? WHERE id = ?", [reason, now, row["id"]],
                )
            else:
                log.warning(
                    "lease of %s on buffer %d expired; it is ready again", row["claimed_by"], row["id"]
                )
                db.execute(
                    "UPDATE task_buffers SET status = 'ready', claimed_by = NULL, lease_until = NULL, "
                    "updated_at = ? WHERE id = ?", [now, row["id"]],
                )
                released.append(row["id"])
        return released

    def release_expired_leases(self) -> list[int]:
        """Return buffers whose worker's lease expired to ready (or reject them after
        ``max_claim_attempts``); ids of those made ready. ``claim_ready_buffer`` does
        this itself; call it to show an accurate queue when no worker is running."""
        with self._conns.write() as db:
            return self._release_expired(db, self._now())

    def claim_ready_buffer(self, worker_id: str, lease_seconds: float) -> TaskBuffer | None:
        """Atomically claim the oldest ready buffer (expired leases count as ready) for
        ``worker_id`` until now + ``lease_seconds``; None if there is none."""
        worker = _worker(worker_id)
        lease = _positive(lease_seconds, "lease_seconds")
        with self._conns.write() as db:
            now = self._now()
            self._release_expired(db, now)
            row = fetch_one(
                db,
                """SELECT id FROM task_buffers WHERE status = 'ready'
                   ORDER BY coalesce(ready_at, updated_at), id LIMIT 1""",
            )
            if row is None:
                return None
            db.execute(
                """UPDATE task_buffers SET status = 'training', claimed_by = ?, lease_until = ?,
                   attempts = attempts + 1, updated_at = ? WHERE id = ?""",
                [worker, now + lease, now, row["id"]],
            )
            return buffer_with_items(db, row["id"])

    def _require_claim(self, db: Any, buffer_id: int, worker_id: str) -> dict[str, Any]:
        row = buffer_row(db, buffer_id)
        if row["status"] != "training" or row["claimed_by"] != worker_id:
            holder = f" by {row['claimed_by']}" if row["status"] == "training" else ""
            raise LeaseLostError(
                f"Worker {worker_id} no longer holds task buffer {buffer_id} (it is "
                f"{row['status']}{holder}). Stop working on it and discard the result."
            )
        return row

    def renew_lease(self, buffer_id: int, worker_id: str, lease_seconds: float) -> float:
        """Extend this worker's lease; returns the new expiry. LeaseLostError if another
        worker took the buffer over (or it was finished)."""
        lease = _positive(lease_seconds, "lease_seconds")
        with self._conns.write() as db:
            self._require_claim(db, buffer_id, worker_id)
            until = self._now() + lease
            db.execute(
                "UPDATE task_buffers SET lease_until = ?, updated_at = ? WHERE id = ?",
                [until, self._now(), buffer_id],
            )
        return until

    def finish_claim(
        self,
        buffer_id: int,
        worker_id: str,
        status: str,
        reason: str | None = None,
        adapter_version: str | None = None,
    ) -> TaskBuffer:
        """End a claim: ``promoted`` (with the adapter version now served) or ``rejected``
        (with the reason, shown to the user, and the rejected candidate's name if any)."""
        if status not in BUFFER_OUTCOMES:
            raise InvalidInputError(f"status must be 'promoted' or 'rejected', not {status!r}.")
        why = clean_optional_text(reason, what="reason", max_chars=self.max_answer_chars)
        if status == "rejected" and why is None:
            raise InvalidInputError("Give a reason when rejecting a buffer, so users can see why.")
        with self._conns.write() as db:
            self._require_claim(db, buffer_id, worker_id)
            if adapter_version is not None:
                require_adapter_exists(db, adapter_version)
            db.execute(
                """UPDATE task_buffers SET status = ?, reason = ?, adapter_version = ?,
                   lease_until = NULL, updated_at = ? WHERE id = ?""",
                [status, why, adapter_version, self._now(), buffer_id],
            )
            return buffer_with_items(db, buffer_id)

    def get_buffer(self, buffer_id: int) -> TaskBuffer:
        """A buffer with its items (any session: for the worker and admin views)."""
        with self._conns.read() as db:
            return buffer_with_items(db, buffer_id)

    def buffer_items(self, buffer_id: int) -> list[BufferItem]:
        with self._conns.read() as db:
            buffer_row(db, buffer_id)
            return list(items_of(db, buffer_id))

    def set_splits(self, buffer_id: int, splits: Mapping[int, str]) -> list[BufferItem]:
        """Assign items of a buffer to 'train' or 'heldout' (all or nothing)."""
        for item_id, split in splits.items():
            if split not in SPLITS:
                raise InvalidInputError(
                    f"split must be 'train' or 'heldout', not {split!r} (item {item_id})."
                )
        with self._conns.write() as db:
            buffer_row(db, buffer_id)
            now = self._now()
            for item_id, split in splits.items():
                cursor = db.execute(
                    "UPDATE buffer_items SET split = ?, updated_at = ? WHERE id = ? AND buffer_id = ?",
                    [split, now, item_id, buffer_id],
                )
                if cursor.rowcount != 1:
                    raise NotFoundError(f"Item {item_id!r} is not in task buffer {buffer_id}.")
            return list(items_of(db, buffer_id))

    def heldout_items(self, status: str = BufferStatus.PROMOTED) -> list[BufferItem]:
        """Held-out items of every buffer with ``status``, oldest buffer first (the
        worker re-evaluates them to detect forgetting)."""
        with self._conns.read() as db:
            rows = fetch_all(
                db,
                """SELECT bi.* FROM buffer_items bi JOIN task_buffers tb ON tb.id = bi.buffer_id
                   WHERE tb.status = ? AND bi.split = 'heldout' ORDER BY tb.id, bi.id""",
                [status],
            )
        return [BufferItem.from_row(r) for r in rows]

    def session_buffers(self, session_id: str) -> list[TaskBuffer]:
        """This session's buffers with their items, oldest first."""
        with self._conns.read() as db:
            require_session(db, session_id)
            rows = fetch_all(db, "SELECT * FROM task_buffers WHERE session_id = ? ORDER BY id", [session_id])
            return [TaskBuffer.from_row(r, items_of(db, r["id"])) for r in rows]
