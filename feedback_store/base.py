"""Opening and closing a store: options, the data dir layout, connections and schema.

``StoreBase`` is what every part of ``FeedbackStore`` (``conversations``, ``buffers``,
``adapters``) builds on: it owns ``data_dir`` (``store.db``, ``images/``, ``adapters/``)
and writes nowhere else.

WAL mode needs every process on the same host, on a local disk (it uses shared memory):
opening a data dir on a network filesystem in WAL mode raises ``UnsafeFilesystemError``
(``filesystem.py``). ``journal_mode="DELETE"`` opens it anyway, with a warning: the rollback
journal then depends on the network filesystem's locks, which SQLite's documentation warns
are often broken.
"""

from __future__ import annotations

import logging
import time
from pathlib import Path
from typing import Callable, Self

from . import filesystem, schema
from .connection import Connections
from .images import IMAGES_DIR

log = logging.getLogger(__name__)

DB_FILENAME = "store.db"
ADAPTERS_DIR = "adapters"


class StoreBase:
    """The open database and the limits every operation checks input against."""

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
        self.max_image_bytes = max_image_bytes
        self.max_image_pixels = max_image_pixels
        self.max_question_chars = max_question_chars
        self.max_answer_chars = max_answer_chars
        self.max_claim_attempts = max_claim_attempts
        for name in ("max_image_bytes", "max_image_pixels", "max_question_chars", "max_answer_chars",
                     "max_claim_attempts"):
            if not getattr(self, name) > 0:
                raise ValueError(f"{name} must be positive, not {getattr(self, name)!r}")
        if not busy_timeout > 0:
            raise ValueError(f"busy_timeout must be positive, not {busy_timeout!r}")
        self._clock = clock
        self.data_dir = Path(data_dir).absolute()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._check_filesystem(journal_mode)
        self.db_path = self.data_dir / DB_FILENAME
        self._conns = Connections(
            self.db_path, busy_timeout=busy_timeout, synchronous=synchronous, journal_mode=journal_mode
        )
        try:
            schema.check_version(self._conns)  # refuse before changing the file
            self._conns.set_journal_mode()
            schema.create(self._conns)
        except BaseException:
            self._conns.close()
            raise
        (self.data_dir / IMAGES_DIR).mkdir(exist_ok=True)
        (self.data_dir / ADAPTERS_DIR).mkdir(exist_ok=True)

    def _check_filesystem(self, journal_mode: str) -> None:
        if journal_mode.upper() == "WAL":
            filesystem.check_data_dir(self.data_dir)
            return
        fstype = filesystem.filesystem_type(self.data_dir.resolve(), filesystem.read_mount_table() or "")
        if filesystem.is_network_filesystem(fstype):
            log.warning("feedback store at %s is on %s in %s journal mode: safe only if its locks work; "
                        "use it from one host", self.data_dir, fstype, journal_mode.upper())

    def close(self) -> None:
        """Close this process's connections. The store cannot be used afterwards."""
        self._conns.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _now(self) -> float:
        return float(self._clock())
