"""Command line: ``python -m feedback_store {export,check} --data-dir DIR ...``.

``export`` writes every message and feedback row as JSONL: into ``--out FILE.jsonl``, or
into a folder with the images. ``check`` runs SQLite's integrity and foreign-key checks
and reports (``--cleanup``: removes) image files left by crashes. The corrections as a
LLaVA-format training folder are ``python -m llaca.export`` (it uses ``store_command``).

``--data-dir`` defaults to ``./data`` (the store reads no environment variable: the app's
``LLACA_*`` settings are read by ``llaca.config`` alone). Exit status: 0 ok,
1 check found problems, 2 usage or store error.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Callable

from .base import DB_FILENAME
from .errors import ExportError, StoreError
from .export import export_jsonl
from .records import plural
from .store import FeedbackStore


def data_dir_parent() -> argparse.ArgumentParser:
    """The ``--data-dir`` option, as a parent parser."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", type=Path, default=Path("./data"),
                        help="folder holding store.db and images/ (default: ./data)")
    return common


def store_command(data_dir: Path, command: Callable[[FeedbackStore], int]) -> int:
    """Run ``command`` on the store in ``data_dir``; a missing store or a StoreError is
    reported on stderr with exit status 2."""
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    if not (data_dir / DB_FILENAME).is_file():
        return _fail(f"no feedback store in {data_dir} (no {DB_FILENAME}). Pass the app's data folder as --data-dir.")
    try:
        with FeedbackStore(data_dir) as store:
            return command(store)
    except StoreError as exc:
        hint = " Choose a new one or pass --force." if isinstance(exc, ExportError) and exc.reason in (
            "not_empty", "exists") else ""
        return _fail(f"{exc}.{hint}")


def _fail(message: str) -> int:
    print(f"error: {message}", file=sys.stderr)
    return 2


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m feedback_store", description=__doc__.split("\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    exp = sub.add_parser("export", parents=[data_dir_parent()],
                         help="export every message and feedback row as JSONL")
    exp.add_argument("--out", type=Path, required=True,
                     help="a FILE.jsonl (images stay in the store), or a new or empty folder (images copied)")
    exp.add_argument("--session", help="only this session id")
    exp.add_argument("--force", action="store_true", help="write into a non-empty --out folder, or replace an --out file")
    chk = sub.add_parser("check", parents=[data_dir_parent()], help="integrity check and orphan files")
    chk.add_argument("--cleanup", action="store_true", help="remove orphan and temp image files")
    chk.add_argument("--min-age", type=float, default=3600.0, help="only files older than this (s)")
    args = parser.parse_args(argv)
    command = _export if args.command == "export" else _check
    return store_command(args.data_dir, lambda store: command(store, args))


def _export(store: FeedbackStore, args: argparse.Namespace) -> int:
    summary = export_jsonl(store, args.out, session_id=args.session, overwrite=args.force)
    images = f" and {plural(summary.images, 'image')}" if summary.out.is_dir() else ""
    rows = f"{plural(summary.records, 'message')}, {plural(summary.feedback, 'feedback row')}"
    print(f"wrote {rows}{images} to {summary.out}")
    return 0


def _check(store: FeedbackStore, args: argparse.Namespace) -> int:
    problems = store.integrity_check()
    report = store.cleanup_orphans(min_age_seconds=args.min_age, dry_run=not args.cleanup)
    verb = "removed" if args.cleanup else "found"
    print(f"integrity: {'; '.join(problems)}")
    print(f"orphan images {verb}: {len(report.orphan_images)}; temp files {verb}: "
          f"{len(report.temp_files)}; image rows without a file: {len(report.missing_images)}")
    return 0 if problems == ["ok"] and not report.missing_images else 1
