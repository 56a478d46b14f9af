"""Helpers for the feedback-store tests, and the child processes they run (the `store` fixture is in conftest.py).

Run as ``python -m tests.store_helpers ROLE ...`` from the repository root:

- ``writer DATA_DIR ACK_LOG``: records corrections (image + question + answer +
  correction) forever, appending one JSON line per acknowledged correction to ACK_LOG.
- ``claimer DATA_DIR WORKER_ID``: prints ``ready``, waits for a line on stdin, then claims
  buffers until none is left and prints the claimed ids as JSON.
- ``corrections DATA_DIR N TAG``: records N corrections in a new session, prints its id.
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from feedback_store import FeedbackStore, Message, Session

REPO_ROOT = Path(__file__).resolve().parents[1]


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (32, 24), **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG", **save)
    return buffer.getvalue()


def jpeg_bytes(color: tuple[int, int, int] = (30, 30, 200), size: tuple[int, int] = (40, 20), **save: object) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="JPEG", **save)
    return buffer.getvalue()


class FakeClock:
    """A settable clock for lease and idle-timeout tests."""

    def __init__(self, start: float = 1_000_000.0) -> None:
        self.now = start

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def ask(
    store: FeedbackStore, session: Session, question: str = "What colour is the square?",
    answer: str = "red", image: bytes | None = None, parent_id: str | None = None,
    adapter_version: str | None = None,
) -> tuple[Message, Message]:
    """One user turn and its answer."""
    q = store.record_user_message(session.id, question, image_bytes=image, parent_id=parent_id)
    a = store.record_answer(session.id, q.id, answer, adapter_version, {"temperature": 0.0})
    return q, a


def row_counts(store: FeedbackStore) -> dict[str, int]:
    db = store._conns.get()
    tables = ["sessions", "messages", "images", "feedback", "task_buffers", "buffer_items", "adapter_versions"]
    return {t: db.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in tables}


def image_files(store: FeedbackStore) -> list[str]:
    return sorted(p.name for p in (store.data_dir / "images").iterdir())


def child(role: str, *args: str, **popen: object) -> subprocess.Popen:
    """Start ``python -m tests.store_helpers ROLE ARGS`` from the repo root."""
    env = dict(os.environ, PYTHONPATH=str(REPO_ROOT))
    return subprocess.Popen(
        [sys.executable, "-m", "tests.store_helpers", role, *args],
        cwd=REPO_ROOT, env=env, **popen,  # type: ignore[arg-type]
    )


def read_acks(path: Path) -> list[dict]:
    """Complete lines only: a line cut off by SIGKILL was never acknowledged."""
    if not path.exists():
        return []
    text = path.read_text(encoding="utf-8")
    return [json.loads(line) for line in text.split("\n")[:-1] if line]


# -- child process roles -------------------------------------------------------------


def _writer(data_dir: str, ack_log: str) -> None:
    store = FeedbackStore(Path(data_dir))
    session = store.start_session(client=f"writer pid {os.getpid()}")
    fd = os.open(ack_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    n = 0
    while True:
        n += 1
        tag = f"{os.getpid()}-{n}"
        # every 3rd image is the same one (the dedup path); the others are new content
        color = (7, 7, 7) if n % 3 == 0 else ((n * 37) % 256, (os.getpid() + n) % 256, 99)
        image = png_bytes(color, size=(48, 32))
        q, a = ask(store, session, f"question {tag}?", f"wrong {tag}", image=image)
        state = store.add_correction(session.id, a.id, f"right {tag}", ready_threshold=4)
        ack = {"session": session.id, "q": q.id, "a": a.id, "answer": f"right {tag}",
               "question": f"question {tag}?", "sha": q.image_sha256, "buffer": state.buffer_id}
        os.write(fd, (json.dumps(ack) + "\n").encode())


def _claimer(data_dir: str, worker: str) -> None:
    store = FeedbackStore(Path(data_dir))
    print("ready", flush=True)
    sys.stdin.readline()
    claimed = []
    while (buffer := store.claim_ready_buffer(worker, 60)) is not None:
        claimed.append(buffer.id)
        time.sleep(0.001)
    print(json.dumps(claimed), flush=True)


def _corrections(data_dir: str, n: str, tag: str) -> None:
    store = FeedbackStore(Path(data_dir))
    session = store.start_session(client=tag)
    for i in range(int(n)):
        _, a = ask(store, session, f"{tag} q{i}", f"{tag} wrong{i}", image=png_bytes((i % 256, 1, 2)))
        store.add_correction(session.id, a.id, f"{tag} right{i}")
    print(session.id, flush=True)


if __name__ == "__main__":
    roles = {"writer": _writer, "claimer": _claimer, "corrections": _corrections}
    roles[sys.argv[1]](*sys.argv[2:])
