"""The programmatic API: named endpoints for clients and end-to-end tests.

``.like``/``.edit`` cannot be driven from ``gradio_client``, so feedback has explicit
endpoints. One ``gradio_client.Client`` is one Gradio session, which is one store session
(created on its first call); every endpoint acts only on that session's messages.

    /ask(image, question, temperature=0.0, top_p=0.7, max_new_tokens=512)
        -> (answer, message_id, adapter_version)
        With an image: a new conversation about it. Without (None): a follow-up about the
        previous image. Streams: intermediate outputs carry the answer so far and an empty
        message_id; the last one has the stored message id. Temperature defaults to 0
        (greedy, deterministic) here, unlike the chat UI's 0.2.
    /rate(message_id, rating)            rating: "like" | "dislike" -> confirmation text
    /correct(message_id, corrected_answer) -> (buffer_id, buffer_size, buffer_status)
    /teach()                             -> {"buffer_id", "size", "status", "message"} (marks the buffer
                                            ready; with nothing to queue: buffer_id None, status
                                            "nothing to queue", and why)
    /status()                            -> {"adapter_version", "current_adapter", "current_metrics" (the
                                            current version's metrics record, ``llaca.worker.record``, with
                                            its average accuracy and forgetting; None for the base model),
                                            "learning" (the status line's words), "worker" (live workers),
                                            "workers_not_responding", "workers_stopped", "buffers" (each
                                            correction with its "group" and "status"/"status_text": queued,
                                            training, learned in vN, held out, or pending and why), ...}
        Status words (buffers, workers) are those of ``feedback_store.status``.
    /stop()                              -> number of generations stopped in this session

Errors raise ``gr.Error`` with the reason (the client raises it as ``AppError``).

The endpoints are ``gr.api`` functions (`register`), typed by their signatures, with no
components behind them. A client's session state (its store session, the image its
follow-ups are about) is kept per Gradio session hash (`ApiSessions`, the most recent
`MAX_API_SESSIONS`). An uploaded image is read only from Gradio's upload folder, where the
client's `handle_file` puts it: a path anywhere else is refused.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import gradio as gr
from gradio import FileData

from feedback_store import NothingToTeachError, correction_status
from llaca.serve.assistant import BASE, ServedBy
from llaca.worker.liveness import classify

from .chat import params_from, session_key
from .dashboard import metrics_of
from .errors import UserError, user_message
from .feedback import like_kind
from .panels import worker_summary
from .services import Services, paced
from .state import SessionState

log = logging.getLogger(__name__)

MAX_API_SESSIONS = 4096  # API clients whose conversation state is kept (least recently used out)
API_NO_IMAGE = ("No image: pass one with the first question, /ask(image, question); later calls with image=None "
                "ask about that same image.")


def _fail(e: BaseException, doing: str) -> gr.Error:
    return gr.Error(user_message(e, doing))


def review_dict(r) -> dict:
    """A held correction as the API shows it (``/pending``, and ``/status`` for its author)."""
    return {"correction_id": r.feedback_id, "author": r.author, "question": r.question, "answer": r.answer,
            "correction": r.correction, "image_sha256": r.image_sha256, "message_id": r.message_id,
            "kind": r.kind, "status": r.status, "status_text": REVIEW_WORDS[r.status],
            "reason": r.reason, "created_at": r.created_at}


REVIEW_WORDS = {"pending": "waiting for review", "approved": "approved: in the buffer to learn",
                "rejected": "rejected by the admin; it will not be learned"}


def _worker(w) -> dict:
    return {"worker_id": w.worker_id, "state": w.state, "detail": w.detail, "updated_at": w.updated_at}


def _file_path(value: Any) -> str | None:
    if value is None or value == "":
        return None
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return value.get("path")
    return getattr(value, "path", None) or getattr(value, "name", None)


def uploaded_path(value: Any) -> str | None:
    """The path of a file a client uploaded (``handle_file``), which must lie in Gradio's upload
    folder: an endpoint without components gets the client's data as sent, so a path elsewhere
    on the server is refused rather than read."""
    path = _file_path(value)
    if path is None:
        return None
    upload = Path(gr.utils.get_upload_folder()).resolve()
    if not Path(path).resolve().is_relative_to(upload):
        raise UserError("The image must be uploaded with the request (gradio_client's handle_file), "
                        "not named by a path on the server.")
    return path


class ApiSessions:
    """Each API client's `SessionState`, by Gradio session hash (one ``gradio_client.Client``
    is one session), the most recent `limit` kept."""

    def __init__(self, limit: int = MAX_API_SESSIONS) -> None:
        self.limit = limit
        self._states: OrderedDict[str, SessionState] = OrderedDict()
        self._lock = threading.Lock()

    def get(self, request: gr.Request | None) -> SessionState:
        key = str(getattr(request, "session_hash", None) or "anonymous")
        with self._lock:
            state = self._states.pop(key, None) or SessionState()
            self._states[key] = state
            while len(self._states) > self.limit:
                self._states.popitem(last=False)
            return state

    def forget(self, request: gr.Request | None) -> None:
        with self._lock:
            self._states.pop(str(getattr(request, "session_hash", None) or "anonymous"), None)


class ApiHandlers:
    """Endpoint handlers, bound to the process's services; `register` serves them."""

    def __init__(self, services: Services) -> None:
        self.s = services
        self.sessions = ApiSessions()

    def register(self, model_limits: dict) -> None:
        """Serve the named endpoints (inside a ``gr.Blocks``), typed by these signatures."""
        sessions = self.sessions

        def ask(image: FileData | None, question: str, temperature: float = 0.0, top_p: float = 0.7,
                max_new_tokens: int = 512, request: gr.Request = None,
                profile: gr.OAuthProfile | None = None) -> Iterator[tuple[str, str, str]]:
            """Ask about an image (a new conversation) or, with image None, a follow-up; streams
            (answer so far, message id once stored, adapter version)."""
            try:
                path = uploaded_path(image)
            except UserError as e:
                raise _fail(e, "reading the image") from e
            yield from self.ask(path, question, temperature, top_p, max_new_tokens, sessions.get(request), request,
                                profile)

        def rate(message_id: str, rating: str, request: gr.Request = None) -> str:
            """Thumbs up ("like") or down ("dislike") on an answer of this session."""
            return self.rate(message_id, rating, sessions.get(request))

        def correct(message_id: str, corrected_answer: str,
                    request: gr.Request = None) -> tuple[int | None, int, str]:
            """Store the right answer: (buffer_id, buffer_size, buffer_status)."""
            return self.correct(message_id, corrected_answer, sessions.get(request))

        def teach(request: gr.Request = None) -> dict:
            """Queue this session's buffer for the learning worker."""
            return self.teach(sessions.get(request))

        def status(request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
            """The served version, the learning worker, and this session's buffers and reviews."""
            return self.status(sessions.get(request), request, profile)

        def stop(request: gr.Request = None) -> int:
            """Stop this session's running answer; returns how many were stopped."""
            return self.stop(sessions.get(request), request)

        gr.api(ask, api_name="ask", **model_limits)
        for fn in (rate, correct, teach, status):
            gr.api(fn, api_name=fn.__name__, concurrency_limit=None)
        gr.api(stop, api_name="stop", queue=False)

    def ask(self, image, question, temperature, top_p, max_new_tokens, state: SessionState, request: gr.Request = None,
            profile: gr.OAuthProfile | None = None):
        """Ask about an image (new conversation) or, with no image, a follow-up question.
        Yields (answer so far, message id once stored, adapter version)."""
        conv = state.api
        try:
            if self.s.stops.running(session_key(request, state)):
                raise UserError("This session is still answering its previous question: wait for it, or call /stop.")
            question = str(question or "").strip()
            if not question:
                raise UserError("The question is empty.")
            params = params_from(0.0 if temperature is None else temperature, 0.7 if top_p is None else top_p,
                                 512 if max_new_tokens is None else max_new_tokens)
            path = _file_path(image)
            image_bytes = Path(path).read_bytes() if path else None
            if image_bytes is None and conv.image is None:
                raise UserError(API_NO_IMAGE)
            session = self.s.admit_question(state, request, profile, params.max_new_tokens, len(image_bytes or b""))
            parent = None if image_bytes is not None else conv.last_id
            msg = self.s.store.record_user_message(session, question, image_bytes=image_bytes, parent_id=parent)
        except Exception as e:
            raise _fail(e, "recording the question") from e
        if image_bytes is not None:
            conv.image, conv.turns = msg.image_sha256, []
        conv.last_id = msg.id
        turns = list(conv.turns) + [(question, None)]
        text, served = "", ServedBy(self.s.assistant.version)
        inflight = self.s.answers.begin(session, msg.id, {**params.to_dict(), "via": "api"}, served)
        try:
            image_pil = self.s.images.get(conv.image)
            with self.s.generation(session_key(request, state)) as stop:
                stream = self.s.assistant.stream(turns, image_pil, params, stop)
                for text, served in paced(item for item in stream if item[0].strip()):
                    self.s.answers.progress(inflight, text, served)
                    yield text, "", served.version
                stopped = stop.requested
        except Exception as e:
            self.s.answers.abandon(inflight)
            raise _fail(e, "answering") from e
        text = text.strip()
        try:
            answer = self.s.answers.finish(inflight, text, served, stopped)
        except Exception as e:
            raise _fail(e, "saving the answer") from e
        conv.turns.append((question, text))
        conv.last_id = answer.id
        yield text, answer.id, served.version

    def rate(self, message_id, rating, state: SessionState) -> str:
        """Thumbs up/down on an answer of this session."""
        kind = like_kind(str(rating or "").strip())
        try:
            if kind is None:
                raise UserError(f"rating must be 'like' or 'dislike', not {rating!r}")
            if state.session_id is None:
                raise UserError(f"No message {message_id!r} in this session (it has not asked anything yet).")
            fb = self.s.store.record_feedback(state.session_id, str(message_id or ""), kind)
        except Exception as e:
            raise _fail(e, "recording the rating") from e
        return f"{fb.kind} recorded on {fb.message_id}"

    def correct(self, message_id, corrected_answer, state: SessionState):
        """Store the right answer for an answer of this session. It joins the session's buffer,
        or, under the review policy for an untrusted author, waits for review (buffer_id None,
        status "waiting for review", size: the author's corrections waiting)."""
        try:
            if state.session_id is None:
                raise UserError(f"No message {message_id!r} in this session (it has not asked anything yet).")
            result = self.s.teaching.correct(state.session_id, str(message_id or ""), str(corrected_answer or ""))
        except Exception as e:
            raise _fail(e, "saving the correction") from e
        return result.buffer_id, result.size, result.status

    def teach(self, state: SessionState) -> dict:
        """Mark this session's open buffer ready for the learning worker. With nothing left
        to queue (no correction yet, or all already queued) it says so: that is a status,
        not an error."""
        nothing = {"buffer_id": None, "size": 0, "status": "nothing to queue"}
        if state.session_id is None:
            return {**nothing, "message": "There is nothing to teach yet: correct an answer first."}
        try:
            b = self.s.store.mark_ready(state.session_id)
        except NothingToTeachError:
            held = sum(r.status == "pending" for r in self.s.store.session_reviews(state.session_id))
            return {**nothing, "message": (f"{held} of this session's corrections wait for the admin's review; they "
                                           "are queued once approved. " if held else "")
                    + "Every correction of this session in a buffer is already queued or learned; "
                      "/status shows what became of each."}
        except Exception as e:
            raise _fail(e, "marking the buffer ready") from e
        return {"buffer_id": b.id, "size": b.size, "status": b.status, "message": f"buffer {b.id} is queued"}

    def status(self, state: SessionState, request: gr.Request = None, profile: gr.OAuthProfile | None = None) -> dict:
        """Served adapter version, learning worker state, who the caller is ("you"), this
        session's buffers, and its corrections held for review ("reviews")."""
        current = self.s.store.current_adapter()
        now = time.time()
        buffers = self.s.store.session_buffers(state.session_id) if state.session_id else []
        reviews = self.s.store.session_reviews(state.session_id) if state.session_id else []
        workers = self.s.store.worker_states()
        groups = classify(workers, now)
        return {
            "model": self.s.model_name,
            "adapter_version": self.s.assistant.version,
            "current_adapter": current.version if current else BASE,
            "current_metrics": m.summary() if current and (m := metrics_of(current)) else None,
            "buffer_size": self.s.settings.buffer_size,
            "session_id": state.session_id,
            "you": self.s.teaching.you(state.session_id, request, profile),
            "learning": worker_summary(workers, now),  # the page's status line says the same
            "worker": [_worker(w) for w in groups.live],  # live workers
            "workers_not_responding": [_worker(w) for w in groups.not_responding],
            "workers_stopped": [_worker(w) for w in groups.stopped],
            "buffers": [
                {"id": b.id, "status": b.status, "size": b.size, "adapter_version": b.adapter_version,
                 "reason": b.reason,
                 "items": [{"message_id": i.message_id, "question": i.question, "answer": i.answer,
                            "image_sha256": i.image_sha256, "group": i.group_id,
                            **dict(zip(("status", "status_text"), correction_status(i, b)))} for i in b.items]}
                for b in buffers
            ],
            "reviews": [review_dict(r) for r in reviews],
        }

    def stop(self, state: SessionState, request: gr.Request = None) -> int:
        """Stop this session's running generation(s)."""
        return self.s.stops.stop(session_key(request, state))
