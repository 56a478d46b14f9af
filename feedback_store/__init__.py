"""Durable SQLite record of sessions, messages, feedback, task buffers and adapter versions.

The only code in LLaCA Studio that writes SQL. Open a store on the data dir and share
it between threads::

    from feedback_store import FeedbackStore
    store = FeedbackStore(settings.data_dir)
    session = store.start_session(user="ada")
    question = store.record_user_message(session.id, "What colour is it?", image_bytes=png)
    answer = store.record_answer(session.id, question.id, "red", adapter_version=None, gen_params={})
    store.add_correction(session.id, answer.id, "blue", ready_threshold=8)

Modules: ``store`` (``FeedbackStore``, assembled from ``base``, ``conversations``,
``buffers``, ``reviews`` and ``adapters``), ``schema`` (the tables and the version check),
``connection`` (per-thread connections, transactions), ``queries`` (shared lookups),
``records`` (dataclasses), ``status`` (the status vocabulary of buffers, corrections,
adapter versions and workers), ``errors`` (typed exceptions), ``validation`` (text and JSON
checks), ``images`` (image validation and normalisation), ``files`` (crash-safe writes),
``filesystem`` (refusing a network filesystem), ``export`` (reading corrections out,
JSONL), ``cli`` (``python -m feedback_store``).
"""

from .errors import (
    AdapterExistsError,
    AdapterStateError,
    BufferNotFoundError,
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
from .forgetting import ForgetReport, Job
from .records import (
    AdapterVersion,
    AuthorUsage,
    BufferItem,
    BufferState,
    CleanupReport,
    Feedback,
    Message,
    Review,
    Session,
    TaskBuffer,
    WorkerState,
    plural,
)
from .reviews import parse_ids
from .schema import SCHEMA_VERSION
from .status import (
    MAX_REFUSALS,
    AdapterStatus,
    BufferStatus,
    CorrectionState,
    Split,
    WorkerActivity,
    correction_status,
)
from .store import FeedbackStore

__all__ = [
    "SCHEMA_VERSION", "FeedbackStore",
    "AdapterVersion", "BufferItem", "BufferState", "CleanupReport", "Feedback",
    "Message", "Session", "TaskBuffer", "WorkerState", "plural", "AuthorUsage", "Review", "parse_ids", "ForgetReport", "Job",
    "MAX_REFUSALS", "AdapterStatus", "BufferStatus", "CorrectionState", "Split", "WorkerActivity", "correction_status",
    "AdapterExistsError", "AdapterStateError", "BufferNotFoundError",
    "ExportError", "ImageTooLargeError", "InvalidAnswerError", "InvalidCorrectionError",
    "InvalidEncodingError", "InvalidFeedbackError", "InvalidImageError", "InvalidInputError",
    "InvalidParamsError", "InvalidQuestionError", "InvalidTextError", "LeaseLostError",
    "MessageNotFoundError", "NotFoundError", "NothingToTeachError", "SchemaVersionError",
    "SessionNotFoundError", "StoreBusyError", "StoreClosedError", "StoreError",
    "UnknownAdapterError", "UnsafeFilesystemError",
]
