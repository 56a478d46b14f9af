"""Who teaches: authors, the review queue, and what each author has used of their quotas.

Every session has an author (``sessions.author``: a signed-in user's name, or
``guest-<id[:8]>``). Under the review policy a correction from an untrusted author is
*held*: the correction is recorded (feedback row) and a ``reviews`` row keeps the
question, the model's answer and the correction, but nothing enters a task buffer, so
nothing trains. The admin approves (the correction then enters its session's open buffer,
exactly as an unreviewed one would) or rejects (it never trains; its author still sees it,
with the reason). Nothing submitted is lost either way.

Correcting a held answer again updates the held correction while it is pending.

Conflicts (``hold_conflicts``): when the learning worker finds that a run's corrections
contradict what other authors taught the same group, under the review policy they come here
as ``kind="conflict"``, naming both authors, and are not retried. Approving one overrules the
other authors' contradicted items (no longer learned, replayed or counted as evidence) and
queues the correction again in a new buffer; rejecting it keeps what was learned.
"""

from __future__ import annotations

import json
import time
from typing import Iterable

from .buffers import Buffers, check_threshold
from .errors import InvalidInputError, NotFoundError
from .queries import conversation_image, one, require_session
from .records import AuthorUsage, BufferState, Review, from_row
from .status import MAX_REFUSALS
from .validation import clean_optional_text

REVIEW_KINDS = ("review", "conflict")
HOUR, DAY = 3600.0, 86400.0


def parse_ids(ids: int | str | Iterable[int | str] | None) -> list[int]:
    """Correction ids from a list, one id, or a comma-separated string; a clear error for anything else."""
    if ids is None:
        raise InvalidInputError("no correction ids given", field="ids")
    parts = ids.split(",") if isinstance(ids, str) else [ids] if isinstance(ids, int) else list(ids)
    out: list[int] = []
    for p in parts:
        text = str(p).strip()
        if not text:
            continue
        try:
            out.append(int(text))
        except ValueError:
            raise InvalidInputError(f"correction ids are whole numbers, not {text!r}", field="ids", value=text) from None
    if not out:
        raise InvalidInputError("no correction ids given", field="ids")
    return list(dict.fromkeys(out))


class Reviews(Buffers):
    """Authors, held corrections and their review, and quota usage."""

    def author_of(self, session_id: str) -> str:
        with self._conns.read() as db:
            return require_session(db, session_id).author or ""

    def quota_key_of(self, session_id: str) -> str:
        """Who this session's requests count against (``Session.quota_key``)."""
        with self._conns.read() as db:
            session = require_session(db, session_id)
            return session.quota_key or session.author or ""

    def hold_correction(self, session_id: str, message_id: str, corrected_text: str | bytes,
                        kind: str = "review", reason: str | None = None) -> Review:
        """Record a correction for review instead of learning (module docstring)."""
        if kind not in REVIEW_KINDS:
            raise InvalidInputError(f"kind must be one of {REVIEW_KINDS}, not {kind!r}", field="kind")
        corrected = self._clean_correction(corrected_text)
        with self._conns.write() as db:
            session = require_session(db, session_id)
            answer, question = self._correctable(db, session_id, message_id, corrected)
            feedback = self._insert_feedback(
                db, session_id, message_id, "correction", corrected_text=corrected, previous_text=answer.text
            )
            now = self._now()
            held = one(db, "SELECT feedback_id FROM reviews WHERE message_id = ? AND session_id = ? AND status = 'pending'",
                       [message_id, session_id])
            if held is not None:  # a second correction of the same answer replaces the first
                db.execute("DELETE FROM reviews WHERE feedback_id = ?", [held["feedback_id"]])
            row = {
                "feedback_id": feedback.id, "session_id": session_id, "message_id": message_id,
                "author": session.author or "", "image_sha256": conversation_image(db, message_id),
                "question": question, "answer": answer.text, "correction": corrected, "kind": kind,
                "status": "pending", "reason": clean_optional_text(reason, what="reason", max_chars=2000),
                "decided_by": None, "created_at": now, "decided_at": None,
            }
            db["reviews"].insert(row)
            return from_row(Review, row)

    def hold_conflicts(self, item_ids, reason: str, against) -> list[Review]:
        """A run's corrections contradict other authors' learned ones (``against``, item ids):
        send each to the review queue as a conflict (naming both authors in ``reason``) and stop
        retrying it until the admin decides. Items without a correction row are left alone."""
        ids, against = [int(i) for i in item_ids], sorted(int(i) for i in against)
        out = []
        with self._conns.write() as db:
            now = self._now()
            for item_id in ids:
                item = one(db, "SELECT * FROM buffer_items WHERE id = ?", [item_id])
                if item is None or item["feedback_id"] is None or item["learned_in"] is not None:
                    continue
                fb = one(db, "SELECT * FROM feedback WHERE id = ?", [item["feedback_id"]])
                session = require_session(db, fb["session_id"])
                row = {
                    "feedback_id": fb["id"], "session_id": fb["session_id"], "message_id": fb["message_id"],
                    "author": session.author or "", "image_sha256": item["image_sha256"], "question": item["question"],
                    "answer": fb["previous_text"] or "", "correction": item["answer"], "kind": "conflict",
                    "status": "pending", "reason": reason[:2000], "conflicts": json.dumps(against), "decided_by": None,
                    "created_at": now, "decided_at": None,
                }
                db["reviews"].upsert(row, pk="feedback_id")
                db.execute("UPDATE buffer_items SET refusals = ?, pending_reason = ?, updated_at = ? WHERE id = ?",
                           [MAX_REFUSALS, f"conflict, waiting for the admin's review: {reason}"[:4000], now, item_id])
                out.append(from_row(Review, row))
        return out

    def pending_reviews(self, author: str | None = None) -> list[Review]:
        """Every correction waiting for review (of one author, if given), oldest first."""
        where, params = "status = 'pending'", []
        if author is not None:
            where, params = where + " AND author = ?", [author]
        with self._conns.read() as db:
            return [from_row(Review, r) for r in db["reviews"].rows_where(where, params, order_by="created_at, feedback_id")]

    def session_reviews(self, session_id: str) -> list[Review]:
        """This session's held corrections (pending, approved or rejected), oldest first."""
        with self._conns.read() as db:
            return [from_row(Review, r) for r in db["reviews"].rows_where("session_id = ?", [session_id],
                                                                          order_by="created_at, feedback_id")]

    def _pending(self, db, ids: list[int]) -> list[dict]:
        rows = []
        for i in ids:
            row = one(db, "SELECT * FROM reviews WHERE feedback_id = ?", [i])
            if row is None:
                raise NotFoundError(f"no correction {i} is waiting for review")
            if row["status"] != "pending":
                raise InvalidInputError(f"correction {i} was already {row['status']}", field="ids", value=i)
            rows.append(row)
        return rows

    def approve_reviews(self, ids, by: str, ready_threshold: int | None = None, queue: bool = True) -> list[BufferState]:
        """Approve held corrections (all or nothing): each enters its session's open buffer as
        an unreviewed correction would, and (``queue``) those buffers are marked ready at once;
        returns the buffer each went to."""
        wanted = parse_ids(ids)
        check_threshold(ready_threshold)
        with self._conns.write() as db:
            states = []
            now = self._now()
            for row in self._pending(db, wanted):
                if row["kind"] == "conflict":  # the admin sides with this correction: it overrules the others
                    self._overrule(db, json.loads(row["conflicts"] or "[]"), row["author"], now)
                    db.execute("UPDATE buffer_items SET pending_reason = ?, updated_at = ? WHERE feedback_id = ?",
                               ["approved after a conflict: learned again from a new buffer", now, row["feedback_id"]])
                states.append(self._buffer_correction(db, row["session_id"], row["message_id"], row["question"],
                                                      row["correction"], row["feedback_id"], ready_threshold))
                db["reviews"].update(row["feedback_id"], {"status": "approved", "decided_by": by, "decided_at": now})
            if queue:  # reviewed work waits for nothing more: its buffers are learned next
                for buffer_id in {st.buffer_id for st in states}:
                    if db["task_buffers"].get(buffer_id)["status"] == "open":
                        db["task_buffers"].update(buffer_id, {"status": "ready", "ready_at": now, "updated_at": now})
                states = [BufferState(st.buffer_id, st.size, "ready" if st.status == "open" else st.status)
                          for st in states]
            return states

    @staticmethod
    def _overrule(db, item_ids: list[int], winner: str, now: float) -> None:
        """Learned items the admin ruled against: no longer learned, replayed or counted as evidence."""
        for item_id in item_ids:
            db.execute("UPDATE buffer_items SET learned_in = NULL, refusals = ?, pending_reason = ?, updated_at = ? "
                       "WHERE id = ?", [MAX_REFUSALS, f"overruled by the admin in favour of {winner}'s correction",
                                        now, int(item_id)])

    def reject_reviews(self, ids, by: str, reason: str | None = None) -> list[Review]:
        """Reject held corrections (all or nothing): they never train; their authors see the reason."""
        wanted = parse_ids(ids)
        why = clean_optional_text(reason, what="reason", max_chars=2000) or "rejected by the admin"
        with self._conns.write() as db:
            now = self._now()
            rows = self._pending(db, wanted)
            for row in rows:
                db["reviews"].update(row["feedback_id"], {"status": "rejected", "reason": why, "decided_by": by,
                                                          "decided_at": now})
            return [from_row(Review, {**r, "status": "rejected", "reason": why, "decided_by": by, "decided_at": now})
                    for r in rows]

    def author_usage(self, key: str, now: float | None = None) -> AuthorUsage:
        """A teacher's (``quota_key``: an author, or the guests of one address) corrections in the
        last hour, buffers waiting to be learned, corrections waiting for review, and bytes of
        images first uploaded in the last day."""
        now = time.time() if now is None else now
        with self._conns.read() as db:
            corrections = one(db, """SELECT count(*) AS n FROM feedback f JOIN sessions s ON s.id = f.session_id
                                     WHERE s.quota_key = ? AND f.kind = 'correction' AND f.created_at > ?""",
                              [key, now - HOUR])["n"]
            waiting = one(db, """SELECT count(*) AS n FROM task_buffers tb JOIN sessions s ON s.id = tb.session_id
                                 WHERE s.quota_key = ? AND tb.status IN ('ready', 'training')""", [key])["n"]
            pending = one(db, """SELECT count(*) AS n FROM reviews r JOIN sessions s ON s.id = r.session_id
                                 WHERE s.quota_key = ? AND r.status = 'pending'""", [key])["n"]
            image_bytes = one(db, """SELECT coalesce(sum(i.bytes), 0) AS n FROM images i WHERE i.created_at > ? AND
                                     i.sha256 IN (SELECT m.image_sha256 FROM messages m JOIN sessions s ON s.id = m.session_id
                                                  WHERE s.quota_key = ? AND m.created_at > ?)""",
                              [now - DAY, key, now - DAY])["n"]
        return AuthorUsage(int(corrections), int(waiting), int(pending), int(image_bytes))
