"""A conversation as chat messages: how turns and the image become the chat template's input.

One place for both sides, so what is trained (`llaca.learn.encoding`) is exactly what is served
(`llaca.model.llava`): the image goes into the first user turn, and user text has the image
placeholder defused.
"""

from __future__ import annotations

from typing import Sequence


def clean_text(text: str) -> str:
    """User text with the image placeholder defused: a typed `<image>` must not become an image slot."""
    return text.replace("<image>", "image")


def messages_for(turns: Sequence[tuple[str, str | None]], with_image: bool = True) -> list[dict]:
    """Chat messages for a conversation; the image goes into the first user turn."""
    msgs: list[dict] = []
    for k, (q, a) in enumerate(turns):
        content = ([{"type": "image"}] if (k == 0 and with_image) else []) + [{"type": "text", "text": clean_text(q)}]
        msgs.append({"role": "user", "content": content})
        if a is not None:
            msgs.append({"role": "assistant", "content": [{"type": "text", "text": clean_text(a)}]})
    return msgs
