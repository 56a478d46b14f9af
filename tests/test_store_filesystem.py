"""The store refuses a data dir on a network filesystem (SQLite WAL needs one host, a local disk)."""

from __future__ import annotations

import logging

import pytest

from feedback_store import FeedbackStore, UnsafeFilesystemError, filesystem
from feedback_store.filesystem import check_data_dir, filesystem_type

TABLE = """\
22 1 259:2 / / rw,relatime shared:1 - ext4 /dev/nvme0n1p2 rw
25 22 0:21 / /proc rw,nosuid,nodev,noexec,relatime shared:12 - proc proc rw
40 22 0:35 / /mnt/shared rw,relatime shared:20 - nfs4 fs1:/export rw,vers=4.2
41 40 259:3 / /mnt/shared/local rw,relatime shared:21 - xfs /dev/nvme1n1 rw
42 22 0:40 / /mnt/with\\040space rw - cifs //srv/share rw
43 22 0:41 / /scratch rw master:3 - ext4 /dev/sdb1 rw
44 43 0:42 / /scratch rw - fuse.sshfs me@host:/x rw
"""


@pytest.mark.parametrize("path, fstype", [
    ("/home/me/data", "ext4"),
    ("/mnt/shared/llaca", "nfs4"),
    ("/mnt/shared", "nfs4"),
    ("/mnt/shared/local/data", "xfs"),  # a local disk mounted inside the NFS tree
    ("/mnt/sharedX/data", "ext4"),  # a prefix of the name is not a parent
    ("/mnt/with space/data", "cifs"),  # \040 in the table
    ("/scratch/data", "fuse.sshfs"),  # the later of two mounts on one point is the visible one
])
def test_filesystem_type_from_the_mount_table(path, fstype):
    assert filesystem_type(path, TABLE) == fstype


def test_no_table_or_no_covering_mount():
    assert filesystem_type("/x", "") is None
    assert filesystem_type("/x", "garbage line\n") is None


def test_network_data_dir_is_refused_with_why(tmp_path):
    table = TABLE + f"50 22 0:50 / {tmp_path} rw - nfs fs2:/vol rw\n"
    with pytest.raises(UnsafeFilesystemError) as err:
        check_data_dir(tmp_path / "data", table)
    msg = str(err.value)
    assert "network filesystem (nfs)" in msg and "WAL" in msg and "local disk" in msg
    assert (err.value.path, err.value.fstype) == ((tmp_path / "data").resolve(), "nfs")
    assert check_data_dir(tmp_path / "data", TABLE) == "ext4"


def test_store_refuses_to_open_there_and_writes_nothing(tmp_path, monkeypatch, caplog):
    monkeypatch.setattr(filesystem, "read_mount_table", lambda: f"1 0 0:1 / / rw - ext4 /dev/a rw\n"
                                                                f"2 1 0:2 / {tmp_path} rw - nfs4 s:/v rw\n")
    with pytest.raises(UnsafeFilesystemError, match="nfs4"):
        FeedbackStore(tmp_path / "data")
    assert not (tmp_path / "data" / "store.db").exists()
    with caplog.at_level(logging.WARNING, logger="feedback_store.base"):
        store = FeedbackStore(tmp_path / "data", journal_mode="DELETE")  # explicitly chosen: opens, with a warning
    store.close()
    assert "nfs4 in DELETE journal mode" in caplog.text


def test_store_opens_on_a_local_disk_in_wal_mode(tmp_path, monkeypatch):
    monkeypatch.setattr(filesystem, "read_mount_table", lambda: "1 0 0:1 / / rw - ext4 /dev/a rw\n")
    store = FeedbackStore(tmp_path / "data")
    try:
        session = store.start_session()
        store.record_user_message(session.id, "kept?")
        assert [m.text for m in store.session_history(session.id)] == ["kept?"]
        import sqlite3

        with sqlite3.connect(tmp_path / "data" / "store.db") as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    finally:
        store.close()
