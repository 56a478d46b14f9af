"""Conflicts and forgetting, end to end: the real app with its worker, default settings and
policy (anyone, instruction groups).

Author A teaches the position family right (16 corrections) while author D teaches the letter
family (8), two clients at once: each family gets its own group and adapter, every correction
ends learned or pending with a reason, and questions of no group (colour, shape) are answered
exactly as by the base model. Author B then teaches position with every corner mirrored (8): the
run is refused as a conflict that names A, and a fresh session still gets position right. The
admin then forgets A: A's rows are gone from the store and the export, the served system answers
position questions exactly as the base model did before A taught them, and the letter group's
adapter files are the very same files (same inodes). Forgetting one of D's corrections drops
and retrains the letter group through the guard.
"""

from __future__ import annotations

import threading
import time

import pytest

from app.server import AppServer
from feedback_store import FeedbackStore
from feedback_store.export import corrections
from tests.app_helpers import answers, files, mirrored, served_accuracy
from tests.conftest import TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # starts the real app or process

PASSWORD = "s3cret"


def wait_buffers(client, timeout: float = 900) -> list[dict]:
    deadline = time.time() + timeout
    while time.time() < deadline:
        buffers = client.predict(api_name="/status")["buffers"]
        if buffers and all(b["status"] in ("promoted", "rejected") for b in buffers):
            return buffers
        time.sleep(1)
    raise AssertionError(f"buffers not finished: {buffers}")


def teach_family(client, tmp_path, family: str, n: int, seed: int, wrong: bool = False) -> list[tuple]:
    """Correct answers until ``n`` corrections (mirrored corners when ``wrong``); /correct's results."""
    out = []
    for image, q, a in files(tmp_path, family, n * 2, seed):
        got, message_id, _ = client.predict(image, q, 0.0, 0.7, 16, api_name="/ask")
        target = mirrored(a) if wrong else a
        if got.strip() != target:
            out.append(client.predict(message_id, target, api_name="/correct"))
            if len(out) == n:
                return out
    raise AssertionError(f"{family}: only {len(out)} of {n} answers needed a correction")


def wait_job(data, timeout: float = 300) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with FeedbackStore(data) as store:
            if all(j.status in ("done", "failed") for j in store.jobs()):
                return
        time.sleep(1)
    raise AssertionError("the retrain job did not finish")


@pytest.mark.slow
def test_a_mirrored_author_is_refused_as_a_conflict_and_a_forgotten_author_leaves_no_trace(tmp_path):
    from gradio_client import Client

    data = tmp_path / "data"
    env = {"LLACA_ADMIN_PASSWORD": PASSWORD, "LLACA_QUESTIONS_PER_MINUTE": "100000"}
    with AppServer(TINY, data, env=env, worker=True, threads=1, timeout=180) as server:
        a, b, d, fresh, admin = (Client(server.url, verbose=False) for _ in range(5))
        probe = files(tmp_path, "position", 12, 4242)
        before = answers(fresh, probe)
        base_probe = files(tmp_path, "color", 8, 7) + files(tmp_path, "shape", 8, 7)
        base_before = answers(fresh, base_probe)

        # two clients teach two families at once
        errors: list[BaseException] = []

        def teacher(client, family: str, n: int, seed: int) -> None:
            try:
                teach_family(client, tmp_path, family, n, seed)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=teacher, args=args) for args in ((a, "position", 16, 700), (d, "letter", 8, 800))]
        for t in threads:
            t.start()
        for t in threads:
            t.join(300)
        assert not errors, errors
        taught = {"position": wait_buffers(a), "letter": wait_buffers(d)}
        groups = {}
        for family, buffers in taught.items():
            assert {x["status"] for x in buffers} == {"promoted"}, (family, buffers)
            items = [i for x in buffers for i in x["items"]]
            assert len({i["group"] for i in items}) == 1, family  # one group per family
            assert all(i["status"] in ("learned", "pending") and i["status_text"] for i in items), items
            assert sum(i["status"] == "learned" for i in items) >= 0.85 * len(items), (family, items)
            groups[family] = items[0]["group"]
        assert len(taught["position"]) == 2 and groups["position"] != groups["letter"]
        # questions of no group: exactly the base model's answers
        assert answers(fresh, base_probe) == base_before
        author_a = a.predict(api_name="/status")["you"]["author"]

        held = teach_family(b, tmp_path, "position", 8, seed=900, wrong=True)
        assert held and all(status in ("open", "ready") for _, _, status in held)
        refused = wait_buffers(b)
        assert {x["status"] for x in refused} == {"rejected"}, refused
        assert all("conflict" in x["reason"] and author_a in x["reason"] for x in refused), refused
        assert {i["status"] for x in refused for i in x["items"]} <= {"pending", "held out"}
        acc, versions = served_accuracy(fresh, tmp_path, "position", 20, 9999)
        assert acc >= 80.0 and len(versions) == 1 and versions != {"base"}

        # forget A: rows, images and influence
        status = admin.predict(api_name="/status")
        served_before = status["current_adapter"]
        served_files = {p.parent.name: p.stat().st_ino
                        for p in (data / "adapters" / served_before).glob("*/adapter_model.safetensors")}
        result = admin.predict(PASSWORD, author_a, api_name="/forget")
        assert result["deleted"]["corrections"] == 16 and result["version"] and len(result["groups"]) == 1
        (position_group,) = result["groups"]
        after = [fresh.predict(img, q, 0.0, 0.7, 16, api_name="/ask") for img, q, _ in probe]
        assert [x[0] for x in after] == before  # as before A taught it: the base model answers
        new = data / "adapters" / result["version"]
        kept = {p.parent.name: p.stat().st_ino for p in new.glob("*/adapter_model.safetensors")}
        assert len(served_files) == 2 and position_group in served_files  # position and letter were served
        assert position_group not in kept and len(kept) == 1
        assert all(served_files[g] == ino for g, ino in kept.items())  # the letter adapter: the very same file
        wait_job(data)
        with pytest.raises(Exception, match="(?i)no author"):
            admin.predict(PASSWORD, author_a, api_name="/forget")
        with FeedbackStore(data) as store:
            with store._conns.read() as db:
                assert not list(db.query("SELECT 1 FROM sessions WHERE author = ?", [author_a]))
            exported = corrections(store)
        assert exported and author_a not in {r["author"] for r in exported}

        # forget one of D's corrections: the letter group is dropped, then retrained from the other 7
        d_status = d.predict(api_name="/status")
        one_correction = admin.predict(PASSWORD, api_name="/pending")  # nothing pending under anyone
        assert one_correction == []
        with FeedbackStore(data) as store:
            with store._conns.read() as db:
                fid = next(db.query("""SELECT f.id FROM feedback f JOIN sessions s ON s.id = f.session_id
                                       WHERE s.id = ? AND f.kind = 'correction' LIMIT 1""", [d_status["session_id"]]))["id"]
        gone = admin.predict(PASSWORD, fid, api_name="/forget_correction")
        assert gone["deleted"]["corrections"] == 1 and len(gone["groups"]) == 1 and gone["version"]
        wait_job(data)
        with FeedbackStore(data) as store:
            (job,) = [j for j in store.jobs() if j.groups == tuple(gone["groups"])]
            assert job.status == "done" and "retrained" in job.detail, job
            assert store.current_adapter().metrics["guard"]["passed"]
            with store._conns.read() as db:
                assert not list(db.query("SELECT 1 FROM feedback WHERE id = ?", [fid]))
