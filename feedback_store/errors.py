"""Exceptions raised by the feedback store.

Every error a caller can cause carries a message that a user can act on: the app
shows ``str(error)`` verbatim in a ``gr.Warning``/``gr.Error``. Catch ``StoreError``
to handle all of them, or a subclass for a specific case.

The hierarchy::

    StoreError
    ├── StoreClosedError
    ├── StoreBusyError
    ├── UnsafeFilesystemError
    ├── SchemaVersionError
    ├── InvalidInputError (also a ValueError)
    │   ├── InvalidImageError
    │   │   └── ImageTooLargeError
    │   ├── InvalidTextError
    │   │   ├── InvalidEncodingError
    │   │   ├── InvalidQuestionError
    │   │   ├── InvalidAnswerError
    │   │   └── InvalidCorrectionError
    │   ├── InvalidFeedbackError
    │   └── InvalidParamsError
    ├── NotFoundError (also a LookupError)
    │   ├── SessionNotFoundError
    │   ├── MessageNotFoundError
    │   ├── BufferNotFoundError
    │   └── UnknownAdapterError
    ├── NothingToTeachError
    ├── BufferStateError
    ├── LeaseLostError
    ├── AdapterStateError
    │   └── AdapterExistsError
    └── ExportError
"""

from __future__ import annotations


class StoreError(Exception):
    """Base class of every error the feedback store raises on purpose."""


class StoreClosedError(StoreError):
    """The store was used after ``close()``."""


class StoreBusyError(StoreError):
    """Another thread or process held the write lock for longer than the timeout."""


class UnsafeFilesystemError(StoreError):
    """The data dir is on a filesystem where SQLite's WAL mode is unsafe (a network filesystem)."""


class SchemaVersionError(StoreError):
    """The database was written by a newer version of the software."""


class InvalidInputError(StoreError, ValueError):
    """Something the caller passed in is unusable; nothing was written."""


class InvalidImageError(InvalidInputError):
    """The upload is not an image we can read, or it is damaged."""


class ImageTooLargeError(InvalidImageError):
    """The upload is over the byte limit or the pixel (decompression-bomb) limit."""


class InvalidTextError(InvalidInputError):
    """A text field is empty, too long or otherwise unusable."""


class InvalidEncodingError(InvalidTextError):
    """Text arrived as bytes that are not valid UTF-8."""


class InvalidQuestionError(InvalidTextError):
    """The user's question is empty or too long."""


class InvalidAnswerError(InvalidTextError):
    """An assistant answer is too long."""


class InvalidCorrectionError(InvalidTextError):
    """A corrected answer is empty, too long or identical to the answer."""


class InvalidFeedbackError(InvalidInputError):
    """Feedback of an unknown kind, or on a message that cannot take it."""


class InvalidParamsError(InvalidInputError):
    """A dict (generation params, metrics, detail) is not JSON-serialisable."""


class NotFoundError(StoreError, LookupError):
    """The record asked for does not exist (or is not visible to this session)."""


class SessionNotFoundError(NotFoundError):
    """No session with that id."""


class MessageNotFoundError(NotFoundError):
    """No such message in this session (nonexistent and other-session look the same)."""


class BufferNotFoundError(NotFoundError):
    """No such task buffer (in this session, when a session is given)."""


class UnknownAdapterError(NotFoundError):
    """No adapter version with that name is registered."""


class NothingToTeachError(StoreError):
    """A buffer was asked to become ready but holds no corrections."""


class BufferStateError(StoreError):
    """The buffer is not in a state that allows the operation."""


class LeaseLostError(StoreError):
    """The worker no longer holds the claim on the buffer; it must stop using it."""


class AdapterStateError(StoreError):
    """The adapter version is not in a state that allows the operation."""


class AdapterExistsError(AdapterStateError):
    """An adapter version with that name is already registered."""


class ExportError(StoreError):
    """The export destination or options are unusable."""
