"""Feedback handlers: thumbs up/down on any answer, corrections (edit in place or the
"Correct this answer" box), choosing which answer to correct, and "Teach now".

A correction is stored against the answer's store id (``state.messages[i].id``), which puts
(image, question, corrected answer) into this session's open task buffer; the reply says
how many corrections that buffer holds. Nothing here touches another session's messages:
every store call passes this session's id and the store refuses any other.
"""

from __future__ import annotations

import logging
from typing import Any

import gradio as gr

from feedback_store import BufferStatus, plural

from .chat import align, chatbot_update
from .errors import UserError, user_message
from .history import Turn, last_index, normalize_message, to_messages
from .services import Services
from .state import SessionState
from .teaching import WAITING_FOR_REVIEW

log = logging.getLogger(__name__)

PICK_ANSWER = "Click an answer in the chat (or give it a 👎) to correct it."
BOX_PLACEHOLDER = "The right answer…"


def _index(value: Any) -> int | None:
    if isinstance(value, (list, tuple)):
        value = value[0] if value else None
    try:
        return int(value)
    except (TypeError, ValueError):
        return None


def like_kind(liked: Any) -> str | None:
    """gr.LikeData.liked -> "like" | "dislike" | None (feedback withdrawn / unknown)."""
    if liked is True or (isinstance(liked, str) and liked.lower() in ("like", "liked", "up")):
        return "like"
    if liked is False or (isinstance(liked, str) and liked.lower() in ("dislike", "disliked", "down")):
        return "dislike"
    return None


def buffer_ack(size: int, status: str) -> str:
    if status == WAITING_FOR_REVIEW:
        return (f"Saved, waiting for review: the admin approves what is learned here "
                f"({plural(size, 'correction')} of yours waiting).")
    text = f"Saved: {plural(size, 'correction')} in this session's buffer"
    if status == BufferStatus.READY:
        text += " - it is ready and queued for learning"
    return text + "."


class FeedbackHandlers:
    """Handlers for likes, corrections and teaching, bound to the process's services."""

    def __init__(self, services: Services) -> None:
        self.s = services

    # -- what the correction box is about ---------------------------------------------

    def selection_text(self, state: SessionState, turns: list[Turn]) -> str:
        i = state.selected
        if i is None or i >= len(turns) or i >= len(state.messages) or turns[i].role != "assistant":
            return PICK_ANSWER
        meta = state.messages[i]
        q = last_index(turns, "user", i)
        question = turns[q].text if q is not None else ""
        version = meta.version or "?"
        answer = turns[i].text.strip() or "(empty)"
        if meta.feedback == "corrected":
            return (
                f"**Answer #{state.answer_number(i)}** (by `{version}`) to *{_short(question)}* is corrected to "
                f"“{_short(answer, 120)}”. Type again to change the correction."
            )
        return (
            f"**Answer #{state.answer_number(i)}** (by `{version}`) to *{_short(question)}*: "
            f"“{_short(answer, 120)}”. Type the right answer below."
        )

    def _answer_meta(self, state: SessionState, turns: list[Turn], i: int | None):
        if i is None or i >= len(turns) or turns[i].role != "assistant":
            raise UserError("Choose an answer of the assistant to give feedback on.")
        meta = state.messages[i]
        if meta.id is None or state.session_id is None:
            raise UserError("This answer was not saved (it failed or is still being written), so it cannot take feedback.")
        return meta

    # -- events -----------------------------------------------------------------------

    def _box(self, state: SessionState, turns: list[Turn], target: str | None):
        """The correction box follows the selected answer: (selection text, box, target id).

        ``target`` is the store id of the answer the box was last tied to, as the page holds
        it (a hidden component sent with every save). When the selection is another answer,
        the box is emptied and re-tied to it in the same update, so text typed for one answer
        can never be saved against another."""
        i = state.selected
        valid = i is not None and i < len(turns) and i < len(state.messages) and turns[i].role == "assistant"
        new_target = (state.messages[i].id or "") if valid else ""
        if new_target == (target or ""):
            return self.selection_text(state, turns), gr.skip(), gr.skip()
        if not valid:
            return PICK_ANSWER, gr.update(value="", placeholder=BOX_PLACEHOLDER), ""
        q = last_index(turns, "user", i)
        question = turns[q].text if q is not None else ""
        box = gr.update(value="", placeholder=f"The right answer to: {_short(question)}")
        return self.selection_text(state, turns), box, new_target

    def sync(self, history, state: SessionState, target: str | None):
        """After any change of the chat (new answer, regenerate, undo, clear, edit): keep the
        correction box tied to the selected answer. Outputs: selection text, box, target."""
        return self._box(state, align(history, state), target)

    def like(self, history, state: SessionState, target: str | None, data: gr.LikeData):
        """Thumbs up/down on any answer. A thumbs-down also selects the answer for correction.
        Outputs: state, selection text, correction box, box target, acknowledgement."""
        turns = align(history, state)
        i = _index(data.index)
        kind = like_kind(data.liked)
        if kind is None:  # the thumb was clicked off again: nothing to record
            return state, gr.skip(), gr.skip(), gr.skip(), gr.skip()
        try:
            meta = self._answer_meta(state, turns, i)
            self.s.store.record_feedback(state.session_id, meta.id, kind)
        except Exception as e:
            text = user_message(e, "recording your feedback")
            gr.Warning(text)
            return state, gr.skip(), gr.skip(), gr.skip(), f"⚠️ {text}"
        meta.feedback = kind if meta.feedback != "corrected" else meta.feedback
        n = state.answer_number(i)
        if kind == "like":
            return state, gr.skip(), gr.skip(), gr.skip(), f"👍 Thanks: answer #{n} marked as right."
        state.selected = i
        gr.Info(f"Answer #{n} marked wrong. Type the right answer in “Correct this answer”.", duration=5)
        selection, box, new_target = self._box(state, turns, target)
        return state, selection, box, new_target, f"👎 Answer #{n} marked as wrong - type the right answer to teach it."

    def select(self, history, state: SessionState, target: str | None, data: gr.SelectData):
        """Clicking an answer makes it the one the correction box applies to.
        Outputs: state, selection text, correction box, box target, acknowledgement."""
        turns = align(history, state)
        i = _index(data.index)
        if i is not None and i < len(turns) and turns[i].role == "assistant":
            state.selected = i
        selection, box, new_target = self._box(state, turns, target)
        ack = gr.skip() if isinstance(new_target, dict) else ""  # another answer: the old message goes
        return state, selection, box, new_target, ack

    def _correct(self, state: SessionState, turns: list[Turn], i: int | None, text: str):
        """Store ``text`` as the correction of answer ``i`` and show it in the chat under the
        model's answer, which stays visible, struck through (a later correction replaces
        the earlier one, the model's answer stays)."""
        meta = self._answer_meta(state, turns, i)
        result = self.s.teaching.correct(state.session_id, meta.id, text)  # the policy and quotas decide
        meta.feedback = "corrected"
        turn = turns[i]
        if turn.original is None:
            turn.original = turn.text or self._stored_text(state, meta.id)
        turn.text = text
        return result

    def _stored_text(self, state: SessionState, message_id: str) -> str:
        try:
            return self.s.store.get_message(state.session_id, message_id).text
        except Exception:  # only for display: the correction itself is saved
            log.warning("could not read answer %s back from the store", message_id, exc_info=True)
            return ""

    def edit(self, history, state: SessionState, data: gr.EditData):
        """An edit in place: on an answer it is a correction; on a question the question is
        asked again (``ChatHandlers.reask`` runs next). Outputs: chatbot, state, acknowledgement."""
        turns = align(history, state)
        i = _index(data.index)
        if i is None or i >= len(turns):
            return gr.skip(), state, gr.skip()
        new_text = str(data.value if not isinstance(data.value, (list, dict)) else _text_of(data.value)).strip()
        if turns[i].role == "user":
            if not new_text:
                gr.Warning("A question cannot be empty.")
                turns[i].text = str(_text_of(data.previous_value))
                return chatbot_update(to_messages(turns), state), state, gr.skip()
            turns[i].text = new_text
            del turns[i + 1:]
            state.reask = i
            return chatbot_update(to_messages(turns), state), state, "Asking your edited question again…"
        # the answer as it was shown before the edit (the model's answer, or it and a
        # correction); the edited text may still hold both, then its correction part counts
        previous = _text_of(data.previous_value)
        if previous.strip():
            turns[i] = normalize_message({"role": "assistant", "content": previous})
        else:  # not sent: show the stored answer again
            meta = state.messages[i]
            stored = self._stored_text(state, meta.id) if meta.id and state.session_id else ""
            turns[i] = Turn("assistant", stored)
        new_text = normalize_message({"role": "assistant", "content": new_text}).text.strip()
        try:
            result = self._correct(state, turns, i, new_text)
        except Exception as e:
            gr.Warning(user_message(e, "saving your correction"))  # the answer is put back as it was
            return chatbot_update(to_messages(turns), state), state, gr.skip()
        state.selected = i
        ack = buffer_ack(result.size, result.status)
        gr.Info(ack, duration=5)
        return chatbot_update(to_messages(turns), state), state, f"✏️ {ack}"

    def save_correction(self, text, target, history, state: SessionState):
        """The "Correct this answer" box: store the right answer for the answer the box is tied
        to (``target``, its store id as the page holds it, never whatever is selected now) and
        show it in the chat below the model's answer. A refusal stays in the acknowledgement
        line until the next action. Outputs: correction box, chatbot, state, acknowledgement."""
        turns = align(history, state)
        text = str(text or "").strip()
        target = str(target or "")
        i = next((k for k, m in enumerate(state.messages) if target and m.id == target), None)
        try:
            if not target:
                raise UserError(PICK_ANSWER)
            if i is None:
                raise UserError("The answer this correction was for is no longer in the chat (undone, cleared or "
                                "regenerated). Pick an answer again.")
            if not text:
                raise UserError(f"Type the right answer to answer #{state.answer_number(i)} first.")
            result = self._correct(state, turns, i, text)
        except Exception as e:
            reason = user_message(e, "saving your correction")
            gr.Warning(reason)
            return gr.skip(), gr.skip(), state, f"⚠️ Not saved: {reason}"
        ack = buffer_ack(result.size, result.status)
        gr.Info(ack, duration=5)
        return "", chatbot_update(to_messages(turns), state), state, f"✏️ Answer #{state.answer_number(i)} corrected. {ack}"

    def teach(self, state: SessionState):
        """Mark this session's buffer ready for the learning worker. Output: acknowledgement."""
        try:
            if state.session_id is None:
                raise UserError("There is nothing to teach yet: correct an answer first.")
            buffer = self.s.store.mark_ready(state.session_id)
        except Exception as e:
            gr.Warning(user_message(e, "queueing your corrections"))
            return gr.skip()
        msg = f"Buffer #{buffer.id} ({plural(buffer.size, 'correction')}) is ready and queued for learning."
        gr.Info(msg, duration=5)
        return f"🎓 {msg} The panel below shows each step."


def _short(text: str, n: int = 60) -> str:
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _text_of(value: Any) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, dict):
        return str(value.get("text", ""))
    if isinstance(value, list):
        return "\n".join(_text_of(v) for v in value if not (isinstance(v, dict) and v.get("type") == "file"))
    return "" if value is None else str(value)

