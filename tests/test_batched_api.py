"""Many users at once through the API, over several taught groups: each session's answer is the
answer it gets alone, and the sessions' answers were decoded in shared batches.

The real app (``python app.py``, the default ``--max-batch 8``) serves a routed version of four
groups (random LoRA adapters, registered and promoted as the worker would) from a temporary
data dir; one ``gradio_client.Client`` per session."""

from __future__ import annotations

import shutil
import threading

import pytest

from tests.conftest import TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

FAMILIES = ("color", "shape", "count", "position")


def test_concurrent_sessions_over_four_groups_answer_as_they_do_alone(tmp_path):
    from gradio_client import Client, handle_file

    from app.server import AppServer
    from feedback_store import FeedbackStore
    from llaca.bench.random_adapters import routed_system
    from llaca.model.llava import load_model
    from llaca.world.heldout import heldout

    version, _ = routed_system(load_model(TINY, device="cpu").model, tmp_path / "made", FAMILIES)
    data = tmp_path / "data"
    shutil.copytree(version, data / "adapters" / "v1")
    store = FeedbackStore(data)
    store.register_adapter("v1", None, data / "adapters" / "v1", "llaca+groups")
    store.promote_adapter("v1")
    store.close()
    questions = []
    for k, family in enumerate(FAMILIES * 2):
        s = heldout(family, 1, seed=300 + k)[0]
        path = tmp_path / f"q{k}.png"
        s.image.save(path)
        questions.append((str(path), s.question))

    with AppServer(TINY, data, log_path=tmp_path / "app.log", threads=2) as server:
        def ask(client, k):
            answer, _, served = client.predict(handle_file(questions[k][0]), questions[k][1], 0.0, 0.7, 48,
                                               api_name="/ask")
            return answer, served

        alone = [ask(Client(server.url, verbose=False), k) for k in range(len(questions))]
        clients = [Client(server.url, verbose=False) for _ in questions]
        together: list = [None] * len(questions)
        start = threading.Barrier(len(questions))

        def session(k):
            start.wait()
            together[k] = [ask(clients[k], k), ask(clients[k], (k + 1) % len(questions))]

        threads = [threading.Thread(target=session, args=(k,)) for k in range(len(questions))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert together == [[alone[k], alone[(k + 1) % len(questions)]] for k in range(len(questions))]
        log = (tmp_path / "app.log").read_text()
    assert "Traceback" not in log
    import sqlite_utils

    db = sqlite_utils.Database(data / "store.db")
    groups = {r["adapter_group"] for r in db.query("select adapter_group from messages where adapter_version = 'v1'")}
    assert len(groups - {None}) == len(FAMILIES)  # every group's adapter answered
