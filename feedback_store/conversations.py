"""Sessions, their messages (with images), likes and dislikes, and the session views.

Every write is one transaction; text and images are validated before it, so bad input
raises its ``StoreError`` with nothing written. An uploaded image is written to disk
(atomically) before the row that references it is committed, so a crash can leave at
most an unreferenced file, which ``cleanup_orphans`` removes; never a row without its file.
"""

from __future__ import annotations

import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Mapping

from sqlite_utils import Database

from .base import StoreBase
from .errors import (
    InvalidAnswerError,
    InvalidFeedbackError,
    InvalidInputError,
    InvalidQuestionError,
    NotFoundError,
)
from .images import PreparedImage, prepare_image, write_image_file
from .queries import (
    one,
    require_adapter,
    require_answer,
    require_message,
    require_session,
)
from .records import Feedback, Message, Session, from_row
from .validation import clean_optional_text, clean_text, to_json


class Conversations(StoreBase):
    """What users say and rate: sessions, messages, images and feedback."""

    def start_session(self, user: str | None = None, client: str | None = None, author: str | None = None,
                      address: str | None = None) -> Session:
        """Create a session; ``user`` is the login name when auth is on. ``author`` names who
        teaches through it (a signed-in user's name); by default the login name, or for a
        guest ``guest-`` and the first 8 characters of the session id. Its ``quota_key`` is the
        author, except that guests from one network ``address`` (not given for this machine's
        own) share one: quotas and the fair queue count them as one teacher."""
        sid = str(uuid.uuid4())
        user = clean_optional_text(user, what="user name", max_chars=200)
        author = clean_optional_text(author, what="author", max_chars=200) or user or f"guest-{sid[:8]}"
        address = clean_optional_text(address, what="address", max_chars=200)
        guest = author.startswith("guest-")
        session = Session(
            id=sid, created_at=self._now(), user=user,
            client=clean_optional_text(client, what="client description", max_chars=1000), author=author,
            quota_key=f"address:{address}" if guest and address else author,
        )
        with self._conns.write() as db:
            db["sessions"].insert(asdict(session))
        return session

    def record_user_message(
        self, session_id: str, text: str | bytes, image_bytes: bytes | None = None, parent_id: str | None = None,
    ) -> Message:
        """Record a user turn, with its image if one was uploaded with it.

        A follow-up turn passes ``parent_id`` (the previous answer) and no image; its
        conversation's image is then found by walking the parent links.
        """
        question = clean_text(text, what="question", max_chars=self.max_question_chars, error=InvalidQuestionError)
        prepared = None
        if image_bytes is not None:
            prepared = prepare_image(image_bytes, max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels)
        with self._conns.read() as db:  # fail before touching the disk
            self._require_turn(db, session_id, parent_id)
        if prepared is not None:
            write_image_file(self.data_dir, prepared)
        message = Message(
            id=str(uuid.uuid4()), session_id=session_id, parent_id=parent_id, role="user",
            text=question, image_sha256=prepared.sha256 if prepared else None,
            adapter_version=None, gen_params={}, created_at=self._now(),
        )
        with self._conns.write() as db:
            self._require_turn(db, session_id, parent_id)
            if prepared is not None:
                self._ensure_image_row(db, prepared, message.created_at)
            db["messages"].insert({**asdict(message), "gen_params": "{}"})
        return message

    @staticmethod
    def _require_turn(db: Database, session_id: str, parent_id: str | None) -> None:
        require_session(db, session_id)
        if parent_id is not None:
            require_message(db, session_id, parent_id)

    def record_answer(
        self, session_id: str, parent_id: str, text: str | bytes, adapter_version: str | None = None,
        gen_params: Mapping[str, Any] | None = None, adapter_group: str | None = None,
    ) -> Message:
        """Record the assistant's answer to user message ``parent_id``.

        ``adapter_version`` is the version that produced it (None = base model) and
        ``adapter_group`` the instruction group whose adapter answered (routed versions). An
        empty answer (generation stopped at once) is recorded as such.
        """
        answer = clean_text(
            text, what="answer", max_chars=self.max_answer_chars, error=InvalidAnswerError, allow_empty=True
        )
        params = to_json(gen_params, what="generation parameters")
        if adapter_group is not None and not (isinstance(adapter_group, str) and 0 < len(adapter_group) <= 200):
            raise InvalidInputError("adapter_group must be a group id (a short string) or None",
                                    field="adapter_group", value=adapter_group)
        with self._conns.write() as db:
            require_session(db, session_id)
            if require_message(db, session_id, parent_id).role != "user":
                raise InvalidInputError(
                    "an answer must reply to a user message, not to another answer", field="parent_id", value=parent_id
                )
            if adapter_version is not None:
                require_adapter(db, adapter_version)
            row = {
                "id": str(uuid.uuid4()), "session_id": session_id, "parent_id": parent_id, "role": "assistant",
                "text": answer, "image_sha256": None, "adapter_version": adapter_version, "gen_params": params,
                "adapter_group": adapter_group, "created_at": self._now(),
            }
            db["messages"].insert(row)
        return from_row(Message, row)

    def _ensure_image_row(self, db: Database, prepared: PreparedImage, now: float) -> None:
        # Under the write lock: cleanup_orphans cannot delete the file between this
        # check and the commit, so a committed row always has its file.
        if not (self.data_dir / prepared.relative_path).is_file():
            write_image_file(self.data_dir, prepared)
        db["images"].insert(
            {
                "sha256": prepared.sha256, "path": prepared.relative_path, "width": prepared.width,
                "height": prepared.height, "format": prepared.format, "bytes": len(prepared.data),
                "source_format": prepared.source_format, "created_at": now,
            },
            ignore=True,
        )

    def get_message(self, session_id: str, message_id: str) -> Message:
        """A message of this session (MessageNotFoundError for any other)."""
        with self._conns.read() as db:
            return require_message(db, session_id, message_id)

    def record_feedback(self, session_id: str, message_id: str, kind: str, value: str | None = None) -> Feedback:
        """Record a like or dislike (``value``: optional comment or flag) on an answer
        of this session. Corrections go through ``add_correction``."""
        if kind not in ("like", "dislike"):
            raise InvalidFeedbackError(
                f"feedback kind {kind!r} is not 'like' or 'dislike' (corrections go through add_correction)",
                kind=kind, message_id=message_id,
            )
        comment = clean_optional_text(value, what="feedback comment", max_chars=self.max_answer_chars)
        with self._conns.write() as db:
            require_answer(db, session_id, message_id)
            return self._insert_feedback(db, session_id, message_id, kind, value=comment)

    def _insert_feedback(self, db: Database, session_id: str, message_id: str, kind: str, **texts: Any) -> Feedback:
        """A feedback row; ``texts``: value, corrected_text, previous_text (None when left out)."""
        row = {"message_id": message_id, "session_id": session_id, "kind": kind, "value": None,
               "corrected_text": None, "previous_text": None, **texts, "created_at": self._now()}
        return from_row(Feedback, {**row, "id": db["feedback"].insert(row).last_pk})

    def session_history(self, session_id: str) -> list[Message]:
        """Every message of this session, oldest first."""
        with self._conns.read() as db:
            require_session(db, session_id)
            return [from_row(Message, r) for r in db["messages"].rows_where("session_id = ?", [session_id],
                                                                              order_by="rowid")]

    def session_feedback(self, session_id: str) -> list[Feedback]:
        """Every feedback row of this session, oldest first (the last one per message wins)."""
        with self._conns.read() as db:
            require_session(db, session_id)
            return [from_row(Feedback, r) for r in db["feedback"].rows_where("session_id = ?", [session_id],
                                                                               order_by="id")]

    def image_path(self, sha256: str) -> Path:
        """Absolute path of a stored image's file."""
        with self._conns.read() as db:
            row = one(db, "SELECT path FROM images WHERE sha256 = ?", [str(sha256)])
        if row is None:
            raise NotFoundError(f"no stored image has hash {sha256!r}", sha256=sha256)
        return self.data_dir / row["path"]
