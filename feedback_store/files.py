"""Crash-safe file writes: a file appears complete or not at all.

``write_atomic`` writes a ``.tmp-*`` file beside the target, fsyncs it, renames it over the
target and fsyncs the folder, so a crash leaves the old file (or none) plus at most a temp
file. ``fsync_dir`` is that last step on its own (also used by ``llaca`` for adapter folders).
"""

from __future__ import annotations

import errno
import os
import uuid
from pathlib import Path

TMP_PREFIX = ".tmp-"


def fsync_dir(path: Path) -> None:
    """Make a rename or creation in folder ``path`` durable.

    A no-op where folders cannot be synced (Windows; filesystems answering EINVAL); any other
    error, such as EIO, is raised: the rename may not survive a power cut."""
    if os.name == "nt":  # pragma: no cover - folders cannot be opened for fsync there
        return
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError as exc:
        if exc.errno != errno.EINVAL:
            raise
    finally:
        os.close(fd)


def write_atomic(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` through tmp + fsync + rename + folder fsync."""
    tmp = path.with_name(f"{TMP_PREFIX}{uuid.uuid4().hex}")
    try:
        with open(tmp, "xb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync_dir(path.parent)
