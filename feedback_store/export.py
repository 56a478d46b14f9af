"""Export what users taught: a LLaVA-format folder, or JSONL of every message and feedback.

LLaVA format (the project's one dataset format, read by the benchmark and the tuner)::

    OUT/data.json        [{"id", "image": "images/<sha256>.png",
                           "conversations": [{"from": "human", "value": "<image>\\n<question>"},
                                             {"from": "gpt", "value": "<corrected answer>"}]}]
    OUT/images/*.png
    OUT/provenance.json  per id: session, buffer and its status, corrected message, the
                         answer it replaced and the adapter version that produced it

A correction made without any image in its conversation is left out of the LLaVA
export (the project's reader, like LLaVA training, needs an image per record) and
counted in ``ExportSummary.skipped``; it is in the JSONL export. JSONL format: into a
folder, ``OUT/messages.jsonl``, ``OUT/feedback.jsonl`` and the referenced images; into
``OUT.jsonl``, one file of both kinds of rows (images stay in the store). Everything is
read in one snapshot; files are written tmp + rename.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from .errors import ExportError, InvalidInputError
from .images import IMAGES_DIR, image_relative_path
from .queries import fetch_all
from .records import BUFFER_STATUSES, iso_time
from .store import FeedbackStore

log = logging.getLogger(__name__)

FORMATS = ("llava", "jsonl")


@dataclass(frozen=True)
class ExportSummary:
    out: Path
    format: str
    records: int
    images: int
    feedback: int = 0
    skipped: int = 0


def _prepare_out(store: FeedbackStore, out: Path, overwrite: bool) -> Path:
    out = Path(out).absolute()
    data_dir = store.data_dir.resolve()
    resolved = out.resolve()
    if resolved == data_dir or resolved.is_relative_to(data_dir / IMAGES_DIR):
        raise ExportError(
            f"Export into a new folder, not into the store's data dir or its images ({data_dir})."
        )
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out} is a file. Give a folder to export into.")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise ExportError(f"{out} already exists and is not empty. Choose a new folder or pass --force.")
    (out / IMAGES_DIR).mkdir(parents=True, exist_ok=True)
    return out


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".tmp-{uuid.uuid4().hex}-{path.name}")
    with open(tmp, "w", encoding="utf-8") as handle:
        handle.write(text)
        handle.flush()
        os.fsync(handle.fileno())
    os.replace(tmp, path)


def _copy_images(store: FeedbackStore, out: Path, shas: Iterable[str]) -> int:
    copied = 0
    for sha in sorted(set(shas)):
        target = out / image_relative_path(sha)
        if target.exists():
            copied += 1
            continue
        source = store.data_dir / image_relative_path(sha)
        if not source.is_file():
            log.error("export: image %s is missing from the store; skipped", sha)
            continue
        tmp = target.with_name(f".tmp-{uuid.uuid4().hex}")
        shutil.copyfile(source, tmp)
        os.replace(tmp, target)
        copied += 1
    return copied


def export_llava(
    store: FeedbackStore, out: Path, *, session_id: str | None = None,
    status: str | None = None, overwrite: bool = False,
) -> ExportSummary:
    """Write the corrections (buffer items) as a LLaVA-format folder."""
    if status is not None and status not in BUFFER_STATUSES:
        raise InvalidInputError(f"status must be one of {', '.join(BUFFER_STATUSES)}, not {status!r}.")
    where, params = ["1 = 1"], []
    if session_id is not None:
        where.append("tb.session_id = ?")
        params.append(session_id)
    if status is not None:
        where.append("tb.status = ?")
        params.append(status)
    with store._conns.read() as db:
        rows = fetch_all(
            db,
            f"""SELECT bi.*, tb.session_id, tb.status AS buffer_status,
                       tb.adapter_version AS trained_adapter, m.adapter_version AS answer_adapter,
                       m.text AS previous_answer, m.parent_id AS question_message_id
                FROM buffer_items bi
                JOIN task_buffers tb ON tb.id = bi.buffer_id
                JOIN messages m ON m.id = bi.message_id
                WHERE {' AND '.join(where)} ORDER BY tb.id, bi.id""",
            params,
        )
    out = _prepare_out(store, out, overwrite)
    records, provenance = [], []
    with_image = [r for r in rows if r["image_sha256"]]
    for row in with_image:
        record_id = f"{row['message_id']}-{row['id']}"
        records.append({
            "id": record_id, "image": image_relative_path(row["image_sha256"]),
            "conversations": [
                {"from": "human", "value": "<image>\n" + row["question"]},
                {"from": "gpt", "value": row["answer"]},
            ],
        })
        provenance.append({
            "id": record_id, "session_id": row["session_id"], "buffer_id": row["buffer_id"],
            "buffer_status": row["buffer_status"], "split": row["split"],
            "message_id": row["message_id"], "question_message_id": row["question_message_id"],
            "previous_answer": row["previous_answer"], "answer_adapter_version": row["answer_adapter"],
            "trained_into_adapter_version": row["trained_adapter"], "feedback_id": row["feedback_id"],
            "image_sha256": row["image_sha256"], "corrected_at": iso_time(row["updated_at"]),
        })
    images = _copy_images(store, out, (r["image_sha256"] for r in with_image))
    _write_atomic(out / "provenance.json", json.dumps(provenance, indent=1, ensure_ascii=False))
    _write_atomic(out / "data.json", json.dumps(records, indent=1, ensure_ascii=False))
    skipped = len(rows) - len(with_image)
    if skipped:
        log.warning("left out %d correction(s) without an image (see --format jsonl)", skipped)
    return ExportSummary(out=out, format="llava", records=len(records), images=images, skipped=skipped)


def export_jsonl(
    store: FeedbackStore, out: Path, *, session_id: str | None = None, overwrite: bool = False
) -> ExportSummary:
    """Write every message and feedback row (optionally of one session) as JSONL.

    ``out`` ending in ``.jsonl``: one file, each line ``{"record": "message" | "feedback", ...}``,
    images left in the store (a message's ``image`` is relative to the data dir). Otherwise a
    folder: ``messages.jsonl``, ``feedback.jsonl`` and the images (``image`` relative to it)."""
    where, params = "", []
    if session_id is not None:
        where, params = "WHERE session_id = ?", [session_id]
    single = Path(out).suffix == ".jsonl"
    target = _prepare_file(store, Path(out), overwrite) if single else None
    with store._conns.read() as db:
        messages = fetch_all(db, f"SELECT * FROM messages {where} ORDER BY rowid", params)
        feedback = fetch_all(db, f"SELECT * FROM feedback {where} ORDER BY id", params)
    for m in messages:
        m["gen_params"] = json.loads(m["gen_params"] or "{}")
        m["image"] = image_relative_path(m["image_sha256"]) if m["image_sha256"] else None
        m["created_at"] = iso_time(m["created_at"])
    for f in feedback:
        f["created_at"] = iso_time(f["created_at"])
    shas = [m["image_sha256"] for m in messages if m["image_sha256"]]
    if target is not None:
        lines = [{"record": "message", **m} for m in messages] + [{"record": "feedback", **f} for f in feedback]
        _write_atomic(target, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in lines))
        return ExportSummary(out=target, format="jsonl", records=len(messages), images=0, feedback=len(feedback))
    out = _prepare_out(store, out, overwrite)
    images = _copy_images(store, out, shas)
    _write_atomic(out / "messages.jsonl", "".join(json.dumps(m, ensure_ascii=False) + "\n" for m in messages))
    _write_atomic(out / "feedback.jsonl", "".join(json.dumps(f, ensure_ascii=False) + "\n" for f in feedback))
    return ExportSummary(
        out=out, format="jsonl", records=len(messages), images=images, feedback=len(feedback)
    )


def _prepare_file(store: FeedbackStore, out: Path, overwrite: bool) -> Path:
    """Check a single-file export target (its folder is created; nothing else is written)."""
    out = out.absolute()
    if out.resolve().is_relative_to(store.data_dir.resolve()):
        raise ExportError(f"Export to a file outside the store's data dir ({store.data_dir.resolve()}).")
    if out.is_dir():
        raise ExportError(f"{out} is a folder. Give a new file name ending in .jsonl, or a folder name without it.")
    if out.exists() and not overwrite:
        raise ExportError(f"{out} already exists. Choose a new file name or pass --force.")
    out.parent.mkdir(parents=True, exist_ok=True)
    return out
