"""Which filesystem holds the data dir, and refusing the ones SQLite's WAL mode cannot use.

WAL keeps its index in shared memory (the ``-shm`` file every connection maps), so "all
processes using a database must be on the same host computer; WAL does not work over a
network filesystem" (https://sqlite.org/wal.html). Over NFS, SMB and the like, processes on
different machines - or even one machine, when the client's locking or mapping is not
coherent - can corrupt the database. The store therefore refuses to open in WAL mode on a
network filesystem (``check_data_dir``).

The type is looked up in the mount table, ``/proc/self/mountinfo`` on Linux: the mount whose
mount point is the longest prefix of the (resolved) data dir, the last one when mounts are
stacked. ``filesystem_type`` is a pure function of that text, so tests pass a table of their
own. Where there is no such table (not Linux), nothing is checked.
"""

from __future__ import annotations

import os
import re
from pathlib import Path, PurePosixPath

from .errors import UnsafeFilesystemError

MOUNTINFO = Path("/proc/self/mountinfo")

NETWORK_FILESYSTEMS = frozenset({
    "nfs", "nfs4", "cifs", "smb3", "smbfs", "ncpfs", "9p", "afs", "coda", "ceph", "glusterfs", "lustre", "gpfs",
    "beegfs", "orangefs", "pvfs2", "ocfs2", "gfs2", "fuse.sshfs", "fuse.glusterfs", "fuse.ceph", "fuse.cephfs",
    "fuse.s3fs", "fuse.gcsfuse", "fuse.rclone", "fuse.juicefs", "fuse.mountpoint-s3", "fuse.blobfuse2",
})
"""Filesystem types (as the mount table spells them) shared between hosts or remote."""


def _unescape(field: str) -> str:
    """Mount points in mountinfo escape space, tab, newline and backslash as \\ooo (octal)."""
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_type(path: str | os.PathLike, mountinfo: str) -> str | None:
    """The type of the filesystem holding absolute `path` per a mountinfo table, or None if no
    mount covers it. Lines: ``id parent major:minor root mount-point options [optional...] - type source super-options``."""
    target = PurePosixPath(path)
    best: tuple[int, str] | None = None
    for line in mountinfo.splitlines():
        head, sep, tail = line.partition(" - ")
        fields = head.split()
        if not sep or len(fields) < 5 or not tail.split():
            continue
        mount_point = PurePosixPath(_unescape(fields[4]))
        if target == mount_point or mount_point in target.parents:
            depth = len(mount_point.parts)
            if best is None or depth >= best[0]:  # a later mount on the same point hides the earlier
                best = (depth, tail.split()[0])
    return best[1] if best else None


def is_network_filesystem(fstype: str | None) -> bool:
    return fstype is not None and (fstype in NETWORK_FILESYSTEMS or fstype.startswith(("nfs", "smb", "cifs")))


def read_mount_table() -> str | None:
    """This process's mount table, or None where there is none to read."""
    try:
        return MOUNTINFO.read_text(errors="replace")
    except OSError:
        return None


def check_data_dir(data_dir: Path, mountinfo: str | None = None) -> str | None:
    """Raise `UnsafeFilesystemError` if `data_dir` is on a network filesystem; return its type."""
    table = read_mount_table() if mountinfo is None else mountinfo
    if table is None:
        return None
    resolved = Path(data_dir).resolve()
    fstype = filesystem_type(resolved, table)
    if is_network_filesystem(fstype):
        raise UnsafeFilesystemError(
            f"the data dir {resolved} is on a network filesystem ({fstype}); SQLite's WAL mode needs every "
            "process that opens the database on one host, with the database on a local disk (sqlite.org/wal.html)",
            path=resolved, fstype=fstype,
        )
    return fstype
