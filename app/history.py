"""The one place that understands Gradio's chat-history shapes.

Gradio hands chat history over in several shapes depending on version and path: messages
whose ``content`` is a string, a list of strings, a list of ``{"type": "text"}`` /
``{"type": "file"}`` parts, a ``{"path": ...}`` dict, a ``FileData``, a tuple ``(path,)``,
or ``ChatMessage`` objects. ``normalize`` turns any of them into a list of ``Turn`` (role,
text, files); ``user_message``/``assistant_message`` build what the app sends back (one
chatbot message per store message, so chatbot indices map 1:1 to store ids).

A corrected answer stays one chatbot message that shows both texts: the model's answer
struck through, then the correction (``corrected_message``). ``normalize`` reads such a
message back as a ``Turn`` whose ``text`` is the correction (what the model's context and
the correction box see) and whose ``original`` is the model's answer.

``context`` finds the conversation a question belongs to: the most recent user message
with an image starts a context (a new image starts a new one), and the (question, answer)
pairs since then are what the model sees.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

CURSOR = " ▌"
CORRECTED_PREFIX = "**Model's answer (corrected):** "
CORRECTION_MARK = "\n\n✏️ **Correction:** "


@dataclass
class Turn:
    """One chatbot message, normalised."""

    role: str
    text: str = ""
    files: list[str] = field(default_factory=list)
    original: str | None = None  # a corrected answer: the model's own answer (``text`` is the correction)

    @property
    def has_image(self) -> bool:
        return bool(self.files)


def _get(obj: Any, key: str, default: Any = None) -> Any:
    if isinstance(obj, dict):
        return obj.get(key, default)
    return getattr(obj, key, default)


def _file_path(part: Any) -> str | None:
    """The server path of a file part in any of Gradio's shapes, else None."""
    if isinstance(part, (tuple, list)) and part and isinstance(part[0], str):
        return part[0]
    if isinstance(part, dict):
        if part.get("type") == "file" or "file" in part:
            return _file_path(part.get("file"))
        if "path" in part and isinstance(part["path"], str):
            return part["path"]
        return None
    path = getattr(part, "path", None)  # FileData, gr.FileData, FileMessage.file
    if isinstance(path, str):
        return path
    inner = getattr(part, "file", None)
    if inner is not None:
        return _file_path(inner)
    value = getattr(part, "value", None)  # a Gradio component (gr.Image(...)) as content
    if value is not None and not isinstance(part, (str, bytes)):
        return _file_path(value)
    return None


def _parts(content: Any) -> Iterable[Any]:
    if isinstance(content, list):
        return content
    if isinstance(content, tuple):  # the old (path, alt_text) file form
        return [content]
    return [content]


def normalize_message(message: Any) -> Turn:
    """One message (dict, ChatMessage, pydantic model) -> Turn."""
    role = str(_get(message, "role", "assistant") or "assistant")
    content = _get(message, "content", "")
    texts: list[str] = []
    files: list[str] = []
    for part in _parts(content):
        if part is None:
            continue
        if isinstance(part, str):
            texts.append(part)
            continue
        if isinstance(part, dict) and part.get("type") == "text":
            texts.append(str(part.get("text", "")))
            continue
        if getattr(part, "type", None) == "text" and hasattr(part, "text"):
            texts.append(str(part.text))
            continue
        path = _file_path(part)
        if path:
            files.append(path)
    text = "\n".join(t for t in texts if t)
    if role == "assistant":
        parsed = parse_corrected(text)
        if parsed is not None:
            return Turn(role=role, text=parsed[1], files=files, original=parsed[0])
    return Turn(role=role, text=text, files=files)


def normalize(history: Sequence[Any] | None) -> list[Turn]:
    """Any Gradio chat history -> list of Turn, one per message, in order."""
    return [normalize_message(m) for m in (history or [])]


def user_message(text: str, image_path: str | None = None) -> dict:
    """A user chatbot message: the image (if any) and the question, in one message."""
    content: list[Any] = []
    if image_path:
        content.append({"path": str(image_path)})
    content.append(text)
    return {"role": "user", "content": content}


def assistant_message(text: str, streaming: bool = False) -> dict:
    return {"role": "assistant", "content": (text + CURSOR) if streaming else (text or "…")}


def _strike(text: str) -> str:
    """Markdown strikethrough of each line of ``text`` (its own ``~`` escaped)."""
    lines = (text.strip() or "…").replace("~", "\\~").split("\n")
    return "\n".join(f"~~{line.strip()}~~" if line.strip() else "" for line in lines)


def _unstrike(text: str) -> str:
    lines = []
    for line in text.split("\n"):
        if line.startswith("~~") and line.endswith("~~") and len(line) >= 4:
            line = line[2:-2]
        lines.append(line.replace("\\~", "~"))
    return "\n".join(lines)


def corrected_message(original: str, correction: str) -> dict:
    """An answer the user corrected: the model's answer, struck through and marked as
    corrected, and the correction right after it, in the same chatbot message."""
    return {"role": "assistant", "content": f"{CORRECTED_PREFIX}{_strike(original)}{CORRECTION_MARK}{correction}"}


def parse_corrected(text: str) -> tuple[str, str] | None:
    """(original, correction) of a message built by ``corrected_message``; None for any other text."""
    if not text.startswith(CORRECTED_PREFIX):
        return None
    original, mark, correction = text[len(CORRECTED_PREFIX):].partition(CORRECTION_MARK)
    if not mark:
        return None
    return _unstrike(original), correction


def to_messages(turns: Sequence[Turn]) -> list[dict]:
    """Turns back to chatbot messages (what handlers return)."""
    out = []
    for t in turns:
        if t.role == "user":
            out.append(user_message(t.text, t.files[0] if t.files else None))
        elif t.original is not None:
            out.append(corrected_message(t.original, t.text))
        else:
            out.append(assistant_message(t.text))
    return out


def last_index(turns: Sequence[Turn], role: str, upto: int | None = None) -> int | None:
    """Index of the last message with ``role`` at or before ``upto``; None if there is none."""
    end = len(turns) - 1 if upto is None else min(upto, len(turns) - 1)
    for i in range(end, -1, -1):
        if turns[i].role == role:
            return i
    return None


def context_start(turns: Sequence[Turn], upto: int | None = None, has_image: Sequence[bool] | None = None) -> int | None:
    """Index of the user message that opened the conversation containing ``upto``: the last
    user message with an image (``has_image`` overrides what the history shows)."""
    end = len(turns) - 1 if upto is None else min(upto, len(turns) - 1)
    for i in range(end, -1, -1):
        image = has_image[i] if has_image is not None and i < len(has_image) else turns[i].has_image
        if turns[i].role == "user" and image:
            return i
    return None


def context_turns(turns: Sequence[Turn], start: int, upto: int) -> list[tuple[str, str | None]]:
    """(question, answer) pairs from ``start`` to ``upto``; the last question's answer is None.

    A question that never got an answer (the model failed, or it was stopped at once) is
    left out of the model's context, except the last one, which is being answered.
    """
    pairs: list[tuple[str, str | None]] = []
    i = start
    while i <= upto:
        t = turns[i]
        if t.role != "user":
            i += 1
            continue
        answer_parts = []
        j = i + 1
        while j <= upto and turns[j].role != "user":
            answer_parts.append(turns[j].text)
            j += 1
        answer = "\n".join(a for a in answer_parts if a).strip()
        if j > upto and not answer_parts:
            pairs.append((t.text, None))
        elif answer:
            pairs.append((t.text, answer))
        i = j
    return pairs
