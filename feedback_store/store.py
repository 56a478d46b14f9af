"""``FeedbackStore``: the one object the app and the learning worker use.

It owns ``data_dir`` (``store.db``, ``images/``, ``adapters/``) and writes nowhere
else. This module holds the core - opening, sessions, messages, feedback, session
views and housekeeping; task buffers and adapter versions are mixed in from
``buffers.py`` and ``adapters.py``.

Every public write is one transaction. Validation (text, image decoding) happens
before any write, so bad input raises a specific ``StoreError`` with nothing written.
An uploaded image is written to disk (atomically) before the row that references it
is committed, so a crash can leave at most an unreferenced file, which
``cleanup_orphans`` removes; never a row without its file.

One instance may be shared by all threads of a process (each thread gets its own
SQLite connection); other processes may open the same data dir at the same time.
WAL mode needs every process on the same host, on a local disk (it uses shared memory):
opening a data dir on a network filesystem in WAL mode raises ``UnsafeFilesystemError``
(``filesystem.py``). ``journal_mode="DELETE"`` opens it anyway, with a warning: the rollback
journal then depends on the network filesystem's locks, which SQLite's documentation warns
are often broken.
"""

from __future__ import annotations

import json
import logging
import time
import uuid
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Mapping

from . import filesystem
from .adapters import AdapterOpsMixin
from .buffers import BufferOpsMixin
from .connection import Connections
from .errors import (
    InvalidAnswerError,
    InvalidFeedbackError,
    InvalidInputError,
    InvalidQuestionError,
    NotFoundError,
)
from .images import IMAGES_DIR, TMP_PREFIX, PreparedImage, prepare_image, write_image_file
from .queries import (
    conversation_image,
    fetch_all,
    fetch_one,
    require_answer,
    require_adapter_exists,
    require_message,
    require_session,
)
from .records import CleanupReport, Feedback, ImageRecord, Message, Session
from .schema import migrate, preflight
from .validation import clean_optional_text, clean_text, to_json

log = logging.getLogger(__name__)

DB_FILENAME = "store.db"
ADAPTERS_DIR = "adapters"


class FeedbackStore(BufferOpsMixin, AdapterOpsMixin):
    """Durable record of conversations, feedback, task buffers and adapter versions."""

    def __init__(
        self,
        data_dir: Path | str,
        *,
        max_image_bytes: int = 20_000_000,
        max_image_pixels: int = 40_000_000,
        max_question_chars: int = 4000,
        max_answer_chars: int = 16000,
        max_claim_attempts: int = 3,
        busy_timeout: float = 30.0,
        synchronous: str = "FULL",
        journal_mode: str = "WAL",
        clock: Callable[[], float] = time.time,
    ) -> None:
        for name, value in [
            ("max_image_bytes", max_image_bytes), ("max_image_pixels", max_image_pixels),
            ("max_question_chars", max_question_chars), ("max_answer_chars", max_answer_chars),
            ("max_claim_attempts", max_claim_attempts), ("busy_timeout", busy_timeout),
        ]:
            if not value > 0:
                raise ValueError(f"{name} must be positive, not {value!r}")
        self.data_dir = Path(data_dir).absolute()
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.max_question_chars = max_question_chars
        self.max_answer_chars = max_answer_chars
        self.max_claim_attempts = max_claim_attempts
        self._clock = clock
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_filesystem(journal_mode)
        self.db_path = self.data_dir / DB_FILENAME
        self._conns = Connections(
            self.db_path, busy_timeout=busy_timeout, synchronous=synchronous,
            journal_mode=journal_mode,
        )
        try:
            preflight(self._conns)
            self._conns.set_journal_mode()
            applied = migrate(self._conns, self._now)
        except BaseException:
            self._conns.close()
            raise
        (self.data_dir / IMAGES_DIR).mkdir(exist_ok=True)
        (self.data_dir / ADAPTERS_DIR).mkdir(exist_ok=True)
        if applied:
            log.info("feedback store at %s migrated to schema v%d", self.data_dir, applied[-1])

    def _check_filesystem(self, journal_mode: str) -> None:
        if journal_mode.upper() == "WAL":
            filesystem.check_data_dir(self.data_dir)
            return
        fstype = filesystem.filesystem_type(self.data_dir.resolve(), filesystem.read_mount_table() or "")
        if filesystem.is_network_filesystem(fstype):
            log.warning("feedback store at %s is on %s in %s journal mode: safe only if its locks work; "
                        "use it from one host", self.data_dir, fstype, journal_mode.upper())

    # -- lifecycle -------------------------------------------------------------------

    def close(self) -> None:
        """Close this process's connections. The store cannot be used afterwards."""
        self._conns.close()

    def __enter__(self) -> "FeedbackStore":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> float:
        return float(self._clock())

    # -- sessions ----------------------------------------------------------------------

    def start_session(self, user: str | None = None, client: str | None = None) -> Session:
        """Create a session; ``user`` is the login name when auth is on."""
        session = Session(
            id=str(uuid.uuid4()), created_at=self._now(),
            user=clean_optional_text(user, what="user name", max_chars=200),
            client=clean_optional_text(client, what="client description", max_chars=1000),
        )
        with self._conns.write() as db:
            db.table("sessions").insert(asdict(session))
        return session

    def get_session(self, session_id: str) -> Session:
        with self._conns.read() as db:
            return require_session(db, session_id)

    # -- messages ----------------------------------------------------------------------

    def record_user_message(
        self,
        session_id: str,
        text: str | bytes,
        image_bytes: bytes | None = None,
        parent_id: str | None = None,
    ) -> Message:
        """Record a user turn, with its image if one was uploaded with it.

        A follow-up turn passes ``parent_id`` (the previous answer) and no image; the
        conversation's image is then found through ``conversation_image``.
        """
        question = clean_text(
            text, what="question", max_chars=self.max_question_chars, error=InvalidQuestionError
        )
        prepared = None
        if image_bytes is not None:
            prepared = prepare_image(
                image_bytes, max_bytes=self.max_image_bytes, max_pixels=self.max_image_pixels
            )
        with self._conns.read() as db:  # fail before touching the disk
            require_session(db, session_id)
            if parent_id is not None:
                require_message(db, session_id, parent_id)
        if prepared is not None:
            write_image_file(self.data_dir, prepared)
        message = Message(
            id=str(uuid.uuid4()), session_id=session_id, parent_id=parent_id, role="user",
            text=question, image_sha256=prepared.sha256 if prepared else None,
            adapter_version=None, gen_params={}, created_at=self._now(),
        )
        with self._conns.write() as db:
            require_session(db, session_id)
            if parent_id is not None:
                require_message(db, session_id, parent_id)
            if prepared is not None:
                self._ensure_image_row(db, prepared, message.created_at)
            self._insert_message(db, message)
        return message

    def record_answer(
        self,
        session_id: str,
        parent_id: str,
        text: str | bytes,
        adapter_version: str | None = None,
        gen_params: Mapping[str, Any] | None = None,
    ) -> Message:
        """Record the assistant's answer to user message ``parent_id``.

        ``adapter_version`` is the version that produced it (None = base model). An
        empty answer (generation stopped at once) is recorded as such.
        """
        answer = clean_text(
            text, what="answer", max_chars=self.max_answer_chars, error=InvalidAnswerError,
            allow_empty=True,
        )
        params = to_json(gen_params, what="generation parameters")
        with self._conns.write() as db:
            require_session(db, session_id)
            parent = require_message(db, session_id, parent_id)
            if parent.role != "user":
                raise InvalidInputError("An answer must reply to a user message, not to another answer.")
            if adapter_version is not None:
                require_adapter_exists(db, adapter_version)
            message = Message(
                id=str(uuid.uuid4()), session_id=session_id, parent_id=parent_id,
                role="assistant", text=answer, image_sha256=None,
                adapter_version=adapter_version, gen_params=json.loads(params),
                created_at=self._now(),
            )
            self._insert_message(db, message, params)
        return message

    def _insert_message(self, db: Any, message: Message, gen_params_json: str = "{}") -> None:
        row = asdict(message)
        row["gen_params"] = gen_params_json
        db.table("messages").insert(row)

    def _ensure_image_row(self, db: Any, prepared: PreparedImage, now: float) -> None:
        # Under the write lock: cleanup_orphans cannot delete the file between this
        # check and the commit, so a committed row always has its file.
        if not (self.data_dir / prepared.relative_path).is_file():
            write_image_file(self.data_dir, prepared)
        db.table("images").insert(
            {
                "sha256": prepared.sha256, "path": prepared.relative_path,
                "width": prepared.width, "height": prepared.height, "format": prepared.format,
                "bytes": len(prepared.data), "source_format": prepared.source_format,
                "created_at": now,
            },
            ignore=True,
        )

    def get_message(self, session_id: str, message_id: str) -> Message:
        """A message of this session (MessageNotFoundError for any other)."""
        with self._conns.read() as db:
            return require_message(db, session_id, message_id)

    def conversation_image(self, message_id: str) -> str | None:
        """sha256 of the image that applies to a message (walking parent links), or None."""
        with self._conns.read() as db:
            return conversation_image(db, message_id)

    # -- feedback ----------------------------------------------------------------------

    def record_feedback(
        self, session_id: str, message_id: str, kind: str, value: str | None = None
    ) -> Feedback:
        """Record a like or dislike (``value``: optional comment or flag) on an answer
        of this session. Corrections go through ``add_correction``."""
        if kind not in ("like", "dislike"):
            hint = " Use add_correction for corrections." if kind == "correction" else ""
            raise InvalidFeedbackError(f"Unknown feedback {kind!r}: use 'like' or 'dislike'.{hint}")
        comment = clean_optional_text(value, what="feedback comment", max_chars=self.max_answer_chars)
        with self._conns.write() as db:
            require_answer(db, session_id, message_id)
            return self._insert_feedback(db, session_id, message_id, kind, value=comment)

    def _insert_feedback(
        self, db: Any, session_id: str, message_id: str, kind: str, *, value: str | None = None,
        corrected_text: str | None = None, previous_text: str | None = None,
    ) -> Feedback:
        row = {
            "message_id": message_id, "session_id": session_id, "kind": kind, "value": value,
            "corrected_text": corrected_text, "previous_text": previous_text,
            "created_at": self._now(),
        }
        row["id"] = db.table("feedback").insert(row).last_pk
        return Feedback.from_row(row)

    # -- session views -----------------------------------------------------------------

    def session_history(self, session_id: str) -> list[Message]:
        """Every message of this session, oldest first."""
        with self._conns.read() as db:
            require_session(db, session_id)
            rows = fetch_all(db, "SELECT * FROM messages WHERE session_id = ? ORDER BY rowid", [session_id])
        return [Message.from_row(r) for r in rows]

    def session_feedback(self, session_id: str) -> list[Feedback]:
        """Every feedback row of this session, oldest first (the last one per message wins)."""
        with self._conns.read() as db:
            require_session(db, session_id)
            rows = fetch_all(db, "SELECT * FROM feedback WHERE session_id = ? ORDER BY id", [session_id])
        return [Feedback.from_row(r) for r in rows]

    def get_image(self, sha256: str) -> ImageRecord:
        with self._conns.read() as db:
            row = fetch_one(db, "SELECT * FROM images WHERE sha256 = ?", [str(sha256)])
        if row is None:
            raise NotFoundError(f"No stored image has hash {sha256!r}.")
        return ImageRecord.from_row(row)

    def image_path(self, sha256: str) -> Path:
        """Absolute path of a stored image's file."""
        return self.data_dir / self.get_image(sha256).path

    # -- housekeeping ------------------------------------------------------------------

    def cleanup_orphans(self, min_age_seconds: float = 3600.0, dry_run: bool = False) -> CleanupReport:
        """Remove image files no row references and leftover ``.tmp-*`` files older than
        ``min_age_seconds`` (what a crash between file write and commit leaves behind).
        Also reports image rows whose file is missing (should never happen)."""
        images_dir = self.data_dir / IMAGES_DIR
        cutoff = time.time() - min_age_seconds  # file mtimes are wall-clock
        with self._conns.write() as db:  # writers re-check their file under this lock
            known = {r["sha256"]: r["path"] for r in fetch_all(db, "SELECT sha256, path FROM images")}
            orphans, temps = [], []
            for entry in images_dir.iterdir():
                if not entry.is_file() or entry.stat().st_mtime > cutoff:
                    continue
                if entry.name.startswith(TMP_PREFIX):
                    temps.append(entry)
                elif entry.suffix == ".png" and entry.stem not in known:
                    orphans.append(entry)
            missing = [sha for sha, path in known.items() if not (self.data_dir / path).is_file()]
            if not dry_run:
                for entry in orphans + temps:
                    entry.unlink(missing_ok=True)
        if orphans or temps or missing:
            log.warning(
                "cleanup: %d orphan image(s), %d temp file(s) %s; %d image row(s) without file",
                len(orphans), len(temps), "found" if dry_run else "removed", len(missing),
            )
        return CleanupReport(
            orphan_images=tuple(sorted(e.name for e in orphans)),
            temp_files=tuple(sorted(e.name for e in temps)),
            missing_images=tuple(sorted(missing)), removed=not dry_run,
        )

    def integrity_check(self) -> list[str]:
        """SQLite's integrity and foreign-key checks; ``["ok"]`` when all is well."""
        with self._conns.read() as db:
            problems = [r[0] for r in db.execute("PRAGMA integrity_check").fetchall()]
            fk = db.execute("PRAGMA foreign_key_check").fetchall()
        if problems == ["ok"] and not fk:
            return ["ok"]
        return [p for p in problems if p != "ok"] + [f"foreign key: {tuple(r)}" for r in fk]
