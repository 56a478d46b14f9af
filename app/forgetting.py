"""The admin's "forget": an author, or one correction, out of the store and the served model.

    /forget(password, author)                  -> {"author", "deleted": {...}, "groups", "version", "job"}
    /forget_correction(password, correction_id) -> the same, for one correction

The rows are deleted at once (``FeedbackStore.forget_author`` / ``forget_correction``: the
author's sessions, questions, answers, corrections, held corrections and the images no one
else uses; exports read the store, so they no longer hold them). The groups those
corrections trained (the served version's provenance, and the deleted items' groups) are
dropped from the served system at once (``llaca.worker.forgetting.drop_groups``: a new version, every
other group's adapter hard-linked unchanged); the learning worker then retrains each of them
from the corrections that remain, through the guard (a queued job, ``"job"``).
"""

from __future__ import annotations

import logging

import gradio as gr

from llaca.worker.forgetting import drop_groups
from llaca.worker.policy import served_system

from .errors import user_message
from .services import Services
from .teaching import check_admin

log = logging.getLogger(__name__)


class ForgetHandlers:
    """Forget endpoints and the dashboard's forget button, bound to the process's services."""

    def __init__(self, services: Services) -> None:
        self.s = services

    def _finish(self, report, groups: list[str], what: str) -> dict:
        store = self.s.store
        version = drop_groups(store, self.s.settings.data_dir / "adapters", groups, f"forgot {what}")
        job = store.request_retrain(groups, f"forgot {what}") if groups else None
        self.s.assistant.refresh(force=True)  # the next answer is served without them
        return {"author": report.author, "groups": groups, "version": version, "job": job.id if job else None,
                "deleted": {"sessions": report.sessions, "corrections": report.corrections,
                            "messages": report.messages, "images": report.images}}

    def forget(self, password: str, author: str) -> dict:
        """Forget an author: their rows, and their influence on the served model."""
        try:
            check_admin(self.s.settings, password)
            _, system = served_system(self.s.store)
            report = self.s.store.forget_author(str(author or ""))
            groups = sorted({*system.groups_of(report.author), *report.groups})
            result = self._finish(report, groups, f"author {report.author}")
        except Exception as e:
            raise gr.Error(user_message(e, "forgetting the author")) from e
        log.info("admin forgot author %s: %s", report.author, result)
        return result

    def forget_correction(self, password: str, correction_id: int) -> dict:
        """Forget one correction: its rows, and what it taught the served model."""
        try:
            check_admin(self.s.settings, password)
            report = self.s.store.forget_correction(correction_id)
            result = self._finish(report, list(report.groups), f"correction {correction_id}")
        except Exception as e:
            raise gr.Error(user_message(e, "forgetting the correction")) from e
        log.info("admin forgot correction %s: %s", correction_id, result)
        return result

    def button(self, password: str | None, author: str | None) -> str:
        """The dashboard's "Forget this author" button: a message for the page."""
        try:
            result = self.forget(password or "", author or "")
        except gr.Error as e:
            return f"⚠️ {e.message}"
        d = result["deleted"]
        served = (f" {result['version']} serves without groups {', '.join(result['groups'])}; they are retrained "
                  "from the remaining corrections." if result["version"] else "")
        return (f"🧹 Forgot {result['author']}: {d['corrections']} correction(s), {d['messages']} message(s), "
                f"{d['images']} image(s) deleted.{served}")

    def authors(self, password: str | None):
        """The authors the forget picker offers (admin only)."""
        try:
            check_admin(self.s.settings, password)
        except Exception:
            return gr.update(choices=[], value=None)
        return gr.update(choices=self.s.store.authors(), value=None)
