"""Who may teach: the author of a request, and the teaching policy applied to each correction.

**Authors.** On a Space with OAuth (``hf_oauth: true``) a signed-in user is their Hugging Face
user name (``gr.OAuthProfile.username``); with Gradio's own ``auth`` the login name; anyone
else is their session (``guest-<id[:8]>``, named by the store). The author is fixed when the
session's first question is stored.

**Policy** (``Settings.teach``): under ``anyone`` every correction goes into the session's
task buffer and trains. Under ``review`` only a trusted teacher's do (``LLACA_TEACHERS``);
everyone else's are held for the admin's review (``FeedbackStore.hold_correction``), stored
and shown to their author as waiting, never lost. Quotas (``app.quotas``) are checked first,
under every policy.
"""

from __future__ import annotations

import hmac
from dataclasses import dataclass
from typing import Any

from feedback_store import FeedbackStore
from llaca.config.settings import Settings, is_loopback_host

from .errors import UserError
from .quotas import Quotas

WAITING_FOR_REVIEW = "waiting for review"
ADMIN_REFUSED = "Wrong admin password; nothing was changed."
ADMIN_UNSET = ("Admin actions are disabled: no admin password is set. Start the app with LLACA_ADMIN_PASSWORD "
               "(or --admin-password) to enable them.")


def author_name(request: Any = None, profile: Any = None) -> str | None:
    """The signed-in user's name (OAuth, then Gradio auth), or None for a guest."""
    name = getattr(profile, "username", None) or (profile.get("preferred_username") if isinstance(profile, dict) else None)
    return str(name) if name else (getattr(request, "username", None) or None)


def client_address(request: Any = None) -> str | None:
    """The caller's network address. Behind a proxy (the direct peer is a loopback or private
    address, as on a Space) it is the last ``X-Forwarded-For`` entry, the one the proxy itself
    appended; earlier entries are whatever the client sent and are never trusted."""
    if request is None:
        return None
    peer = getattr(getattr(request, "client", None), "host", None)
    headers = getattr(request, "headers", None) or {}
    forwarded = headers.get("x-forwarded-for") if hasattr(headers, "get") else None
    if forwarded and (peer is None or _is_internal(peer)):
        return forwarded.split(",")[-1].strip() or peer
    return peer


def _is_internal(address: str) -> bool:
    import ipaddress

    try:
        ip = ipaddress.ip_address(address)
    except ValueError:
        return address == "localhost"
    return ip.is_loopback or ip.is_private


def client_description(request: Any = None) -> str | None:
    """What the store keeps about a session's client: the user agent."""
    if request is None:
        return None
    try:
        agent = request.headers.get("user-agent")
    except Exception:
        agent = None
    return f"gradio; {agent}" if agent else "gradio"


def check_admin(settings: Settings, password: Any) -> None:
    """Raise ``UserError`` unless ``password`` is the admin password (compared in constant time)."""
    if not settings.admin_enabled:
        raise UserError(ADMIN_UNSET)
    if not isinstance(password, str) or not hmac.compare_digest(password.encode(), settings.admin_password.encode()):
        raise UserError(ADMIN_REFUSED)


@dataclass(frozen=True)
class Correction:
    """Where a correction went: a task buffer (``buffer_id``, its size and status), or the
    review queue (``buffer_id`` None, ``status`` "waiting for review", ``size`` the author's
    corrections now waiting, ``correction_id`` the held correction)."""

    buffer_id: int | None
    size: int
    status: str
    correction_id: int | None = None

    @property
    def held(self) -> bool:
        return self.status == WAITING_FOR_REVIEW


class Teaching:
    """The policy and quotas, bound to the process's settings and store."""

    def __init__(self, settings: Settings, store: FeedbackStore) -> None:
        self.settings, self.store = settings, store
        self.quotas = Quotas(settings, store)

    def trusted(self, author: str | None) -> bool:
        return self.settings.is_teacher(author)

    @staticmethod
    def address(request: Any = None) -> str | None:
        """The address guests are grouped by for quotas and the fair queue: None for this
        machine's own (its sessions are the owner's scripts and tests)."""
        address = client_address(request)
        return None if address is None or is_loopback_host(address) else address

    def correct(self, session_id: str, message_id: str, text: str) -> Correction:
        """Apply the policy to one correction of an answer of this session."""
        if not session_id:
            raise UserError(f"No message {message_id!r} in this session (it has not asked anything yet).")
        author = self.store.author_of(session_id)
        held = not self.trusted(author)
        self.quotas.check_correction(self.store.quota_key_of(session_id), held)
        if not held:
            r = self.store.add_correction(session_id, message_id, text, ready_threshold=self.settings.buffer_size)
            return Correction(r.buffer_id, r.size, r.status)
        review = self.store.hold_correction(session_id, message_id, text)
        waiting = self.store.author_usage(self.store.quota_key_of(session_id)).pending_reviews
        return Correction(None, waiting, WAITING_FOR_REVIEW, review.feedback_id)

    def you(self, session_id: str | None, request: Any = None, profile: Any = None) -> dict:
        """``/status``'s "you": who the caller is and what of theirs waits for review."""
        name = self.store.author_of(session_id) if session_id else author_name(request, profile)
        return {"author": name or "guest (named on your first question)", "trusted": self.trusted(name),
                "teach": self.settings.teach, "pending": len(self.store.pending_reviews(name)) if name else 0}
