"""Reading what users taught out of the store: the corrections, and a JSONL dump.

``corrections`` lists the corrections (buffer items) with their provenance, read in one
snapshot; ``llaca.export`` turns them into a LLaVA-format training folder with the
project's dataset writer (the store knows nothing of dataset formats). ``export_jsonl``
writes every message and feedback row: into a folder, ``OUT/messages.jsonl``,
``OUT/feedback.jsonl`` and the referenced images; into ``OUT.jsonl``, one file of both kinds
of rows (images stay in the store). Files are written atomically (``files.write_atomic``).
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Iterable

from .errors import ExportError, InvalidInputError
from .files import write_atomic
from .images import IMAGES_DIR, image_relative_path
from .records import BUFFER_STATUSES, iso_time
from .store import FeedbackStore

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    records: int
    images: int
    feedback: int = 0
    skipped: int = 0


def corrections(store: FeedbackStore, *, session_id: str | None = None, status: str | None = None) -> list[dict]:
    """Every correction (buffer item; optionally of one session, or of buffers with
    ``status``), oldest buffer first, with the buffer, its author, the answer it replaced and
    the adapter versions involved."""
    if status is not None and status not in BUFFER_STATUSES:
        raise InvalidInputError(f"status must be one of {', '.join(BUFFER_STATUSES)}, not {status!r}",
                                field="status", value=status)
    with store._conns.read() as db:
        return list(db.query(
            """SELECT bi.*, tb.session_id, s.author, tb.status AS buffer_status,
                      tb.adapter_version AS trained_adapter, m.adapter_version AS answer_adapter,
                      m.text AS previous_answer, m.parent_id AS question_message_id
               FROM buffer_items bi
               JOIN task_buffers tb ON tb.id = bi.buffer_id
               JOIN messages m ON m.id = bi.message_id
               JOIN sessions s ON s.id = tb.session_id
               WHERE (:session IS NULL OR tb.session_id = :session) AND (:status IS NULL OR tb.status = :status)
               ORDER BY tb.id, bi.id""",
            {"session": session_id, "status": status},
        ))


def prepare_folder(store: FeedbackStore, out: Path, overwrite: bool) -> Path:
    """Check an export folder (new, empty, or ``overwrite``; outside the store) and create it."""
    out = Path(out).absolute()
    data_dir = store.data_dir.resolve()
    resolved = out.resolve()
    if resolved == data_dir or resolved.is_relative_to(data_dir / IMAGES_DIR):
        raise ExportError(f"{out} is inside the store's data dir {data_dir}", path=out, reason="inside_store")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file, not a folder", path=out, reason="is_file")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} already exists and is not empty", path=out, reason="not_empty")
    out.mkdir(parents=True, exist_ok=True)
    return out


def _prepare_file(store: FeedbackStore, out: Path, overwrite: bool) -> Path:
    """Check a single-file export target (its folder is created; nothing else is written)."""
    out = out.absolute()
    if out.resolve().is_relative_to(store.data_dir.resolve()):
        raise ExportError(f"{out} is inside the store's data dir {store.data_dir.resolve()}",
                          path=out, reason="inside_store")
    if out.is_dir():
        raise ExportError(f"{out} is a folder, not a .jsonl file", path=out, reason="is_folder")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists", path=out, reason="exists")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out


def _copy_images(store: FeedbackStore, out: Path, shas: Iterable[str]) -> int:
    (out / IMAGES_DIR).mkdir(exist_ok=True)
    copied = 0
    for sha in sorted(set(shas)):
        source, target = store.data_dir / image_relative_path(sha), out / image_relative_path(sha)
        if not source.is_file():
            log.error("export: image %s is missing from the store; skipped", sha)
            continue
        if not target.exists():
            write_atomic(target, source.read_bytes())
        copied += 1
    return copied


def _jsonl(rows: Iterable[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("utf-8")


def export_jsonl(
    store: FeedbackStore, out: Path, *, session_id: str | None = None, overwrite: bool = False
) -> ExportSummary:
    """Write every message and feedback row (optionally of one session) as JSONL.

    ``out`` ending in ``.jsonl``: one file, each line ``{"record": "message" | "feedback", ...}``,
    images left in the store (a message's ``image`` is relative to the data dir). Otherwise a
    folder: ``messages.jsonl``, ``feedback.jsonl`` and the images (``image`` relative to it)."""
    single = Path(out).suffix == ".jsonl"
    target = _prepare_file(store, Path(out), overwrite) if single else prepare_folder(store, out, overwrite)
    where = "WHERE :session IS NULL OR session_id = :session"
    with store._conns.read() as db:
        messages = list(db.query(f"SELECT * FROM messages {where} ORDER BY rowid", {"session": session_id}))
        feedback = list(db.query(f"SELECT * FROM feedback {where} ORDER BY id", {"session": session_id}))
    for m in messages:
        m["gen_params"] = json.loads(m["gen_params"] or "{}")
        m["image"] = image_relative_path(m["image_sha256"]) if m["image_sha256"] else None
    for row in messages + feedback:
        row["created_at"] = iso_time(row["created_at"])
    if single:
        write_atomic(target, _jsonl([{"record": "message", **m} for m in messages]
                                    + [{"record": "feedback", **f} for f in feedback]))
        return ExportSummary(out=target, records=len(messages), images=0, feedback=len(feedback))
    images = _copy_images(store, target, (m["image_sha256"] for m in messages if m["image_sha256"]))
    write_atomic(target / "messages.jsonl", _jsonl(messages))
    write_atomic(target / "feedback.jsonl", _jsonl(feedback))
    return ExportSummary(out=target, records=len(messages), images=images, feedback=len(feedback))
