"""Turning exceptions into messages a user can act on (never a generic "network error").

Store errors and the model's own errors already carry such messages; anything unexpected
is logged with its traceback and shown with its type and text, plus what was kept.
"""

from __future__ import annotations

import logging

from feedback_store import ImageTooLargeError, InvalidImageError, StoreBusyError, StoreError
from llaca.model import GenerationParamsError, ModelLoadError, PromptTooLongError
from llaca.serving import AdapterLoadError

log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem with what the user asked for; the message says what to change."""


def user_message(exc: BaseException, doing: str = "") -> str:
    """A one-paragraph explanation of ``exc`` for the person who caused it."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, ImageTooLargeError):
        return f"That image is too large: {exc}"
    if isinstance(exc, InvalidImageError):
        return f"That file could not be used as an image: {exc}"
    if isinstance(exc, StoreBusyError):
        return f"The feedback store is busy, please try again in a moment ({exc})."
    if isinstance(exc, StoreError):
        return str(exc)
    if isinstance(exc, PromptTooLongError):
        text = str(exc)
        return f"{text[:1].upper()}{text[1:]}. Shorten it, or start a new conversation (Clear)."
    if isinstance(exc, GenerationParamsError):
        return f"Check the generation settings: {exc}"
    if isinstance(exc, (ModelLoadError, AdapterLoadError)):
        return str(exc)
    where = f" while {doing}" if doing else ""
    log.error("unexpected error%s", where, exc_info=exc)
    text = str(exc) or "no details"
    if "out of memory" in text.lower():
        return f"The model ran out of memory{where}: {text}. Try fewer new tokens or a shorter conversation."
    return f"The model failed{where}: {type(exc).__name__}: {text}"
