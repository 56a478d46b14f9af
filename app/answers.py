"""Answers in flight: every answer being generated, from its first token until it is stored.

The chat and ``/ask`` handlers register an answer when generation starts
(``AnswersInFlight.begin``), report the text so far as it streams (``progress``), and store
it when it ends (``finish``). Storing happens exactly once: when the app shuts down, Gradio
stops advancing the handlers' generators, so ``drain`` stores every answer still in flight
itself, as stopped (``gen_params["stopped"]`` true and ``"cut_short": "shutdown"``), with the
text its user had seen. Whichever of ``finish`` and ``drain`` comes first stores it; the
other gets the same stored message back.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from feedback_store import FeedbackStore, Message
from llaca.serve.assistant import BASE, ServedBy

log = logging.getLogger(__name__)


@dataclass
class Answer:
    """One answer being generated: what it replies to, and what has streamed so far."""

    session_id: str
    question_id: str
    gen_params: dict[str, Any]
    text: str = ""
    served: ServedBy = field(default_factory=lambda: ServedBy(BASE))
    stored: Message | None = None
    error: BaseException | None = None
    _claimed: bool = False


class AnswersInFlight:
    """The registry of answers in flight, and the one place an answer is stored."""

    def __init__(self, store: FeedbackStore) -> None:
        self._store = store
        self._lock = threading.Lock()
        self._done = threading.Condition(self._lock)
        self._answers: dict[int, Answer] = {}  # by id(): the answers not stored yet

    def begin(self, session_id: str, question_id: str, gen_params: dict[str, Any], served: ServedBy) -> Answer:
        answer = Answer(session_id, question_id, dict(gen_params), served=served)
        with self._lock:
            self._answers[id(answer)] = answer
        return answer

    @staticmethod
    def progress(answer: Answer, text: str, served: ServedBy) -> None:
        answer.text, answer.served = text, served

    def _claim(self, answer: Answer) -> bool:
        with self._lock:
            if answer._claimed:
                return False
            answer._claimed = True
            return True

    def _release(self, answer: Answer) -> None:
        with self._lock:
            self._answers.pop(id(answer), None)
            self._done.notify_all()

    def _store_it(self, answer: Answer, text: str, served: ServedBy, params: dict[str, Any]) -> Message:
        try:
            answer.stored = self._store.record_answer(
                answer.session_id, answer.question_id, text.strip(),
                adapter_version=None if served.version == BASE else served.version,
                gen_params=params, adapter_group=served.group,
            )
            return answer.stored
        except BaseException as e:
            answer.error = e
            raise
        finally:
            self._release(answer)

    def finish(self, answer: Answer, text: str, served: ServedBy, stopped: bool) -> Message:
        """Store the finished (or stopped) answer; if shutdown already stored it, return that."""
        if not self._claim(answer):
            return self._wait_stored(answer)
        return self._store_it(answer, text, served, {**answer.gen_params, "stopped": stopped})

    def abandon(self, answer: Answer) -> None:
        """The answer failed (the handler shows why): nothing to store."""
        if self._claim(answer):
            self._release(answer)

    def _wait_stored(self, answer: Answer, timeout: float = 10.0) -> Message:
        deadline = time.monotonic() + timeout
        with self._lock:
            while id(answer) in self._answers and time.monotonic() < deadline:
                self._done.wait(0.05)
        if answer.stored is None:
            raise answer.error or RuntimeError("the answer was not stored")
        return answer.stored

    def count(self) -> int:
        with self._lock:
            return len(self._answers)

    def drain(self, wait: float) -> int:
        """Wait up to ``wait`` s for answers in flight to be stored by their handlers, then store
        the rest as cut short by shutdown. Returns how many were stored here."""
        deadline = time.monotonic() + wait
        with self._lock:
            while self._answers and time.monotonic() < deadline:
                self._done.wait(0.05)
            rest = [a for a in self._answers.values() if not a._claimed]
            for a in rest:
                a._claimed = True
        stored = 0
        for a in rest:
            try:
                self._store_it(a, a.text, a.served, {**a.gen_params, "stopped": True, "cut_short": "shutdown"})
                stored += 1
            except Exception:
                log.exception("could not store the answer to %s cut short by shutdown", a.question_id)
        return stored
