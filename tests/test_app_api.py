"""End to end through the named API: the real app (``python app.py``) on 127.0.0.1 and a free
port, a temporary data dir, the embedded tiny model, and ``gradio_client``.

One ``Client`` is one session: it asks about a synthetic image and gets the right answer,
rates it, corrects another answer, and the correction is in the store; two clients at once
stay isolated; bad input gets a real reason and the app keeps serving.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from tests.conftest import TINY

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = Path(os.environ.get("LLACA_TEST_MODEL", TINY))
COLOR_Q = "What color is the shape?"
SHAPE_Q = "What shape is this?"


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    from app.server import AppServer

    if not (MODEL / "config.json").exists():
        pytest.fail(f"the embedded model is missing at {MODEL}")
    root = tmp_path_factory.mktemp("app-api")
    with AppServer(MODEL, root / "data", args=["--buffer-size", "3"], log_path=root / "app.log") as srv:
        yield srv


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """Synthetic one-shape images with their true colour and shape, as PNG files."""
    from llaca.world.families import generate

    folder = tmp_path_factory.mktemp("images")
    out = []
    for k, item in enumerate(generate("color", 6, seed=2024, size=96)):
        path = folder / f"color{k}.png"
        item.image.save(path)
        obj = item.scene.objects[0]
        out.append((path, obj.color, obj.name))
    return out


def client_for(server):
    from gradio_client import Client

    return Client(server.url, verbose=False)


def ask(client, image, question):
    from gradio_client import handle_file

    return client.predict(handle_file(str(image)) if image else None, question, 0.0, 0.7, 32, api_name="/ask")


def open_store(server):
    from feedback_store import FeedbackStore

    return FeedbackStore(server.data_dir)


def test_ask_rate_correct_and_find_it_in_the_store(server, images):
    path, color, shape = images[0]
    client = client_for(server)
    answer, message_id, version = ask(client, path, COLOR_Q)
    assert answer == color, (answer, color)
    assert message_id and version == "base"
    assert client.predict(message_id, "like", api_name="/rate") == f"like recorded on {message_id}"

    # follow-ups about the same image (no new image): the model still sees it
    other, other_id, _ = ask(client, None, SHAPE_Q)
    again, again_id, _ = ask(client, None, COLOR_Q)
    assert again == color and len({message_id, other_id, again_id}) == 3
    # correct another answer (the shape one): it goes into this session's buffer
    fix = shape if other != shape else f"a {shape}"
    client.predict(other_id, "dislike", api_name="/rate")
    buffer_id, size, status = client.predict(other_id, fix, api_name="/correct")
    assert (size, status) == (1, "open")

    status_json = client.predict(api_name="/status")
    assert status_json["adapter_version"] == "base" and status_json["current_adapter"] == "base"
    [buf] = status_json["buffers"]
    assert buf["id"] == buffer_id and buf["items"][0]["message_id"] == other_id

    store = open_store(server)
    try:
        session = status_json["session_id"]
        history = store.session_history(session)
        assert [m.role for m in history] == ["user", "assistant"] * 3
        assert history[1].id == message_id and history[1].text == color and history[1].adapter_version is None
        assert history[1].gen_params["temperature"] == 0.0
        [item] = store.session_buffers(session)[0].items
        assert (item.message_id, item.question, item.answer) == (other_id, SHAPE_Q, fix)
        assert item.image_sha256 == history[0].image_sha256  # the follow-up keeps the conversation's image
        kinds = [(f.message_id, f.kind) for f in store.session_feedback(session)]
        assert kinds == [(message_id, "like"), (other_id, "dislike"), (other_id, "correction")]
        [correction] = [f for f in store.session_feedback(session) if f.kind == "correction"]
        assert (correction.corrected_text, correction.previous_text) == (fix, other)
    finally:
        store.close()

    teach = client.predict(api_name="/teach")
    assert teach == {"buffer_id": buffer_id, "size": 1, "status": "ready", "message": f"buffer {buffer_id} is queued"}
    again = client.predict(api_name="/teach")  # nothing left to queue: a status, not an error
    assert again["buffer_id"] is None and again["status"] == "nothing to queue" and "already queued" in again["message"]
    [buf] = client.predict(api_name="/status")["buffers"]
    assert buf["status"] == "ready" and [(i["status"], i["status_text"]) for i in buf["items"]] == [
        ("queued", "queued for learning")]


def test_buffer_becomes_ready_at_the_threshold(server, images):
    client = client_for(server)
    states = []
    for path, color, _ in images[1:4]:
        _, mid, _ = ask(client, path, COLOR_Q)
        states.append(client.predict(mid, "not " + color, api_name="/correct"))
    assert [(s[1], s[2]) for s in states] == [(1, "open"), (2, "open"), (3, "ready")]  # --buffer-size 3


def test_two_clients_at_once_are_isolated(server, images):
    from gradio_client.exceptions import AppError

    (path_a, color_a, _), (path_b, color_b, _) = images[4], images[5]
    assert color_a != color_b
    a, b = client_for(server), client_for(server)
    results: dict[str, tuple] = {}

    def run(name, client, path):
        results[name] = ask(client, path, COLOR_Q)

    threads = [threading.Thread(target=run, args=("a", a, path_a)), threading.Thread(target=run, args=("b", b, path_b))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert results["a"][0] == color_a and results["b"][0] == color_b
    # each follow-up is about its own client's image
    assert ask(a, None, COLOR_Q)[0] == color_a
    assert ask(b, None, COLOR_Q)[0] == color_b

    a_id = results["a"][1]
    with pytest.raises(AppError, match="not part of this conversation"):
        b.predict(a_id, "purple", api_name="/correct")
    with pytest.raises(AppError, match="not part of this conversation"):
        b.predict(a_id, "dislike", api_name="/rate")
    fresh = client_for(server)  # a session that never asked cannot touch anything either
    with pytest.raises(AppError, match="No message"):
        fresh.predict(a_id, "purple", api_name="/correct")
    a.predict(a_id, "purple", api_name="/correct")
    sa, sb = a.predict(api_name="/status"), b.predict(api_name="/status")
    assert sa["session_id"] != sb["session_id"]
    assert [i["message_id"] for buf in sa["buffers"] for i in buf["items"]] == [a_id]
    assert sb["buffers"] == []


def test_errors_say_what_went_wrong_and_the_app_keeps_serving(server, images, tmp_path):
    from gradio_client.exceptions import AppError

    client = client_for(server)
    bad = tmp_path / "photo.png"
    bad.write_bytes(b"this is not a PNG")
    with pytest.raises(AppError, match="not an image"):
        ask(client, bad, COLOR_Q)
    with pytest.raises(AppError, match="No image: pass one with the first question"):
        ask(client, None, COLOR_Q)
    path, color, _ = images[0]
    long_question = "what color is the shape " * 120
    with pytest.raises(AppError, match="too long"):
        ask(client, path, long_question)
    with pytest.raises(AppError, match="rating must be"):
        client.predict("x", "meh", api_name="/rate")
    # an endpoint without components gets the client's data as sent: a server path is never read
    with pytest.raises(AppError, match="must be uploaded with the request"):
        client.predict({"path": str(path)}, COLOR_Q, api_name="/ask")
    # still serving, and nothing was lost: the too-long question is in the store
    answer, mid, _ = ask(client, path, COLOR_Q)
    assert answer == color
    with pytest.raises(AppError, match="same as the original answer"):
        client.predict(mid, color, api_name="/correct")
    store = open_store(server)
    try:
        texts = [m.text for m in store.session_history(client.predict(api_name="/status")["session_id"])]
    finally:
        store.close()
    assert long_question.strip() in texts and COLOR_Q in texts
