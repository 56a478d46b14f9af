"""Record types the store hands out (frozen dataclasses) and the one row converter, ``from_row``.

Times are UNIX seconds (float, UTC) as stored; ``iso_time`` formats them for export.
JSON columns (generation params, metrics, worker detail) come back as dicts.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields
from datetime import datetime, timezone
from typing import Any, Literal, Mapping, TypeVar

from .status import AdapterStatus, BufferStatus, Split

Role = Literal["user", "assistant"]
FeedbackKind = Literal["like", "dislike", "correction"]

BUFFER_STATUSES: tuple[str, ...] = tuple(BufferStatus)
SPLITS: tuple[str, ...] = tuple(Split)


def iso_time(seconds: float | None) -> str | None:
    """Format stored UNIX seconds as an ISO-8601 UTC string (None stays None)."""
    if seconds is None:
        return None
    return datetime.fromtimestamp(seconds, tz=timezone.utc).isoformat()


def plural(n: int, noun: str, nouns: str | None = None) -> str:
    """"1 correction", "2 corrections" (``nouns`` for irregular plurals)."""
    return f"{n} {noun if n == 1 else (nouns or noun + 's')}"


JSON_COLUMNS = frozenset({"gen_params", "metrics", "library_versions", "detail", "conflicts"})
R = TypeVar("R")


def from_row(cls: type[R], row: Mapping[str, Any], **override: Any) -> R:
    """Record ``cls`` from a table row: its fields by name, JSON columns decoded."""
    values = {f.name: row[f.name] for f in fields(cls) if f.name in row}  # type: ignore[arg-type]
    for name in JSON_COLUMNS & values.keys():
        values[name] = json.loads(values[name] or "{}")
    return cls(**{**values, **override})


@dataclass(frozen=True)
class Session:
    """One chat session (a browser tab, or a logged-in user's conversation)."""

    id: str
    created_at: float
    user: str | None = None
    client: str | None = None
    author: str | None = None  # who teaches through it: the login name, or guest-<id[:8]>
    quota_key: str | None = None  # who counts as one teacher for quotas and the fair queue


@dataclass(frozen=True)
class Message:
    """A user question or an assistant answer. ``image_sha256`` is the image attached
    to this very message; a correction of a follow-up turn carries the conversation's image
    (``BufferItem.image_sha256``)."""

    id: str
    session_id: str
    parent_id: str | None
    role: Role
    text: str
    image_sha256: str | None
    adapter_version: str | None
    gen_params: dict[str, Any]
    created_at: float
    adapter_group: str | None = None  # the instruction group whose adapter answered (routed versions)


@dataclass(frozen=True)
class Feedback:
    """A like, dislike or correction on an assistant message."""

    id: int
    message_id: str
    session_id: str
    kind: FeedbackKind
    value: str | None
    corrected_text: str | None
    previous_text: str | None
    created_at: float


@dataclass(frozen=True)
class BufferItem:
    """One teachable example: (image, question, corrected answer)."""

    id: int
    buffer_id: int
    message_id: str
    feedback_id: int | None
    image_sha256: str | None
    question: str
    answer: str
    split: Split
    created_at: float
    updated_at: float
    group_id: str | None = None  # the instruction group the worker assigned it to (routed learning)
    learned_in: str | None = None  # the promoted version that learned it
    pending_reason: str | None = None  # why it is not learned yet, once a run has tried
    refusals: int = 0  # runs that trained on it and were refused by the guard


@dataclass(frozen=True)
class TaskBuffer:
    """A session's batch of corrections, and where it is in the learning pipeline."""

    id: int
    session_id: str
    status: BufferStatus
    created_at: float
    updated_at: float
    ready_at: float | None
    claimed_by: str | None
    lease_until: float | None
    attempts: int
    adapter_version: str | None
    reason: str | None
    items: tuple[BufferItem, ...] = field(default=())

    @property
    def size(self) -> int:
        return len(self.items)


@dataclass(frozen=True)
class BufferState:
    """What ``add_correction`` reports: the buffer the correction went to."""

    buffer_id: int
    size: int
    status: BufferStatus


@dataclass(frozen=True)
class Review:
    """A correction held for the admin's review (``feedback_store.reviews``); its id is the
    correction's feedback id."""

    feedback_id: int
    session_id: str
    message_id: str
    author: str
    image_sha256: str | None
    question: str
    answer: str  # the model's answer
    correction: str
    kind: str  # review (an untrusted author, under the review policy) | conflict
    status: str  # pending | approved | rejected
    reason: str | None
    decided_by: str | None
    created_at: float
    decided_at: float | None
    conflicts: list = field(default_factory=list)  # kind conflict: the other authors' learned items it contradicts

    @property
    def correction_id(self) -> int:
        return self.feedback_id


@dataclass(frozen=True)
class AuthorUsage:
    """What an author has used of their quotas (``Reviews.author_usage``)."""

    corrections_last_hour: int
    waiting_buffers: int  # ready or training
    pending_reviews: int
    image_bytes_last_day: int


@dataclass(frozen=True)
class AdapterVersion:
    """A trained adapter. ``path`` is absolute; it is stored relative to the data
    dir when it lies inside it, so a data dir can be moved or shared."""

    version: str
    parent_version: str | None
    path: str
    method: str
    status: AdapterStatus
    metrics: dict[str, Any]
    library_versions: dict[str, Any]
    reason: str | None
    created_at: float
    updated_at: float


@dataclass(frozen=True)
class WorkerState:
    """The last thing a learning worker reported; a stale ``updated_at`` means dead."""

    worker_id: str
    state: str
    detail: dict[str, Any]
    updated_at: float
    pid: int | None
    host: str | None


@dataclass(frozen=True)
class CleanupReport:
    """What ``FeedbackStore.cleanup_orphans`` found (and removed, unless dry run)."""

    orphan_images: tuple[str, ...]
    temp_files: tuple[str, ...]
    missing_images: tuple[str, ...]
    removed: bool
