"""Turning exceptions into messages a user can act on (never a generic "network error").

The feedback store raises typed errors that state facts; ``store_message`` words them for
people (what is wrong and what to do). The model's own errors already carry such messages;
anything unexpected is logged with its traceback and shown with its type and text.
"""

from __future__ import annotations

import logging

import feedback_store as fs
from llaca.model.llava import GenerationParamsError, ModelLoadError, PromptTooLongError
from llaca.serve.assistant import AdapterLoadError

log = logging.getLogger(__name__)


class UserError(Exception):
    """A problem with what the user asked for; the message says what to change."""


def user_message(exc: BaseException, doing: str = "") -> str:
    """A one-paragraph explanation of ``exc`` for the person who caused it."""
    if isinstance(exc, UserError):
        return str(exc)
    if isinstance(exc, fs.StoreError):
        return store_message(exc)
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


_TEXT = {
    "empty": "The {field} is empty. Type some text and try again.",
    "too_long": "The {field} is too long ({length:,} characters; the limit is {limit:,}). Shorten it and try again.",
    "encoding": "The {field} is not valid text. Re-type it, or paste it as plain text, and try again.",
    "unchanged": "The corrected answer is the same as the original answer. "
                 "Change it, or use 👍 if the answer was right.",
    "no_question": "This answer has no question recorded with it, so it cannot be taught. "
                   "Ask the question again and correct the new answer.",
}
_IMAGE = {
    "empty": "The uploaded image file is empty (0 bytes). Choose the file again.",
    "unsupported": "That file is not an image that can be read. Upload a PNG, JPEG, WebP, GIF or BMP image.",
    "damaged": "That image file is damaged ({exc}). Open and re-save it, or upload another image.",
    "incomplete": "That image file is damaged or incomplete, for example a cut-off upload ({exc}). "
                  "Upload the complete file again.",
}


def store_message(exc: fs.StoreError) -> str:
    """What a store error means for the person using the app, and what to do about it."""
    facts = {**exc.facts, "exc": exc}
    if isinstance(exc, fs.ImageTooLargeError):
        return f"That image is too large: {exc}. Save it smaller (for example as JPEG, or resized) and try again."
    if isinstance(exc, fs.InvalidImageError) and facts.get("reason") in _IMAGE:
        return _IMAGE[facts["reason"]].format(**facts)
    if isinstance(exc, fs.InvalidTextError) and facts.get("problem") in _TEXT:
        return _TEXT[facts["problem"]].format(**facts)
    if isinstance(exc, fs.InvalidFeedbackError):
        if facts.get("kind") is None:
            return "Only the assistant's answers can be rated or corrected, not your own messages."
        return f"There is no rating {exc.kind!r}: rate an answer with 👍 or 👎."
    if isinstance(exc, fs.MessageNotFoundError):
        return ("That message is not part of this conversation (it may have been cleared, or the page is out of "
                "date). Reload the page and try again.")
    if isinstance(exc, fs.SessionNotFoundError):
        return ("This chat session is unknown (it may have expired or been started elsewhere). "
                "Reload the page to start a new one.")
    if isinstance(exc, fs.NothingToTeachError):
        return ("There is nothing to teach yet in this session: correct an answer first (edit the assistant's "
                "reply), then ask it to learn.")
    if isinstance(exc, fs.UnknownAdapterError):
        return f"There is no adapter version {exc.version!r}. Pick one from the list of versions."
    if isinstance(exc, fs.AdapterStateError) and facts.get("status") == "rejected":
        return (f"Adapter {exc.version} was rejected ({exc.reason or 'no reason given'}) and cannot be served. "
                "Choose another version.")
    if isinstance(exc, fs.StoreBusyError):
        return f"The feedback store is busy (locked for over {exc.timeout:g} s). Try again in a moment."
    if isinstance(exc, fs.UnsafeFilesystemError):
        return (f"The data dir {exc.path} is on a network filesystem ({exc.fstype}), where the feedback store's "
                "database could be corrupted. Put the data dir (--data-dir / LLACA_DATA_DIR) on a local disk of the "
                "host that runs the app and the learning worker. To train on other machines, keep the worker on that "
                "host and let it fan training out with a training command (LLACA_TRAIN_COMMAND, e.g. "
                "'accelerate launch --num_processes 4 -m llaca.tune').")
    if isinstance(exc, fs.SchemaVersionError):
        return f"The feedback store cannot be opened: {exc}. Point LLACA_DATA_DIR (--data-dir) at another folder."
    text = str(exc)
    return f"{text[:1].upper()}{text[1:]}."
