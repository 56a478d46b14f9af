"""Command line: ``python -m feedback_store {export,check} --data-dir DIR ...``.

``export`` writes the corrections as a LLaVA-format folder (``--format llava``, the
default; filter with ``--session`` and ``--status``) or every message and feedback row
as JSONL (``--format jsonl``: into a folder with the images, or into ``--out FILE.jsonl``). ``check`` runs SQLite's integrity and foreign-key checks
and reports (``--cleanup``: removes) image files left by crashes.

``--data-dir`` defaults to ``./data`` (the store reads no environment variable: the app's
``LLACA_*`` settings are read by ``llaca.config`` alone). Exit status: 0 ok,
1 check found problems, 2 usage or store error (the message says what to do).
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

from .errors import StoreError
from .export import FORMATS, export_jsonl, export_llava
from .records import BUFFER_STATUSES, plural
from .store import DB_FILENAME, FeedbackStore


def _parser(default_data_dir: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m feedback_store", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument(
        "--data-dir", type=Path, default=Path(default_data_dir),
        help="folder holding store.db and images/ (default: ./data)",
    )
    exp = sub.add_parser("export", parents=[common], help="export corrections or all messages")
    exp.add_argument("--out", type=Path, required=True,
                     help="folder to write (new or empty); with --format jsonl also a FILE.jsonl (one file, images stay in the store)")
    exp.add_argument("--session", help="only this session id")
    exp.add_argument("--status", choices=BUFFER_STATUSES, help="llava: only buffers with this status")
    exp.add_argument("--format", choices=FORMATS, default="llava",
                     help="llava: the corrections as a training folder (default); jsonl: every message and feedback row")
    exp.add_argument("--force", action="store_true", help="write into a non-empty --out folder, or replace an --out file")
    chk = sub.add_parser("check", parents=[common], help="integrity check and orphan files")
    chk.add_argument("--cleanup", action="store_true", help="remove orphan and temp image files")
    chk.add_argument("--min-age", type=float, default=3600.0, help="only files older than this (s)")
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    args = _parser("./data").parse_args(argv)
    if not (args.data_dir / DB_FILENAME).is_file():
        print(
            f"error: no feedback store in {args.data_dir} (no {DB_FILENAME}). "
            "Pass the app's data dir as --data-dir.", file=sys.stderr,
        )
        return 2
    try:
        with FeedbackStore(args.data_dir) as store:
            if args.command == "export":
                return _export(store, args)
            return _check(store, args)
    except StoreError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def _export(store: FeedbackStore, args: argparse.Namespace) -> int:
    if args.format == "jsonl":
        if args.status is not None:
            print("error: --status applies to --format llava only.", file=sys.stderr)
            return 2
        summary = export_jsonl(store, args.out, session_id=args.session, overwrite=args.force)
        images = f" and {plural(summary.images, 'image')}" if summary.out.is_dir() else ""
        print(f"wrote {plural(summary.records, 'message')}, {plural(summary.feedback, 'feedback row')}"
              f"{images} to {summary.out}")
    else:
        if args.out.suffix == ".jsonl":
            print(f"error: --format llava writes a folder, not {args.out.name}; add --format jsonl for a .jsonl file.",
                  file=sys.stderr)
            return 2
        summary = export_llava(
            store, args.out, session_id=args.session, status=args.status, overwrite=args.force
        )
        print(f"wrote {plural(summary.records, 'correction')} and {plural(summary.images, 'image')} to {summary.out}")
        if summary.skipped:
            print(f"left out {plural(summary.skipped, 'correction')} without an image (they are in --format jsonl)")
    return 0


def _check(store: FeedbackStore, args: argparse.Namespace) -> int:
    problems = store.integrity_check()
    report = store.cleanup_orphans(min_age_seconds=args.min_age, dry_run=not args.cleanup)
    verb = "removed" if args.cleanup else "found"
    print(f"integrity: {'; '.join(problems)}")
    print(f"orphan images {verb}: {len(report.orphan_images)}; temp files {verb}: "
          f"{len(report.temp_files)}; image rows without a file: {len(report.missing_images)}")
    return 0 if problems == ["ok"] and not report.missing_images else 1


if __name__ == "__main__":
    sys.exit(main())
