"""Starting and stopping the real app: a busy port, and a bounded shutdown mid-answer.

The shutdown test runs `python app.py` on a tiny random LLaVA-1.5-shaped model (random
weights rarely emit EOS, so an answer streams until `max_new_tokens`), sends SIGTERM while
an answer is streaming to a connected client, and checks that the process exits within 5 s
with 0, logs the start and the end of its shutdown, stores the cut-short answer as stopped,
and that its learning worker marked itself stopped.
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time

import pytest
from PIL import Image

from app.answers import AnswersInFlight
from app.lifecycle import SHUTDOWN_SECONDS
from app.server import ROOT, AppServer
from feedback_store import FeedbackStore
from llaca.serve.assistant import ServedBy
from tests.llava15_model import make_llava15

pytestmark = [pytest.mark.e2e, pytest.mark.slow]  # starts the real app or process


@pytest.fixture(scope="module")
def llava15_dir(tmp_path_factory):
    return make_llava15(tmp_path_factory.mktemp("llava15"))


def test_a_busy_port_is_named_with_the_way_to_choose_another(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(
            [sys.executable, str(ROOT / "app.py"), "--host", "127.0.0.1", "--port", str(port), "--no-worker",
             "--data-dir", str(tmp_path / "data")],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env={"GRADIO_ANALYTICS_ENABLED": "False", "HF_HUB_OFFLINE": "1", "PATH": "/usr/bin:/bin"},
        )
    out = proc.stdout + proc.stderr
    assert proc.returncode == 1, out
    assert f"port {port} on 127.0.0.1 is already in use" in out and "--port" in out and "LLACA_PORT" in out, out
    assert "serving" not in out and "GRADIO_SERVER_PORT" not in out, out
    assert not (tmp_path / "data").exists()  # refused before anything was loaded or created


def test_sigterm_mid_answer_stops_within_the_bound_and_keeps_the_answer(tmp_path, llava15_dir):
    from gradio_client import Client, handle_file

    image = tmp_path / "red.png"
    Image.new("RGB", (64, 64), "red").save(image)
    data = tmp_path / "data"
    server = AppServer(llava15_dir, data, worker=True, log_path=tmp_path / "app.log", threads=1,
                       env={"LLACA_MAX_NEW_TOKENS": "4000"}).start()
    try:
        client = Client(server.url, verbose=False)
        job = client.submit(handle_file(str(image)), "What is shown in this image?", 0.0, 0.7, 3000, api_name="/ask")
        deadline = time.monotonic() + 60
        while not job.outputs() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert job.outputs() and not job.done(), "the answer should still be streaming"
        t0 = time.monotonic()
        server.proc.send_signal(signal.SIGTERM)
        server.proc.wait(timeout=30)
        took = time.monotonic() - t0
    finally:
        server.stop()
    log = server.log()
    assert server.proc.returncode == 0, log
    assert took <= SHUTDOWN_SECONDS, f"shutdown took {took:.1f} s\n{log}"
    assert "shutting down (SIGTERM)" in log and "shut down in" in log, log
    assert "terminate called" not in log, log
    store = FeedbackStore(data)
    try:
        with store._conns.read() as db:
            answers = list(db.query("SELECT text, gen_params FROM messages WHERE role = 'assistant'"))
        assert len(answers) == 1, answers
        params = json.loads(answers[0]["gen_params"])
        assert params["stopped"] is True and answers[0]["text"], answers  # what the user had seen, kept
        assert [w.state for w in store.worker_states()] == ["stopped"]
    finally:
        store.close()


def _question(store: FeedbackStore) -> tuple[str, str]:
    session = store.start_session().id
    return session, store.record_user_message(session, "What color is it?", image_bytes=_png()).id


def _png() -> bytes:
    import io

    buf = io.BytesIO()
    Image.new("RGB", (8, 8), "blue").save(buf, format="PNG")
    return buf.getvalue()


def test_an_answer_in_flight_is_stored_once_by_whoever_comes_first(tmp_path):
    store = FeedbackStore(tmp_path / "data")
    try:
        answers = AnswersInFlight(store)
        session, q = _question(store)
        a = answers.begin(session, q, {"temperature": 0.0}, ServedBy("base"))
        answers.progress(a, "It is bl", ServedBy("base"))
        assert answers.drain(wait=0.0) == 1  # shutdown stores what was seen, as cut short
        late = answers.finish(a, "It is blue.", ServedBy("base"), stopped=False)  # the handler, afterwards
        with store._conns.read() as db:
            rows = list(db.query("SELECT id, text, gen_params FROM messages WHERE role = 'assistant'"))
        assert len(rows) == 1 and rows[0]["id"] == late.id and rows[0]["text"] == "It is bl", rows
        assert json.loads(rows[0]["gen_params"]) == {"temperature": 0.0, "stopped": True, "cut_short": "shutdown"}

        session2, q2 = _question(store)
        b = answers.begin(session2, q2, {}, ServedBy("base"))
        done = answers.finish(b, "Blue.", ServedBy("base"), stopped=False)
        assert answers.drain(wait=0.0) == 0 and answers.count() == 0
        assert store.get_message(session2, done.id).gen_params["stopped"] is False
    finally:
        store.close()

