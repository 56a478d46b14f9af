"""What users taught, as a LLaVA-format training folder: ``python -m llaca.export``.

The corrections come from the store (``feedback_store.export.corrections``) and are
written by the project's dataset writer (``dataset.write_folder``)::

    OUT/data.json        one record per correction: its image, question and corrected answer
    OUT/images/*.png
    OUT/provenance.json  per id: session, buffer and its status, corrected message, the
                         answer it replaced and the adapter version that produced it

A correction made without any image in its conversation is left out (the dataset reader,
like LLaVA training, needs an image per record) and counted in ``skipped``; it is in the
store's JSONL export (``python -m feedback_store export``).
"""

from __future__ import annotations

import argparse
import json
import logging
from pathlib import Path

from PIL import Image

from feedback_store import FeedbackStore, plural
from feedback_store.cli import store_command
from feedback_store.export import ExportSummary, corrections, prepare_folder
from feedback_store.files import write_atomic
from feedback_store.records import BUFFER_STATUSES, iso_time
from llaca.config.settings import Settings, add_flags
from llaca.learn.dataset import VQASample, write_folder

log = logging.getLogger(__name__)


def export_llava(
    store: FeedbackStore, out: Path, *, session_id: str | None = None, status: str | None = None,
    overwrite: bool = False,
) -> ExportSummary:
    """Write the corrections (optionally of one session, or of buffers with ``status``)
    as a LLaVA-format folder."""
    rows = corrections(store, session_id=session_id, status=status)
    out = prepare_folder(store, out, overwrite)
    with_image = [r for r in rows if r["image_sha256"]]
    provenance = [{
        "id": f"{r['message_id']}-{r['id']}", "session_id": r["session_id"], "buffer_id": r["buffer_id"],
        "buffer_status": r["buffer_status"], "split": r["split"], "message_id": r["message_id"],
        "question_message_id": r["question_message_id"], "previous_answer": r["previous_answer"],
        "answer_adapter_version": r["answer_adapter"], "trained_into_adapter_version": r["trained_adapter"],
        "feedback_id": r["feedback_id"], "image_sha256": r["image_sha256"], "corrected_at": iso_time(r["updated_at"]),
    } for r in with_image]
    write_atomic(out / "provenance.json", json.dumps(provenance, indent=1, ensure_ascii=False).encode("utf-8"))
    samples = (  # lazily: one image open at a time
        VQASample(p["id"], Image.open(store.image_path(r["image_sha256"])), [(r["question"], r["answer"])])
        for p, r in zip(provenance, with_image)
    )
    write_folder(samples, out)
    skipped = len(rows) - len(with_image)
    if skipped:
        log.warning("left out %s without an image (they are in the JSONL export)", plural(skipped, "correction"))
    return ExportSummary(out=out, records=len(with_image), images=len(with_image), skipped=skipped)


def main(argv: list[str] | None = None) -> int:
    parser = add_flags(argparse.ArgumentParser(prog="python -m llaca.export", description=__doc__.split("\n")[0]),
                       ["data_dir"])
    parser.add_argument("--out", type=Path, required=True, help="folder to write (new or empty)")
    parser.add_argument("--session", help="only this session id")
    parser.add_argument("--status", choices=BUFFER_STATUSES, help="only buffers with this status")
    parser.add_argument("--force", action="store_true", help="write into a non-empty --out folder")
    args = parser.parse_args(argv)
    if args.out.suffix == ".jsonl":
        parser.error(f"--out is a folder, not {args.out.name}; `python -m feedback_store export` writes JSONL")
    return store_command(Settings.from_namespace(args).data_dir, lambda store: _export(store, args))


def _export(store: FeedbackStore, args: argparse.Namespace) -> int:
    summary = export_llava(store, args.out, session_id=args.session, status=args.status, overwrite=args.force)
    print(f"wrote {plural(summary.records, 'correction')} and {plural(summary.images, 'image')} to {summary.out}")
    if summary.skipped:
        print(f"left out {plural(summary.skipped, 'correction')} without an image (they are in the JSONL export)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
