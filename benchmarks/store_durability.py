"""Durability benchmark for the feedback store: SIGKILL a writer at random moments.

A writer process records corrections as fast as it can - a user message with a new
image, the answer, the correction (three transactions) - and appends one line to an
acknowledgement log after each correction is acknowledged (``add_correction``
returned). The parent SIGKILLs it after a random delay, restarts it, and repeats.
At the end it opens the store and checks:

- ``PRAGMA integrity_check`` and ``PRAGMA foreign_key_check``;
- every acknowledged correction is present and consistent: the question, the answer it
  corrected, the feedback row (corrected and previous text), the buffer item and the
  image row whose file hashes to its name (lost must be 0);
- no half-written records: every correction has its buffer item, every image row its
  file; leftovers of killed operations are counted (at most one operation per kill)
  and image files without a row are removed with ``cleanup_orphans``.

Then it measures write throughput on a fresh store: corrections per second, each with
its own image. Usage (run from the repository root)::

    python benchmarks/store_durability.py --kills 60 --throughput-n 200

Everything is written under a temporary folder (``--work-dir`` to choose; removed
unless ``--keep``). Exit status 1 if anything acknowledged was lost or the database
is damaged.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import json
import logging
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[1]
if str(REPO_ROOT) not in sys.path:
    sys.path.insert(0, str(REPO_ROOT))

from PIL import Image, ImageDraw  # noqa: E402

from feedback_store import FeedbackStore  # noqa: E402


def make_image(seed: int, size: int) -> bytes:
    """A distinct, photo-ish PNG (noise plus a coloured shape) for every seed."""
    rng = random.Random(seed)
    image = Image.effect_noise((size, size), 40).convert("RGB")
    draw = ImageDraw.Draw(image)
    x, y = rng.randrange(size // 2), rng.randrange(size // 2)
    draw.rectangle([x, y, x + size // 3, y + size // 3], fill=(rng.randrange(256), rng.randrange(256), seed % 256))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def one_correction(store: FeedbackStore, session_id: str, tag: str, image: bytes) -> dict:
    question = store.record_user_message(session_id, f"What is shown in {tag}?", image_bytes=image)
    answer = store.record_answer(session_id, question.id, f"wrong answer {tag}", None, {"temperature": 0.0})
    state = store.add_correction(session_id, answer.id, f"right answer {tag}", ready_threshold=8)
    return {"session": session_id, "q": question.id, "a": answer.id, "buffer": state.buffer_id,
            "question": question.text, "previous": answer.text, "corrected": f"right answer {tag}",
            "sha": question.image_sha256}


# -- child process roles -------------------------------------------------------------


def run_writer(data_dir: Path, ack_log: Path, image_size: int) -> None:
    store = FeedbackStore(data_dir)
    session = store.start_session(client=f"durability writer {os.getpid()}")
    fd = os.open(ack_log, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print("ready", flush=True)
    n = 0
    while True:
        n += 1
        tag = f"{os.getpid()}-{n}"
        seed = 7 if n % 4 == 0 else hash(tag) & 0xFFFFFF  # every 4th image repeats: dedup path
        ack = one_correction(store, session.id, tag, make_image(seed, image_size))
        os.write(fd, (json.dumps(ack) + "\n").encode())  # acknowledged from here on


def run_throughput(data_dir: Path, n: int, image_size: int) -> None:
    images = [make_image(10_000 + i, image_size) for i in range(n)]  # not timed
    store = FeedbackStore(data_dir)
    session = store.start_session(client="throughput")
    start = time.perf_counter()
    for i, image in enumerate(images):
        one_correction(store, session.id, f"t{i}", image)
    seconds = time.perf_counter() - start
    store.close()
    print(json.dumps({"n": n, "seconds": seconds, "image_bytes": sum(map(len, images)) / n}), flush=True)


def spawn(*args: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, str(Path(__file__).resolve()), *args], stdout=subprocess.PIPE, text=True,
        cwd=REPO_ROOT,
    )


# -- verification --------------------------------------------------------------------


def read_acks(path: Path) -> list[dict]:
    if not path.exists():
        return []
    lines = path.read_text(encoding="utf-8").split("\n")
    return [json.loads(line) for line in lines[:-1] if line]  # a cut-off last line was never acked


def check_ack(store: FeedbackStore, ack: dict) -> str | None:
    """None if the acknowledged correction is fully present, else what is wrong."""
    try:
        question = store.get_message(ack["session"], ack["q"])
        answer = store.get_message(ack["session"], ack["a"])
        if (question.text, question.image_sha256) != (ack["question"], ack["sha"]):
            return "question differs"
        if (answer.parent_id, answer.text) != (question.id, ack["previous"]):
            return "answer differs"
        fixes = [f for f in store.session_feedback(ack["session"])
                 if f.message_id == answer.id and f.kind == "correction"]
        if [(f.corrected_text, f.previous_text) for f in fixes] != [(ack["corrected"], ack["previous"])]:
            return "feedback row missing or differs"
        items = [i for i in store.buffer_items(ack["buffer"]) if i.message_id == answer.id]
        if [(i.question, i.answer, i.image_sha256, i.feedback_id) for i in items] != [
            (ack["question"], ack["corrected"], ack["sha"], fixes[0].id)
        ]:
            return "buffer item missing or differs"
        if hashlib.sha256(store.image_path(ack["sha"]).read_bytes()).hexdigest() != ack["sha"]:
            return "image file differs from its hash"
    except Exception as exc:  # noqa: BLE001 - any failure means the ack is not intact
        return f"{type(exc).__name__}: {exc}"
    return None


def leftovers(store: FeedbackStore) -> dict[str, int]:
    """Counts of records a kill may leave (each a complete operation, just unfinished work)."""
    db = store._conns.get()

    def count(sql: str) -> int:
        return db.execute(sql).fetchone()[0]

    return {
        "corrections": count("SELECT count(*) FROM feedback WHERE kind = 'correction'"),
        "questions_without_answer": count(
            "SELECT count(*) FROM messages q WHERE role = 'user' AND NOT EXISTS "
            "(SELECT 1 FROM messages a WHERE a.parent_id = q.id)"),
        "answers_without_correction": count(
            "SELECT count(*) FROM messages a WHERE role = 'assistant' AND NOT EXISTS "
            "(SELECT 1 FROM feedback f WHERE f.message_id = a.id)"),
        "corrections_without_item": count(
            "SELECT count(*) FROM feedback f WHERE kind = 'correction' AND NOT EXISTS "
            "(SELECT 1 FROM buffer_items i WHERE i.feedback_id = f.id)"),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--kills", type=int, default=60, help="SIGKILLs (at least 50 for the issue)")
    parser.add_argument("--max-delay", type=float, default=0.4, help="longest run before a kill (s)")
    parser.add_argument("--throughput-n", type=int, default=200, help="corrections timed (0: skip)")
    parser.add_argument("--image-size", type=int, default=224, help="image side in pixels")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--work-dir", type=Path, help="where to put the stores (default: a temp dir)")
    parser.add_argument("--keep", action="store_true", help="keep the work dir")
    parser.add_argument("--writer", nargs=2, metavar=("DATA_DIR", "ACK_LOG"), help=argparse.SUPPRESS)
    parser.add_argument("--throughput-child", metavar="DATA_DIR", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.writer:
        run_writer(Path(args.writer[0]), Path(args.writer[1]), args.image_size)
        return 0
    if args.throughput_child:
        run_throughput(Path(args.throughput_child), args.throughput_n, args.image_size)
        return 0

    logging.basicConfig(level=logging.WARNING, format="  (log) %(name)s: %(message)s")
    work = args.work_dir or Path(tempfile.mkdtemp(prefix="store_durability_"))
    data, acks = work / "data", work / "acks.log"
    FeedbackStore(data).close()
    rng = random.Random(args.seed)
    kills, started = 0, time.monotonic()
    for _ in range(args.kills):
        writer = spawn("--writer", str(data), str(acks), "--image-size", str(args.image_size))
        if writer.stdout.readline().strip() != "ready":
            print("writer failed to start", file=sys.stderr)
            return 1
        time.sleep(rng.uniform(0.0, args.max_delay))
        writer.send_signal(signal.SIGKILL)
        writer.wait()
        kills += writer.returncode == -signal.SIGKILL
    kill_phase = time.monotonic() - started

    acked = read_acks(acks)
    store = FeedbackStore(data)
    integrity = store.integrity_check()
    problems = [(ack, why) for ack in acked if (why := check_ack(store, ack)) is not None]
    left = leftovers(store)
    cleanup = store.cleanup_orphans(min_age_seconds=0)
    store.close()
    lost = len(problems)
    print(f"store durability ({data}): synchronous=FULL, journal=WAL, image {args.image_size}px")
    print(f"  kills:                          {kills} SIGKILLs in {kill_phase:.0f} s, writer restarted each time")
    print(f"  acknowledged corrections:       {len(acked)}")
    print(f"  found and consistent:           {len(acked) - lost}")
    print(f"  lost:                           {lost}")
    print(f"  committed, not yet acknowledged: {left['corrections'] - len(acked)} (in flight at a kill)")
    print(f"  unfinished sequences:           {left['questions_without_answer']} questions without answer, "
          f"{left['answers_without_correction']} answers without correction")
    print(f"  corrections without buffer item: {left['corrections_without_item']}")
    print(f"  image files without row (removed): {len(cleanup.orphan_images)}, temp files: "
          f"{len(cleanup.temp_files)}, image rows without file: {len(cleanup.missing_images)}")
    print(f"  integrity_check + foreign_key_check: {'; '.join(integrity)}")
    for ack, why in problems[:10]:
        print(f"  LOST {ack['a']}: {why}")

    if args.throughput_n > 0:
        child = spawn("--throughput-child", str(work / "throughput"), "--throughput-n",
                      str(args.throughput_n), "--image-size", str(args.image_size))
        result = json.loads(child.stdout.readline())
        child.wait()
        rate = result["n"] / result["seconds"]
        print(f"  throughput: {result['n']} corrections (each a new {args.image_size}x{args.image_size} "
              f"image of ~{result['image_bytes'] / 1000:.0f} kB + question, answer, correction: "
              f"3 transactions) in {result['seconds']:.2f} s = {rate:.1f} corrections/s")
    if not args.keep and args.work_dir is None:
        shutil.rmtree(work, ignore_errors=True)
    ok = lost == 0 and integrity == ["ok"] and kills >= args.kills and not cleanup.missing_images
    ok = ok and left["corrections_without_item"] == 0 and left["corrections"] >= len(acked)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
