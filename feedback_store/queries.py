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
    NotFoundError,
    SessionNotFoundError,
    UnknownAdapterError,
)
from .records import BufferItem, Message, Session, TaskBuffer, from_row


def one(db: Database, sql: str, params: Sequence[Any] = ()) -> dict[str, Any] | None:
    """The first row of a query, or None."""
    return next(db.query(sql, list(params)), None)


def require_session(db: Database, session_id: str) -> Session:
    row = one(db, "SELECT * FROM sessions WHERE id = ?", [session_id]) if isinstance(session_id, str) else None
    if row is None:
        raise SessionNotFoundError(f"no session {session_id!r}", session_id=session_id)
    return from_row(Session, row)


def require_message(db: Database, session_id: str, message_id: str) -> Message:
    """The message if it belongs to ``session_id``; otherwise MessageNotFoundError."""
    row = None
    if isinstance(message_id, str) and isinstance(session_id, str):
        row = one(db, "SELECT * FROM messages WHERE id = ? AND session_id = ?", [message_id, session_id])
    if row is None:
        raise MessageNotFoundError("no such message in this session", message_id=message_id)
    return from_row(Message, row)


def require_answer(db: Database, session_id: str, message_id: str) -> Message:
    """An assistant message of this session (what feedback and corrections apply to)."""
    message = require_message(db, session_id, message_id)
    if message.role != "assistant":
        raise InvalidFeedbackError(
            "only the assistant's answers take feedback; this is a user message", message_id=message_id, kind=None
        )
    return message


def require_adapter(db: Database, version: str) -> dict[str, Any]:
    row = one(db, "SELECT * FROM adapter_versions WHERE version = ?", [version]) if isinstance(version, str) else None
    if row is None:
        raise UnknownAdapterError(f"no adapter version {version!r}", version=version)
    return row


def conversation_image(db: Database, message_id: str) -> str | None:
    """The image that applies to a message: its own, or the nearest ancestor's."""
    row = one(
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
    rows = db["buffer_items"].rows_where("buffer_id = ?", [buffer_id], order_by="id")
    return tuple(from_row(BufferItem, r) for r in rows)


def buffer_row(db: Database, buffer_id: int) -> dict[str, Any]:
    row = None
    if isinstance(buffer_id, int) and not isinstance(buffer_id, bool):
        row = one(db, "SELECT * FROM task_buffers WHERE id = ?", [buffer_id])
    if row is None:
        raise BufferNotFoundError(f"no task buffer {buffer_id!r}", buffer_id=buffer_id)
    return row


def buffer_with_items(db: Database, buffer_id: int) -> TaskBuffer:
    row = buffer_row(db, buffer_id)
    return from_row(TaskBuffer, row, items=items_of(db, buffer_id))


def set_item_column(db: Database, buffer_id: int, column: str, values: dict[int, Any], now: float) -> None:
    """Set ``column`` of items of ``buffer_id`` ({item id: value}); NotFoundError if an item
    is not in that buffer (the caller's transaction then writes nothing)."""
    if column not in ("split", "group_id"):
        raise ValueError(f"not an item column this sets: {column!r}")
    for item_id, value in values.items():
        cursor = db.execute(f"UPDATE buffer_items SET {column} = ?, updated_at = ? WHERE id = ? AND buffer_id = ?",
                            [value, now, item_id, buffer_id])
        if cursor.rowcount != 1:
            raise NotFoundError(f"item {item_id!r} is not in task buffer {buffer_id}", item_id=item_id, buffer_id=buffer_id)
