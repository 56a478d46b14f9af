"""Teaching in public, end to end: the real app under ``LLACA_TEACH=review`` with its worker.

One anonymous session teaches the position family wrong (every corner mirrored), another
teaches it right. Nothing trains until the admin acts: the held corrections are listed by
``/pending``; the right ones are approved (``/approve``) and learned by the worker; the wrong
ones are rejected (``/reject``) and their author sees why. A third session then gets the
position right on fresh images, and answers colour and shape questions exactly as before.
"""

from __future__ import annotations

import time

import pytest

from app.server import AppServer
from tests.app_helpers import answers, files, mirrored, served_accuracy
from tests.conftest import TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # starts the real app or process


def teach(client, tmp_path, n: int, seed: int, wrong: bool) -> list[tuple]:
    """Correct ``n`` answers to position questions (mirrored when ``wrong``); returns /correct's results."""
    out = []
    for image, q, a in files(tmp_path, "position", n, seed):
        got, message_id, _ = client.predict(image, q, 0.0, 0.7, 16, api_name="/ask")
        target = mirrored(a) if wrong else a
        if got.strip() == target:
            continue  # nothing to correct
        out.append(client.predict(message_id, target, api_name="/correct"))
    return out


@pytest.mark.slow
def test_under_review_only_approved_corrections_train(tmp_path):
    from gradio_client import Client

    env = {"LLACA_TEACH": "review", "LLACA_ADMIN_PASSWORD": "s3cret", "LLACA_QUESTIONS_PER_MINUTE": "1000"}
    with AppServer(TINY, tmp_path / "data", env=env, worker=True, threads=1, timeout=180) as server:
        vandal, teacher, admin, fresh = (Client(server.url, verbose=False) for _ in range(4))
        base_probe = files(tmp_path, "color", 8, 7) + files(tmp_path, "shape", 8, 7)
        base_before = answers(fresh, base_probe)

        held = teach(vandal, tmp_path, 10, seed=500, wrong=True)  # more than a buffer's worth
        assert {(b, s) for b, _, s in held} == {(None, "waiting for review")}  # stored, in no buffer
        assert len(held) >= 9 and held[-1][1] == len(held)  # the author's corrections waiting
        status = vandal.predict(api_name="/status")
        assert status["you"]["teach"] == "review" and status["you"]["pending"] == len(held)
        assert not status["you"]["trusted"] and status["buffers"] == [] and len(status["reviews"]) == len(held)
        assert {r["status_text"] for r in status["reviews"]} == {"waiting for review"}
        taught = teach(teacher, tmp_path, 16, seed=600, wrong=False)

        with pytest.raises(Exception, match="Wrong admin password"):
            admin.predict("guess", api_name="/pending")
        pending = admin.predict("s3cret", api_name="/pending")
        assert len(pending) == len(held) + len(taught)
        assert {"correction_id", "author", "question", "answer", "correction"} <= set(pending[0])
        vandal_author, teacher_author = status["you"]["author"], teacher.predict(api_name="/status")["you"]["author"]
        assert {p["author"] for p in pending} == {vandal_author, teacher_author}
        time.sleep(3)  # the worker polls every 2 s: held corrections give it nothing to claim
        assert fresh.predict(api_name="/status")["current_adapter"] == "base"

        ids = [p["correction_id"] for p in pending if p["author"] == teacher_author]
        approved = admin.predict("s3cret", ",".join(map(str, ids)), api_name="/approve")
        assert sorted(approved["approved"]) == sorted(ids) and {b["status"] for b in approved["buffers"]} == {"ready"}
        rejected = admin.predict("s3cret", [p["correction_id"] for p in pending if p["author"] == vandal_author],
                                 "mirrored corners", api_name="/reject")
        assert len(rejected["rejected"]) == len(held)
        assert admin.predict("s3cret", api_name="/pending") == []

        deadline = time.time() + 300
        while time.time() < deadline:
            buffers = teacher.predict(api_name="/status")["buffers"]
            if buffers and all(b["status"] in ("promoted", "rejected") for b in buffers):
                break
            time.sleep(1)
        assert {b["status"] for b in buffers} == {"promoted"}, buffers  # 8 a buffer: one or two of them

        reviews = vandal.predict(api_name="/status")["reviews"]
        assert {(r["status"], r["reason"]) for r in reviews} == {("rejected", "mirrored corners")}
        acc, versions = served_accuracy(fresh, tmp_path, "position", 20, 9999)
        assert acc >= 80.0 and versions == {buffers[-1]["adapter_version"]}
        assert answers(fresh, base_probe) == base_before  # questions of no group: the base model answers
