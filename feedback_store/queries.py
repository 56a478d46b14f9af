"""Lookups shared by the store operations. Each runs inside the caller's transaction
(``Connections.read()`` or ``write()``) and raises the specific not-found error.

Session isolation lives here: a message is only ever fetched together with the
session it must belong to, and a miss reads the same whether the message does not
exist or belongs to someone else, so nothing about other sessions leaks.
"""

from __future__ import annotations

from typing import Any, Sequence

from sqlite_utils import Database

from .errors import (
    BufferNotFoundError,
    InvalidFeedbackError,
    MessageNotFoundError,
    SessionNotFoundError,
    UnknownAdapterError,
)
from .records import BufferItem, Message, Session, TaskBuffer

MESSAGE_NOT_FOUND = (
    "That message is not part of this conversation (it may have been cleared, or the page "
    "is out of date). Reload the page and try again."
)


def fetch_one(db: Database, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
    cursor = db.execute(sql, list(params))
    row = cursor.fetchone()
    if row is None:
        return None
    return dict(zip([c[0] for c in cursor.description], row))


def fetch_all(db: Database, sql: str, params: Sequence[Any] = ()) -> list[dict[str, Any]]:
    cursor = db.execute(sql, list(params))
    names = [c[0] for c in cursor.description]
    return [dict(zip(names, row)) for row in cursor.fetchall()]


def require_session(db: Database, session_id: str) -> Session:
    row = None
    if isinstance(session_id, str):
        row = fetch_one(db, "SELECT * FROM sessions WHERE id = ?", [session_id])
    if row is None:
        raise SessionNotFoundError(
            "This chat session is unknown (it may have expired or been started elsewhere). "
            "Reload the page to start a new session."
        )
    return Session.from_row(row)


def require_message(db: Database, session_id: str, message_id: str) -> Message:
    """The message if it belongs to ``session_id``; otherwise MessageNotFoundError."""
    row = None
    if isinstance(message_id, str) and isinstance(session_id, str):
        row = fetch_one(
            db, "SELECT * FROM messages WHERE id = ? AND session_id = ?", [message_id, session_id]
        )
    if row is None:
        raise MessageNotFoundError(MESSAGE_NOT_FOUND)
    return Message.from_row(row)


def require_answer(db: Database, session_id: str, message_id: str) -> Message:
    """An assistant message of this session (what feedback and corrections apply to)."""
    message = require_message(db, session_id, message_id)
    if message.role != "assistant":
        raise InvalidFeedbackError(
            "Only the assistant's answers can be rated or corrected, not your own messages."
        )
    return message


def require_adapter_exists(db: Database, version: str) -> dict[str, Any]:
    row = None
    if isinstance(version, str):
        row = fetch_one(db, "SELECT * FROM adapter_versions WHERE version = ?", [version])
    if row is None:
        raise UnknownAdapterError(
            f"There is no adapter version {version!r}. Pick one from the list of versions."
        )
    return row


def conversation_image(db: Database, message_id: str) -> str | None:
    """The image that applies to a message: its own, or the nearest ancestor's."""
    row = fetch_one(
        db,
        """WITH RECURSIVE chain(id, parent_id, image_sha256, depth) AS (
               SELECT id, parent_id, image_sha256, 0 FROM messages WHERE id = ?
               UNION ALL
               SELECT m.id, m.parent_id, m.image_sha256, chain.depth + 1
               FROM messages m JOIN chain ON m.id = chain.parent_id
               WHERE chain.depth < 100000)
           SELECT image_sha256 FROM chain WHERE image_sha256 IS NOT NULL
           ORDER BY depth LIMIT 1""",
        [message_id],
    )
    return row["image_sha256"] if row else None


def items_of(db: Database, buffer_id: int) -> tuple[BufferItem, ...]:
    rows = fetch_all(db, "SELECT * FROM buffer_items WHERE buffer_id = ? ORDER BY id", [buffer_id])
    return tuple(BufferItem.from_row(r) for r in rows)


def buffer_row(db: Database, buffer_id: int, session_id: str | None = None) -> dict[str, Any]:
    row = None
    if isinstance(buffer_id, int) and not isinstance(buffer_id, bool):
        if session_id is None:
            row = fetch_one(db, "SELECT * FROM task_buffers WHERE id = ?", [buffer_id])
        else:
            row = fetch_one(
                db, "SELECT * FROM task_buffers WHERE id = ? AND session_id = ?",
                [buffer_id, session_id],
            )
    if row is None:
        where = " in this session" if session_id is not None else ""
        raise BufferNotFoundError(
            f"There is no task buffer {buffer_id!r}{where}. Reload the list of buffers."
        )
    return row


def buffer_with_items(db: Database, buffer_id: int, session_id: str | None = None) -> TaskBuffer:
    row = buffer_row(db, buffer_id, session_id)
    return TaskBuffer.from_row(row, items_of(db, row["id"]))
