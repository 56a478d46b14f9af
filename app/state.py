"""Per-session state kept in a ``gr.State`` (one per browser tab or ``gradio_client.Client``).

It holds the store session id, and for the chat the store id, image hash and adapter
version of every chatbot message, aligned by index with the chatbot's value, so that a
like, an edit or a correction on message ``i`` maps to the right store message. The API
conversation (``/ask``) is tracked separately so a client's calls never disturb a chat.

Gradio keeps one instance per session and passes it by reference to every handler of that
session; handlers mutate it in place (and also return it where they change it).
It must stay deep-copyable (plain dataclasses, strings, lists).
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class MessageMeta:
    """What the app knows about one chatbot message."""

    id: str | None  # store message id (None: not recorded, e.g. a failed question)
    role: str
    image: str | None = None  # sha256 of the image attached to this very message
    version: str | None = None  # adapter version that produced an assistant message
    group: str | None = None  # and, for a routed version, the instruction group whose adapter answered
    feedback: str | None = None  # "like" | "dislike" | "corrected"
    stopped: bool = False


@dataclass
class ApiConversation:
    """The conversation ``/ask`` continues when called without an image."""

    image: str | None = None
    turns: list[tuple[str, str]] = field(default_factory=list)
    last_id: str | None = None


@dataclass
class SessionState:
    session_id: str | None = None
    messages: list[MessageMeta] = field(default_factory=list)
    selected: int | None = None  # chatbot index of the answer the correction box applies to
    reask: int | None = None  # chatbot index of a question edited in place, to answer again
    epoch: int = 0  # bumped by Undo/Clear: an answer still streaming then leaves the page alone
    api: ApiConversation = field(default_factory=ApiConversation)

    @property
    def image(self) -> str | None:
        """sha256 of the current chat conversation's image."""
        for meta in reversed(self.messages):
            if meta.role == "user" and meta.image:
                return meta.image
        return None

    def truncate(self, n: int) -> None:
        del self.messages[n:]
        if self.selected is not None and self.selected >= n:
            self.selected = None

    def reset_chat(self) -> None:
        self.messages.clear()
        self.selected = None

    def answer_number(self, index: int) -> int:
        """1-based number of the assistant message at ``index`` among the chat's answers."""
        return sum(1 for m in self.messages[: index + 1] if m.role == "assistant")
