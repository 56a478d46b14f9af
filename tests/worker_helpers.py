"""Helpers for the worker tests: fill a session's buffer with corrections through the real store."""

from __future__ import annotations

import io

from llaca.world.heldout import heldout


def is_complete(path) -> bool:
    """A published version folder: not a staging folder, and peft's files all there (for a
    routed version: its system file loads and every group's adapter folder is complete)."""
    from pathlib import Path

    from llaca.groups.system import RoutedSystem, is_routed_system
    from llaca.worker.adapter_files import REQUIRED

    path = Path(path)
    if path.name.endswith(".tmp"):
        return False
    folders = list(RoutedSystem.load(path).adapters.values()) if is_routed_system(path) else [path]
    return all((Path(f) / name).is_file() for f in folders for name in REQUIRED)


def png(image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


def teach(store, family: str, n: int, seed: int, answer_for=None, threshold: int | None = None,
          question: str | None = None) -> tuple[str, int]:
    """A session asks n questions of `family`, gets a wrong answer, and corrects each one.

    `answer_for(sample)` gives the correction (default: the true answer); `question` asks every
    sample in other words (default: the family's own). Returns (session, buffer id).
    """
    session = store.start_session(client="test")
    state = None
    for s in heldout(family, n, seed=seed):
        q = store.record_user_message(session.id, question or s.question, image_bytes=png(s.image))
        a = store.record_answer(session.id, q.id, "I do not know", adapter_version=None, gen_params={"temperature": 0})
        state = store.add_correction(session.id, a.id, answer_for(s) if answer_for else s.answer,
                                     ready_threshold=threshold or n)
    return session.id, state.buffer_id


def metrics_record(buffer: int, tasks: list[str], matrix: list[list[float]], row_labels: list[str],
                   passed: bool = True, reason: str = "ok", margin: float = 5.0) -> dict:
    """An adapter metrics record (``llaca.worker.record``) with fixture numbers, as stored."""
    from llaca.worker.guard import GuardReport
    from llaca.worker.record import AdapterMetrics

    guard = GuardReport(passed, reason, margin, dict(zip(tasks, matrix[-1])), dict(zip(tasks, matrix[-2])))
    return AdapterMetrics(buffer, "session", tasks, matrix, row_labels, guard, 1.0).to_dict()


def tiny_worker(store, data_dir, **settings):
    """A learning worker on its own copy of the tiny model (it trains on it), default method."""
    from llaca.config.settings import Settings
    from llaca.model.llava import load_model
    from llaca.worker.loop import LearningWorker, WorkerConfig
    from tests.conftest import TINY

    cfg = WorkerConfig(Settings(data_dir=data_dir, **settings), probe_n=24)  # 24 colour and 24 shape probes
    return LearningWorker(cfg, store, lm=load_model(TINY, device="cpu"))
