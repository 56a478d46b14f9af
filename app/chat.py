"""Chat handlers: ask (streamed), regenerate, undo, clear, stop, and re-ask after a question edit.

Every handler takes the chatbot history and the session's ``SessionState``; the history is
normalised by ``app.history`` and kept aligned with ``state.messages`` (one store message
per chatbot message). The user's question is recorded before the model runs and the answer
after it (with the adapter version and generation settings), so a model failure or a Stop
loses nothing: the question stays in the chat and can be regenerated.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterator

import gradio as gr
from PIL import Image

from llaca.model.llava import GenerationParams
from llaca.serve.assistant import ServedBy

from .errors import UserError, user_message
from .history import (
    Turn,
    assistant_message,
    context_start,
    context_turns,
    last_index,
    normalize,
    to_messages,
)
from .services import Services, paced
from .state import MessageMeta, SessionState

log = logging.getLogger(__name__)

NO_IMAGE = "Upload an image first (click the paperclip, drop or paste one), then ask about it."
NO_QUESTION = "Type a question about the image."
STOPPED_EMPTY = "(stopped before answering)"
BUSY = "Still answering your previous question: wait for it, or press Stop."


def session_key(request: gr.Request | None, state: SessionState) -> str:
    """The key of this Gradio session (its session hash) for stop events and caches."""
    key = getattr(request, "session_hash", None) if request is not None else None
    return str(key or state.session_id or "anonymous")


def align(history: list | None, state: SessionState) -> list[Turn]:
    """Normalise the history and make ``state.messages`` the same length (they only differ
    if the page changed the chat in a way no handler saw)."""
    turns = normalize(history)
    if len(state.messages) != len(turns):
        log.warning("chat history (%d) and session state (%d) disagree; realigning", len(turns), len(state.messages))
        del state.messages[len(turns):]
        for t in turns[len(state.messages):]:
            state.messages.append(MessageMeta(id=None, role=t.role))
        if state.selected is not None and state.selected >= len(turns):
            state.selected = None
    return turns


FEEDBACK_SHOWN = {"like": "Like", "dislike": "Dislike", "corrected": "Dislike"}


def chatbot_update(messages: list[dict], state: SessionState) -> dict:
    """The chatbot's new value plus the thumbs to show on each answer, so a re-render
    keeps the feedback the user gave (``feedback_value``: one entry per assistant message)."""
    shown = [FEEDBACK_SHOWN.get(m.feedback or "") for m in state.messages[: len(messages)] if m.role == "assistant"]
    return gr.update(value=messages, feedback_value=shown)


def params_from(temperature: Any, top_p: Any, max_new_tokens: Any) -> GenerationParams:
    return GenerationParams(float(temperature), float(top_p), int(max_new_tokens))


def _file_path(entry: Any) -> str | None:
    if isinstance(entry, str):
        return entry
    if isinstance(entry, dict):
        return entry.get("path")
    return getattr(entry, "path", None)


class ChatHandlers:
    """The chat's event handlers, bound to the process's services."""

    def __init__(self, services: Services) -> None:
        self.s = services

    # -- helpers ---------------------------------------------------------------------

    def _context_image(self, turns: list[Turn], state: SessionState, start: int) -> Image.Image:
        meta = state.messages[start]
        if meta.image:
            return self.s.images.get(meta.image)
        with Image.open(turns[start].files[0]) as im:  # not recorded: read the upload itself
            return im.convert("RGB")

    def _has_image(self, turns: list[Turn], state: SessionState) -> list[bool]:
        return [bool(m.image) or t.has_image for m, t in zip(state.messages, turns)]

    def _stream_answer(
        self, turns: list[Turn], state: SessionState, params: GenerationParams, key: str
    ) -> Iterator[list[dict]]:
        """Answer the user message that ends ``turns``: yield chatbot messages as the answer
        streams, then record it. On failure the question stays and a warning says why."""
        u = len(turns) - 1
        start = context_start(turns, u, self._has_image(turns, state))
        messages = to_messages(turns)
        if start is None:
            gr.Warning(NO_IMAGE)
            yield list(messages)
            return
        try:
            image = self._context_image(turns, state, start)
        except Exception as e:
            gr.Warning(f"The conversation's image could not be read: {e}. Upload it again.")
            yield list(messages)
            return
        pairs = context_turns(turns, start, u)
        question_id, epoch = state.messages[u].id, state.epoch
        messages.append(assistant_message("", streaming=True))
        meta = MessageMeta(id=None, role="assistant")
        state.messages.append(meta)
        yield list(messages)
        text, served, stopped = "", ServedBy(self.s.assistant.version), False
        inflight = (self.s.answers.begin(state.session_id, question_id, params.to_dict(), served)
                    if question_id is not None else None)
        try:
            with self.s.generation(key) as stop:
                stream = self.s.assistant.stream(pairs, image, params, stop)
                for text, served in paced(item for item in stream if item[0].strip()):
                    if inflight is not None:
                        self.s.answers.progress(inflight, text, served)
                    if state.epoch != epoch:  # Undo/Clear took this turn away: stop, keep it in the store
                        stop.set()
                        continue
                    messages[-1] = assistant_message(text, streaming=True)
                    yield list(messages)
                stopped = stop.requested
        except Exception as e:
            if inflight is not None:
                self.s.answers.abandon(inflight)
            gr.Warning(user_message(e, "answering") + " Your question is kept: press Regenerate to try again.")
            if state.epoch == epoch:
                messages.pop()
                state.messages.pop()
                yield list(messages)
            return
        text = text.strip()
        version = served.version
        meta.version, meta.group, meta.stopped = version, served.group, stopped
        if inflight is not None:
            try:
                meta.id = self.s.answers.finish(inflight, text, served, stopped).id
            except Exception as e:
                gr.Warning(f"The answer is shown but could not be saved: {user_message(e, 'saving the answer')}")
        if state.epoch != epoch:
            return  # the chat moved on (Undo/Clear); the answer is stored, the page is not touched
        state.selected = len(messages) - 1
        messages[-1] = assistant_message(text or STOPPED_EMPTY)
        yield chatbot_update(messages, state)

    # -- events ----------------------------------------------------------------------

    def submit(self, message, history, state: SessionState, temperature, top_p, max_new_tokens, request: gr.Request = None,
               profile: gr.OAuthProfile | None = None):
        """Ask: record the question (with its image, if one is attached) and stream the answer.
        Outputs: textbox, chatbot, state."""
        if self.s.stops.running(session_key(request, state)):
            gr.Warning(BUSY)
            yield gr.skip(), gr.skip(), state
            return
        turns = align(history, state)
        message = message or {}
        text = str(message.get("text") or "").strip()
        files = [p for p in (_file_path(f) for f in message.get("files") or []) if p]
        try:
            if not text:
                raise UserError(NO_QUESTION + (" The image will be kept with it." if files else ""))
            params = params_from(temperature, top_p, max_new_tokens)
            image_path = files[-1] if files else None
            image_bytes = Path(image_path).read_bytes() if image_path else None
            parent_id = None
            if image_bytes is None:
                start = context_start(turns, None, self._has_image(turns, state))
                if start is None:
                    raise UserError(NO_IMAGE)
                parent_id = next((m.id for m in reversed(state.messages[start:]) if m.id), None)
                if parent_id is None and state.messages[start].image:  # keep the image reachable
                    image_bytes = self.s.store.image_path(state.messages[start].image).read_bytes()
            session = self.s.admit_question(state, request, profile, params.max_new_tokens,
                                            len(image_bytes) if image_path else 0)
            question = self.s.store.record_user_message(session, text, image_bytes=image_bytes, parent_id=parent_id)
        except Exception as e:
            gr.Warning(user_message(e, "recording your question"))
            yield gr.skip(), gr.skip(), state
            return
        turns.append(Turn("user", text, [image_path] if image_path else []))
        state.messages.append(MessageMeta(id=question.id, role="user", image=question.image_sha256 if image_path else None))
        cleared = False
        for messages in self._stream_answer(turns, state, params, session_key(request, state)):
            yield (gr.skip() if cleared else {"text": "", "files": []}), messages, state
            cleared = True

    def retry(self, history, state: SessionState, temperature, top_p, max_new_tokens, request: gr.Request = None,
              profile: gr.OAuthProfile | None = None):
        """Regenerate the answer to the last question (a new answer to the same stored
        question; the old one stays in the store). Outputs: chatbot, state."""
        if self.s.stops.running(session_key(request, state)):
            gr.Warning(BUSY)
            yield gr.skip(), state
            return
        turns = align(history, state)
        u = last_index(turns, "user")
        if u is None:
            gr.Warning("There is no question to answer again yet.")
            yield gr.skip(), state
            return
        try:
            params = params_from(temperature, top_p, max_new_tokens)
            self.s.admit_question(state, request, profile, params.max_new_tokens)
        except Exception as e:
            gr.Warning(user_message(e))
            yield gr.skip(), state
            return
        del turns[u + 1:]
        state.truncate(u + 1)
        if state.messages[u].id is None:
            gr.Warning("That question was not recorded, so it cannot be answered again; ask it again.")
            yield to_messages(turns), state
            return
        yield from ((m, state) for m in self._stream_answer(turns, state, params, session_key(request, state)))

    def undo(self, history, state: SessionState, request: gr.Request = None):
        """Take back the last question and its answer (they stay in the store); the question
        goes back into the textbox. Outputs: textbox, chatbot, state."""
        turns = align(history, state)
        u = last_index(turns, "user")
        if u is None:
            return gr.skip(), gr.skip(), state
        self.s.stops.stop(session_key(request, state))
        state.epoch += 1
        box = {"text": turns[u].text, "files": list(turns[u].files)}
        del turns[u:]
        state.truncate(u)
        return box, chatbot_update(to_messages(turns), state), state

    def clear(self, state: SessionState, request: gr.Request = None):
        """Start over: stop any answer, empty the chat (the store and this session's
        buffer keep everything). Outputs: chatbot, state, textbox."""
        self.s.stops.stop(session_key(request, state))
        state.epoch += 1
        state.reset_chat()
        return [], state, {"text": "", "files": []}

    def stop(self, state: SessionState, request: gr.Request = None) -> None:
        """Stop this session's generation: sets the event the stopping criterion checks."""
        self.s.stops.stop(session_key(request, state))

    def reask(self, history, state: SessionState, temperature, top_p, max_new_tokens, request: gr.Request = None,
              profile: gr.OAuthProfile | None = None):
        """After a question was edited in place (``state.reask``): record the new question and
        answer it. Outputs: chatbot, state."""
        i = state.reask
        state.reask = None
        if i is None or self.s.stops.running(session_key(request, state)):
            yield gr.skip(), state
            return
        turns = align(history, state)
        if i >= len(turns) or turns[i].role != "user":
            yield gr.skip(), state
            return
        try:
            params = params_from(temperature, top_p, max_new_tokens)
            old = state.messages[i]
            image_bytes, parent_id = None, None
            if old.image:
                image_bytes = self.s.store.image_path(old.image).read_bytes()
            elif old.id is not None:
                parent_id = self.s.store.get_message(state.session_id, old.id).parent_id
            session = self.s.admit_question(state, request, profile, params.max_new_tokens)
            question = self.s.store.record_user_message(session, turns[i].text, image_bytes=image_bytes, parent_id=parent_id)
        except Exception as e:
            gr.Warning(user_message(e, "recording your edited question"))
            yield gr.skip(), state
            return
        del turns[i + 1:]
        state.truncate(i)
        state.messages.append(MessageMeta(id=question.id, role="user", image=question.image_sha256 if old.image else None))
        yield from ((m, state) for m in self._stream_answer(turns, state, params, session_key(request, state)))
