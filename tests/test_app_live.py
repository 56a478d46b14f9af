"""The app launched in-process (``demo.launch(prevent_thread_lock=True)``) on the tiny model:
Stop really stops generation, and promotions/rollbacks in the store reach the next answer.

In-process so the test can slow the model down (Stop needs a long answer to interrupt)
and register adapters; everything else is the real app behind the real HTTP API.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import torch

from tests.conftest import TINY
from tests.worker_helpers import metrics_record

pytestmark = [pytest.mark.e2e, pytest.mark.slow]

MODEL = Path(os.environ.get("LLACA_TEST_MODEL", TINY))
COLOR_Q = "What color is the shape?"


@pytest.fixture(scope="module")
def live(tmp_path_factory):
    from app import build_app, create_services, launch_kwargs
    from app.server import free_port
    from llaca.config.settings import Settings
    from llaca.model.llava import load_model

    torch.set_num_threads(1)
    lm = load_model(MODEL, device="cpu")  # its own copy: adapters get attached to it
    settings = Settings(model=str(MODEL), data_dir=tmp_path_factory.mktemp("live") / "data", device="cpu",
                        port=free_port(), admin_password="pw", worker=False)
    services = create_services(settings, lm=lm)
    demo = build_app(services)
    demo.queue(default_concurrency_limit=2)
    demo.launch(prevent_thread_lock=True, quiet=True, **launch_kwargs(services))
    try:
        yield services, f"http://127.0.0.1:{settings.port}/"
    finally:
        demo.close()
        services.store.close()


@pytest.fixture(scope="module")
def image(tmp_path_factory):
    from llaca.world.families import generate

    it = generate("color", 1, seed=5, size=96)[0]
    path = tmp_path_factory.mktemp("img") / "shape.png"
    it.image.save(path)
    return path, it.scene.objects[0].color


def test_stop_really_stops_generation(live, image, monkeypatch):
    from gradio_client import Client, handle_file

    services, url = live
    batcher = services.assistant.batcher
    steps = batcher.row_steps
    original = batcher._step

    def slow_step():  # about 50 tokens/s
        time.sleep(0.02)
        original()

    monkeypatch.setattr(batcher, "eos", set())  # no end of sequence: a 300-token answer
    monkeypatch.setattr(batcher, "_step", slow_step)
    client = Client(url, verbose=False)
    job = client.submit(handle_file(str(image[0])), COLOR_Q, 0.0, 0.7, 300, api_name="/ask")
    deadline = time.monotonic() + 30
    while not job.outputs() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert job.outputs(), "no streamed output arrived"
    assert client.predict(api_name="/stop") == 1
    t0 = time.monotonic()
    answer, message_id, version = job.result(timeout=10)
    assert time.monotonic() - t0 < 3
    time.sleep(0.2)
    assert batcher.running == 0 and batcher.row_steps - steps < 300  # the model itself stopped early
    stored = [m for m in services.store.session_history(client.predict(api_name="/status")["session_id"]) if m.id == message_id]
    assert stored[0].gen_params["stopped"] is True and stored[0].text == answer
    monkeypatch.undo()
    assert client.predict(None, COLOR_Q, 0.0, 0.7, 16, api_name="/ask")[0] == image[1]  # still serving


def make_adapter(path: Path) -> None:
    """A real (untrained) LoRA adapter for the tiny model, in peft's folder format."""
    from peft import LoraConfig, get_peft_model
    from transformers import LlavaForConditionalGeneration

    from llaca.learn.tuner import LM_TARGETS

    base = LlavaForConditionalGeneration.from_pretrained(MODEL)
    get_peft_model(base, LoraConfig(r=4, lora_alpha=8, target_modules=LM_TARGETS)).save_pretrained(path)


def test_promotion_and_rollback_reach_the_next_answer(live, image):
    from gradio_client import Client, handle_file

    from app.dashboard import BASE_CHOICE, Dashboard

    services, url = live
    store = services.store
    make_adapter(store.data_dir / "adapters" / "v1")
    store.register_adapter("v1", None, store.data_dir / "adapters" / "v1", "llaca",
                           metrics=metrics_record(1, ["color", "buffer 1"], [[97.0, 40.0], [95.0, 88.0]], ["base", "v1"]))
    store.promote_adapter("v1")
    time.sleep(1.1)  # the assistant polls the store at most once a second
    client = Client(url, verbose=False)
    answer, message_id, version = client.predict(handle_file(str(image[0])), COLOR_Q, 0.0, 0.7, 16, api_name="/ask")
    assert version == "v1" and answer == image[1]  # an untrained LoRA changes nothing
    session = client.predict(api_name="/status")["session_id"]
    assert store.session_history(session)[-1].adapter_version == "v1"

    panels = Dashboard(services)
    summary, rows, matrix, forgetting, *_ = panels.dashboard()
    assert rows[0][:2] == ["v1", "current"] and matrix is not None and forgetting is not None
    assert rows[0][4:7] == ["91.5", "2.0", "passed"]  # avg of v1's row, worst task's forgetting, guard
    status = client.predict(api_name="/status")["current_metrics"]  # the same record, read by the API
    assert status["row_labels"] == ["base", "v1"] and status["average_accuracy"] == 91.5
    assert status["forgetting"] == {"color": 2.0, "buffer 1": -48.0} and status["guard"]["passed"]
    assert panels.rollback(BASE_CHOICE, "pw")[0].startswith("✅")
    time.sleep(1.1)
    assert client.predict(None, COLOR_Q, 0.0, 0.7, 16, api_name="/ask")[2] == "base"
    assert client.predict(api_name="/status")["adapter_version"] == "base"
