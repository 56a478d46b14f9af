"""Durable SQLite record of sessions, messages, feedback, task buffers and adapter versions.

The only code in LLaCA Studio that writes SQL. Open a store on the data dir and share
it between threads::

    from feedback_store import FeedbackStore
    store = FeedbackStore(settings.data_dir)
    session = store.start_session(user="ada")
    question = store.record_user_message(session.id, "What colour is it?", image_bytes=png)
    answer = store.record_answer(session.id, question.id, "red", adapter_version=None, gen_params={})
    store.add_correction(session.id, answer.id, "blue", ready_threshold=8)

Modules: ``store`` (the FeedbackStore class and its core operations), ``buffers``
(corrections, task buffers, claims and leases), ``adapters`` (adapter versions, worker
status), ``schema`` (tables and migrations), ``connection`` (per-thread connections,
transactions), ``images`` (validation, normalisation, atomic files), ``validation``
(text and JSON checks), ``queries`` (shared lookups), ``records`` (dataclasses),
``errors`` (exceptions), ``status`` (the status vocabulary of buffers, corrections, adapter
versions and workers), ``filesystem`` (refusing a network filesystem), ``export`` (LLaVA-format and JSONL export), ``__main__`` (CLI).
"""

from .errors import (
    AdapterExistsError,
    AdapterStateError,
    BufferNotFoundError,
    BufferStateError,
    ExportError,
    ImageTooLargeError,
    InvalidAnswerError,
    InvalidCorrectionError,
    InvalidEncodingError,
    InvalidFeedbackError,
    InvalidImageError,
    InvalidInputError,
    InvalidParamsError,
    InvalidQuestionError,
    InvalidTextError,
    LeaseLostError,
    MessageNotFoundError,
    NotFoundError,
    NothingToTeachError,
    SchemaVersionError,
    SessionNotFoundError,
    StoreBusyError,
    StoreClosedError,
    StoreError,
    UnknownAdapterError,
    UnsafeFilesystemError,
)
from .records import (
    AdapterVersion,
    BufferItem,
    BufferState,
    CleanupReport,
    Feedback,
    ImageRecord,
    Message,
    Session,
    TaskBuffer,
    WorkerState,
    plural,
)
from .schema import SCHEMA_VERSION
from .status import AdapterStatus, BufferStatus, Split, WorkerActivity
from .store import FeedbackStore

__all__ = [
    "SCHEMA_VERSION", "FeedbackStore",
    "AdapterVersion", "BufferItem", "BufferState", "CleanupReport", "Feedback", "ImageRecord",
    "Message", "Session", "TaskBuffer", "WorkerState", "plural",
    "AdapterStatus", "BufferStatus", "Split", "WorkerActivity",
    "AdapterExistsError", "AdapterStateError", "BufferNotFoundError", "BufferStateError",
    "ExportError", "ImageTooLargeError", "InvalidAnswerError", "InvalidCorrectionError",
    "InvalidEncodingError", "InvalidFeedbackError", "InvalidImageError", "InvalidInputError",
    "InvalidParamsError", "InvalidQuestionError", "InvalidTextError", "LeaseLostError",
    "MessageNotFoundError", "NotFoundError", "NothingToTeachError", "SchemaVersionError",
    "SessionNotFoundError", "StoreBusyError", "StoreClosedError", "StoreError",
    "UnknownAdapterError", "UnsafeFilesystemError",
]
