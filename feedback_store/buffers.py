"""Task buffers: corrections collect per session, become ready, are claimed by a worker.

Life of a buffer::

    open --(size threshold | user asks | idle timeout)--> ready
    ready --claim (lease; attempts + 1)--> training --finish--> promoted | rejected
    training, lease expired --claim--> ready (and claimed again)
    training, lease expired, attempts >= max_claim_attempts --same--> rejected
    training --release (the worker is stopping; the attempt is not counted)--> ready

A session has at most one open buffer (a unique index enforces it). Claiming runs in
``BEGIN IMMEDIATE``, so two workers - threads or processes - never get the same buffer.
A worker that lost its lease gets ``LeaseLostError`` from ``renew_lease``/``finish_claim``.
"""

from __future__ import annotations

import logging
from typing import Mapping

from sqlite_utils import Database

from .conversations import Conversations
from .errors import (
    InvalidCorrectionError,
    InvalidInputError,
    LeaseLostError,
    NothingToTeachError,
)
from .queries import (
    buffer_row,
    buffer_with_items,
    conversation_image,
    items_of,
    one,
    require_adapter,
    require_answer,
    require_session,
    set_item_column,
)
from .records import SPLITS, BufferItem, BufferState, TaskBuffer, from_row
from .status import BUFFER_OUTCOMES, BufferStatus
from .validation import clean_optional_text, clean_text, require_worker

log = logging.getLogger(__name__)


FAIRNESS_WINDOW = 3600.0  # seconds of history the fair queue looks back on
FAIR_NEXT_READY = """
SELECT tb.id, tb.attempts FROM task_buffers tb JOIN sessions s ON s.id = tb.session_id
WHERE tb.status = 'ready'
ORDER BY (SELECT count(*) FROM task_buffers t2 JOIN sessions s2 ON s2.id = t2.session_id
          WHERE s2.quota_key IS s.quota_key AND t2.status IN ('training', 'promoted', 'rejected') AND t2.updated_at > ?),
         coalesce(tb.ready_at, tb.updated_at), tb.id
LIMIT 1"""
"""The next buffer to learn: of the teacher (``sessions.quota_key``: an author, or the guests of
one network address) with the fewest buffers taken up in the last
``FAIRNESS_WINDOW`` (in training, or learned or refused since), then the oldest ready one.
Authors thus take turns, and a flood from one waits behind everyone else's corrections."""


def check_threshold(ready_threshold: int | None) -> None:
    if ready_threshold is not None and (not isinstance(ready_threshold, int) or ready_threshold < 1):
        raise InvalidInputError(
            f"ready_threshold must be a positive integer, not {ready_threshold!r}", field="ready_threshold"
        )


def _lease(seconds: float) -> float:
    if not isinstance(seconds, (int, float)) or not seconds > 0:
        raise InvalidInputError(f"lease_seconds must be a positive number, not {seconds!r}", field="lease_seconds")
    return float(seconds)


class Buffers(Conversations):
    """Corrections, task buffers and the worker's claim/lease protocol."""

    def add_correction(
        self, session_id: str, message_id: str, corrected_text: str | bytes, ready_threshold: int | None = None,
    ) -> BufferState:
        """Record a correction of an answer and put (image, question, corrected answer)
        into the session's open buffer (created if needed), all in one transaction.

        Correcting the same message again updates its item while that item's buffer is
        still open or ready (after training it goes into the open buffer as a new item).
        When the buffer reaches ``ready_threshold`` items it is marked ready.
        """
        corrected = self._clean_correction(corrected_text)
        check_threshold(ready_threshold)
        with self._conns.write() as db:
            answer, question = self._correctable(db, session_id, message_id, corrected)
            feedback = self._insert_feedback(
                db, session_id, message_id, "correction", corrected_text=corrected, previous_text=answer.text
            )
            return self._buffer_correction(db, session_id, message_id, question, corrected, feedback.id, ready_threshold)

    def _clean_correction(self, corrected_text: str | bytes) -> str:
        return clean_text(
            corrected_text, what="corrected answer", max_chars=self.max_answer_chars, error=InvalidCorrectionError
        )

    @staticmethod
    def _correctable(db: Database, session_id: str, message_id: str, corrected: str):
        """(the answer, its question's text), or InvalidCorrectionError."""
        answer = require_answer(db, session_id, message_id)
        if corrected.strip() == answer.text.strip():
            raise InvalidCorrectionError(
                "the corrected answer is the same as the original answer",
                field="corrected answer", problem="unchanged",
            )
        question = one(
            db, "SELECT text FROM messages WHERE id = ? AND session_id = ? AND role = 'user'",
            [answer.parent_id, session_id],
        )
        if question is None:
            raise InvalidCorrectionError(
                "the answer has no question recorded with it", field="corrected answer", problem="no_question"
            )
        return answer, question["text"]

    def _buffer_correction(
        self, db: Database, session_id: str, message_id: str, question: str, corrected: str, feedback_id: int,
        ready_threshold: int | None,
    ) -> BufferState:
        """Put a correction into the session's open buffer (or update its item there while
        it is open or ready); mark the buffer ready at ``ready_threshold`` items."""
        now = self._now()
        existing = one(
            db,
            """SELECT bi.id, bi.buffer_id FROM buffer_items bi
               JOIN task_buffers tb ON tb.id = bi.buffer_id
               WHERE bi.message_id = ? AND tb.session_id = ? AND tb.status IN ('open', 'ready')
               ORDER BY bi.id DESC LIMIT 1""",
            [message_id, session_id],
        )
        if existing is not None:
            buffer_id = existing["buffer_id"]
            db["buffer_items"].update(existing["id"], {"answer": corrected, "feedback_id": feedback_id,
                                                       "updated_at": now})
        else:
            buffer_id = self._open_buffer_id(db, session_id, now)
            db["buffer_items"].insert({
                "buffer_id": buffer_id, "message_id": message_id, "feedback_id": feedback_id,
                "image_sha256": conversation_image(db, message_id), "question": question,
                "answer": corrected, "split": "train", "created_at": now, "updated_at": now,
            })
        buffers = db["task_buffers"]
        buffers.update(buffer_id, {"updated_at": now})
        size = db["buffer_items"].count_where("buffer_id = ?", [buffer_id])
        status = buffers.get(buffer_id)["status"]
        if status == "open" and ready_threshold is not None and size >= ready_threshold:
            buffers.update(buffer_id, {"status": "ready", "ready_at": now, "updated_at": now})
            status = "ready"
        return BufferState(buffer_id=buffer_id, size=size, status=status)

    def _open_buffer_id(self, db: Database, session_id: str, now: float) -> int:
        row = one(db, "SELECT id FROM task_buffers WHERE session_id = ? AND status = 'open'", [session_id])
        if row is not None:
            return int(row["id"])
        return int(db["task_buffers"].insert(
            {"session_id": session_id, "status": "open", "created_at": now, "updated_at": now, "attempts": 0}
        ).last_pk)

    def mark_ready(self, session_id: str) -> TaskBuffer:
        """Mark the session's open buffer ready to learn; NothingToTeachError if it has
        none, or an empty one."""
        with self._conns.write() as db:
            require_session(db, session_id)
            row = one(db, "SELECT id FROM task_buffers WHERE session_id = ? AND status = 'open'", [session_id])
            if row is None or not items_of(db, row["id"]):
                raise NothingToTeachError(
                    f"session {session_id!r} has no corrections waiting to be learned", session_id=session_id
                )
            now = self._now()
            db["task_buffers"].update(row["id"], {"status": "ready", "ready_at": now, "updated_at": now})
            return buffer_with_items(db, row["id"])

    def mark_idle_buffers_ready(self, idle_seconds: float) -> list[int]:
        """Mark ready every non-empty open buffer without a new correction for
        ``idle_seconds``; returns their ids (the worker's idle timeout)."""
        with self._conns.write() as db:
            now = self._now()
            ids = [r["id"] for r in db.query(
                """SELECT id FROM task_buffers tb WHERE status = 'open' AND updated_at <= ?
                   AND EXISTS (SELECT 1 FROM buffer_items bi WHERE bi.buffer_id = tb.id) ORDER BY id""",
                [now - float(idle_seconds)],
            )]
            for buffer_id in ids:
                db["task_buffers"].update(buffer_id, {"status": "ready", "ready_at": now, "updated_at": now})
        return ids

    # -- the worker's side -----------------------------------------------------------

    def _release_expired(self, db: Database, now: float) -> None:
        """Expired leases: back to ready, or rejected after too many attempts."""
        expired = db["task_buffers"].rows_where(
            "status = 'training' AND (lease_until IS NULL OR lease_until < ?)", [now], order_by="id"
        )
        for row in list(expired):
            if row["attempts"] >= self.max_claim_attempts:
                reason = (f"set aside after {row['attempts']} training attempts whose workers stopped "
                          f"responding (last: {row['claimed_by']})")
                log.warning("buffer %d %s", row["id"], reason)
                change = {"status": "rejected", "reason": reason}
            else:
                log.warning("lease of %s on buffer %d expired; it is ready again", row["claimed_by"], row["id"])
                change = {"status": "ready", "claimed_by": None}
            db["task_buffers"].update(row["id"], {**change, "lease_until": None, "updated_at": now})

    def claim_ready_buffer(self, worker_id: str, lease_seconds: float) -> TaskBuffer | None:
        """Atomically claim the next ready buffer for ``worker_id`` until now +
        ``lease_seconds``; None if there is none. The queue is fair across authors
        (``FAIR_NEXT_READY``): one author's flood of buffers does not hold others back.
        Expired leases are released first: their buffers are ready again, or rejected
        after ``max_claim_attempts``."""
        worker, lease = require_worker(worker_id), _lease(lease_seconds)
        with self._conns.write() as db:
            now = self._now()
            self._release_expired(db, now)
            row = one(db, FAIR_NEXT_READY, [now - FAIRNESS_WINDOW])
            if row is None:
                return None
            db["task_buffers"].update(row["id"], {"status": "training", "claimed_by": worker, "updated_at": now,
                                                  "lease_until": now + lease, "attempts": row["attempts"] + 1})
            return buffer_with_items(db, row["id"])

    def _require_claim(self, db: Database, buffer_id: int, worker_id: str) -> None:
        row = buffer_row(db, buffer_id)
        if row["status"] != "training" or row["claimed_by"] != worker_id:
            holder = f" by {row['claimed_by']}" if row["status"] == "training" else ""
            raise LeaseLostError(
                f"worker {worker_id} no longer holds task buffer {buffer_id}: it is {row['status']}{holder}",
                buffer_id=buffer_id, worker_id=worker_id, status=row["status"], claimed_by=row["claimed_by"],
            )

    def renew_lease(self, buffer_id: int, worker_id: str, lease_seconds: float) -> float:
        """Extend this worker's lease; returns the new expiry. LeaseLostError if another
        worker took the buffer over (or it was finished)."""
        lease = _lease(lease_seconds)
        with self._conns.write() as db:
            self._require_claim(db, buffer_id, worker_id)
            now = self._now()
            db["task_buffers"].update(buffer_id, {"lease_until": now + lease, "updated_at": now})
        return now + lease

    def release_claim(self, buffer_id: int, worker_id: str) -> TaskBuffer:
        """Give a claimed buffer back to the queue untrained (the worker is stopping): it is
        ready again at once, and this attempt does not count against it. LeaseLostError if
        ``worker_id`` no longer holds it."""
        with self._conns.write() as db:
            self._require_claim(db, buffer_id, worker_id)
            row = buffer_row(db, buffer_id)
            db["task_buffers"].update(buffer_id, {"status": "ready", "claimed_by": None, "lease_until": None,
                                                  "attempts": max(0, row["attempts"] - 1), "updated_at": self._now()})
            return buffer_with_items(db, buffer_id)

    def finish_claim(
        self, buffer_id: int, worker_id: str, status: str, reason: str | None = None,
        adapter_version: str | None = None,
    ) -> TaskBuffer:
        """End a claim: ``promoted`` (with the adapter version now served) or ``rejected``
        (with the reason, shown to the user, and the rejected candidate's name if any)."""
        if status not in BUFFER_OUTCOMES:
            raise InvalidInputError(f"status must be 'promoted' or 'rejected', not {status!r}", field="status")
        why = clean_optional_text(reason, what="reason", max_chars=self.max_answer_chars)
        if status == "rejected" and why is None:
            raise InvalidInputError("a rejected buffer needs a reason", field="reason")
        with self._conns.write() as db:
            self._require_claim(db, buffer_id, worker_id)
            if adapter_version is not None:
                require_adapter(db, adapter_version)
            db["task_buffers"].update(buffer_id, {"status": status, "reason": why, "adapter_version": adapter_version,
                                                  "lease_until": None, "updated_at": self._now()})
            return buffer_with_items(db, buffer_id)

    def get_buffer(self, buffer_id: int) -> TaskBuffer:
        """A buffer with its items (any session)."""
        with self._conns.read() as db:
            return buffer_with_items(db, buffer_id)

    def buffer_items(self, buffer_id: int) -> list[BufferItem]:
        with self._conns.read() as db:
            return list(buffer_with_items(db, buffer_id).items)

    def set_splits(self, buffer_id: int, splits: Mapping[int, str]) -> list[BufferItem]:
        """Assign items of a buffer to 'train' or 'heldout' (all or nothing)."""
        for item_id, split in splits.items():
            if split not in SPLITS:
                raise InvalidInputError(f"split must be 'train' or 'heldout', not {split!r} (item {item_id})",
                                        field="split", value=split)
        with self._conns.write() as db:
            buffer_row(db, buffer_id)
            set_item_column(db, buffer_id, "split", dict(splits), self._now())
            return list(items_of(db, buffer_id))

    def heldout_items(self, status: str = BufferStatus.PROMOTED) -> list[BufferItem]:
        """Held-out items of every buffer with ``status``, oldest buffer first (the
        worker re-evaluates them to detect forgetting)."""
        with self._conns.read() as db:
            rows = db.query(
                """SELECT bi.* FROM buffer_items bi JOIN task_buffers tb ON tb.id = bi.buffer_id
                   WHERE tb.status = ? AND bi.split = 'heldout' ORDER BY tb.id, bi.id""",
                [status],
            )
            return [from_row(BufferItem, r) for r in rows]

    def session_buffers(self, session_id: str) -> list[TaskBuffer]:
        """This session's buffers with their items, oldest first."""
        with self._conns.read() as db:
            require_session(db, session_id)
            rows = list(db["task_buffers"].rows_where("session_id = ?", [session_id], order_by="id"))
            return [from_row(TaskBuffer, r, items=items_of(db, r["id"])) for r in rows]
