"""The admin's review queue: the API endpoints and the dashboard's review panel.

Every call takes the admin password first; a wrong or unset one gets the same refusal as
rollback and changes nothing.

    /pending(password)                 -> [{"correction_id", "author", "question", "answer" (the
                                           model's), "correction", "group" (where it would be
                                           learned: a served group, or "new"), "kind", "created_at",
                                           "image_sha256"}, ...], oldest first
    /approve(password, ids)            -> {"approved": [ids], "buffers": [{"buffer_id", "size", "status"}]}
    /reject(password, ids, reason="")  -> {"rejected": [ids], "reason"}

``ids`` is a list of correction ids or a comma-separated string. Approving puts each
correction into its session's buffer, exactly as if its author were trusted; rejecting keeps
it, never trained, visible to its author with the reason. Several ids are all-or-nothing.
"""

from __future__ import annotations

import html
import logging
import time

import gradio as gr

from feedback_store import parse_ids

from .api import review_dict
from .errors import user_message
from .services import Services
from .teaching import check_admin

log = logging.getLogger(__name__)

REVIEW_HEADERS = ["id", "image", "author", "group", "question", "model's answer", "correction", "kind", "waiting"]
NOTHING_PENDING = "Nothing waits for review."


class ReviewHandlers:
    """Review endpoints and dashboard handlers, bound to the process's services."""

    def __init__(self, services: Services, thumbnails=None) -> None:
        self.s = services
        self.thumbs = thumbnails

    def _group(self, question: str) -> str:
        return self.s.assistant.served_by(question).group or "new"

    def _refuse(self, e: BaseException, doing: str) -> gr.Error:
        return gr.Error(user_message(e, doing))

    # -- API -------------------------------------------------------------------------------

    def pending(self, password: str) -> list[dict]:
        """Every correction waiting for review, oldest first (admin password first)."""
        try:
            check_admin(self.s.settings, password)
            return [{**review_dict(r), "group": self._group(r.question)} for r in self.s.store.pending_reviews()]
        except Exception as e:
            raise self._refuse(e, "listing the review queue") from e

    def approve(self, password: str, ids: list[int] | str) -> dict:
        """Approve held corrections: each enters its session's buffer and will be learned."""
        try:
            check_admin(self.s.settings, password)
            states = self.s.store.approve_reviews(ids, by="admin", ready_threshold=self.s.settings.buffer_size)
        except Exception as e:
            raise self._refuse(e, "approving corrections") from e
        approved = parse_ids(ids)
        log.info("admin approved corrections %s", approved)
        return {"approved": approved,
                "buffers": [{"buffer_id": b.buffer_id, "size": b.size, "status": b.status} for b in states]}

    def reject(self, password: str, ids: list[int] | str, reason: str = "") -> dict:
        """Reject held corrections: they are kept but never learned; their authors see the reason."""
        try:
            check_admin(self.s.settings, password)
            rows = self.s.store.reject_reviews(ids, by="admin", reason=reason or None)
        except Exception as e:
            raise self._refuse(e, "rejecting corrections") from e
        log.info("admin rejected corrections %s", [r.feedback_id for r in rows])
        return {"rejected": [r.feedback_id for r in rows], "reason": rows[0].reason if rows else reason}

    # -- dashboard -------------------------------------------------------------------------

    def table(self, password: str | None) -> tuple[list[list], list[str], str]:
        """(rows of the review table, its authors for "all of one author", a status line)."""
        try:
            check_admin(self.s.settings, password)
        except Exception as e:
            return [], [], f"🔒 {user_message(e)}"
        pending = self.s.store.pending_reviews()
        now = time.time()
        rows = [[r.feedback_id, self._thumb(r.image_sha256), html.escape(r.author), self._group(r.question),
                 r.question, r.answer, r.correction, r.kind, f"{(now - r.created_at) / 60:.0f} min"] for r in pending]
        authors = sorted({r.author for r in pending})
        return rows, authors, (f"{len(pending)} correction(s) from {len(authors)} author(s) wait for review."
                               if pending else NOTHING_PENDING)

    def _thumb(self, sha: str | None) -> str:
        if not sha or self.thumbs is None:
            return ""
        return f'<img src="{self.thumbs.get(sha)}" width="48" height="48" alt="image">'

    def act(self, action: str, password: str | None, ids: str, author: str | None, reason: str | None):
        """Approve or reject the ids typed (comma-separated), or every pending one of ``author``."""
        try:
            check_admin(self.s.settings, password)
            if not str(ids or "").strip() and author:
                ids = [r.feedback_id for r in self.s.store.pending_reviews(author)]
                if not ids:
                    raise ValueError(f"{author} has nothing waiting for review")
            if action == "approve":
                done = self.approve(password, ids)["approved"]
                message = f"✅ Approved {len(done)} correction(s): they will be learned."
            else:
                done = self.reject(password, ids, reason or "")["rejected"]
                message = f"🚫 Rejected {len(done)} correction(s)."
        except gr.Error as e:
            message = f"⚠️ {e.message}"
        except Exception as e:
            message = f"⚠️ {user_message(e, action + ' corrections')}"
        rows, authors, line = self.table(password)
        return message, rows, gr.update(choices=authors, value=None), line
