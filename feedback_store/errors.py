"""Exceptions the feedback store raises on purpose, one type per thing that can be wrong.

``str(error)`` states plainly what is wrong; the facts are attributes as well (the keyword
arguments given at the raise site, also collected in ``error.facts``), so callers branch on
the type and its attributes, never on the text. How to put it to a person is the caller's
business: the app words them in ``app/errors.py``.
"""

from __future__ import annotations

from typing import Any


class StoreError(Exception):
    """Base class of every error the feedback store raises on purpose."""

    def __init__(self, message: str, **facts: Any) -> None:
        super().__init__(message)
        self.facts = facts
        self.__dict__.update(facts)


class StoreClosedError(StoreError):
    """The store was used after ``close()``."""


class StoreBusyError(StoreError):
    """The write lock stayed taken for longer than ``timeout`` seconds."""


class UnsafeFilesystemError(StoreError):
    """``path`` is on network filesystem ``fstype``, where SQLite's WAL mode is unsafe."""


class SchemaVersionError(StoreError):
    """The database at ``path`` has schema ``version`` (``supported`` is the one this code
    knows), or holds ``tables`` of something that is not a feedback store (``version`` 0)."""


class InvalidInputError(StoreError, ValueError):
    """An argument is unusable (``field``, and ``value`` where it helps); nothing was written."""


class InvalidImageError(InvalidInputError):
    """The upload is not an image that can be read; ``reason``: ``not_bytes``, ``empty``,
    ``unsupported``, ``damaged``, ``incomplete`` or ``no_pixels``."""


class ImageTooLargeError(InvalidImageError):
    """``size`` (None if unknown) is over ``limit``, counted in ``unit`` (``bytes`` or
    ``pixels``; then also ``width`` and ``height`` where known); ``reason`` is ``too_large``."""


class InvalidTextError(InvalidInputError):
    """Text ``field`` is unusable; ``problem``: ``not_text``, ``empty`` or ``too_long``
    (with ``length`` and ``limit``)."""


class InvalidEncodingError(InvalidTextError):
    """Text ``field`` is not valid UTF-8 / Unicode (``problem`` is ``encoding``)."""


class InvalidQuestionError(InvalidTextError):
    """The user's question is unusable."""


class InvalidAnswerError(InvalidTextError):
    """An assistant answer is unusable."""


class InvalidCorrectionError(InvalidTextError):
    """A corrected answer is unusable; ``problem`` may also be ``unchanged`` (same text as
    the answer) or ``no_question`` (the answer has no recorded question)."""


class InvalidFeedbackError(InvalidInputError):
    """Feedback of an unknown ``kind``, or on ``message_id`` that is not an answer."""


class InvalidParamsError(InvalidInputError):
    """Dict ``field`` (generation params, metrics, detail) cannot be stored as JSON."""


class NotFoundError(StoreError, LookupError):
    """The record asked for does not exist (or is not visible to this session)."""


class SessionNotFoundError(NotFoundError):
    """No session ``session_id``."""


class MessageNotFoundError(NotFoundError):
    """No message ``message_id`` in this session (missing and other-session read the same)."""


class BufferNotFoundError(NotFoundError):
    """No task buffer ``buffer_id``."""


class UnknownAdapterError(NotFoundError):
    """No adapter ``version`` is registered."""


class NothingToTeachError(StoreError):
    """Session ``session_id`` has no corrections waiting to be learned."""


class LeaseLostError(StoreError):
    """``worker_id`` no longer holds ``buffer_id`` (now ``status``, ``claimed_by``)."""


class AdapterStateError(StoreError):
    """Adapter ``version`` is ``status``, which does not allow the operation."""


class AdapterExistsError(AdapterStateError):
    """Adapter ``version`` is already registered."""


class ExportError(StoreError):
    """Export target ``path`` is unusable; ``reason``: ``inside_store``, ``is_file``,
    ``is_folder``, ``not_empty`` or ``exists``."""
