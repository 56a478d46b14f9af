"""The live assistant: the swap lock, hot swaps between generations, rollback to the base model."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from llaca.learn.tuner import TuneConfig, tune
from llaca.model.llava import GenerationParams, load_model
from llaca.serve.assistant import (
    BASE,
    AdapterLoadError,
    Assistant,
    ServedVersion,
    SwapLock,
)
from llaca.world.heldout import heldout
from tests.conftest import TINY


def test_swap_waits_for_readers_and_blocks_new_ones():
    lock = SwapLock()
    events = []
    reader_in = threading.Event()
    release_reader = threading.Event()

    def reader():
        with lock.shared():
            reader_in.set()
            events.append("read-start")
            release_reader.wait(5)
            events.append("read-end")

    def writer():
        with lock.exclusive():
            events.append("swap")

    def late_reader():
        with lock.shared():
            events.append("late-read")

    r = threading.Thread(target=reader)
    r.start()
    reader_in.wait(5)
    w = threading.Thread(target=writer)
    w.start()
    time.sleep(0.1)
    late = threading.Thread(target=late_reader)
    late.start()
    time.sleep(0.1)
    assert events == ["read-start"]  # the swap waits; the late reader queues behind the swap
    release_reader.set()
    for t in (r, w, late):
        t.join(5)
    assert events == ["read-start", "read-end", "swap", "late-read"]


@pytest.fixture(scope="module")
def adapters(tmp_path_factory):
    lm = load_model(TINY, device="cpu")
    root = tmp_path_factory.mktemp("adapters")
    for name, family in [("v1", "count"), ("v2", "position")]:
        tune(lm.model, lm.processor, heldout(family, 32, seed=1), TuneConfig(method="seq", steps=8, batch_size=8),
             out_dir=root / name)
    return root


def assert_serves(model, adapter_dir: Path, name: str) -> None:
    """Every LoRA tensor in the live model equals the one saved in the adapter folder."""
    on_disk = load_file(str(adapter_dir / "adapter_model.safetensors"))
    live = dict(model.named_parameters())
    assert on_disk
    for key, value in on_disk.items():
        live_key = key.replace(".lora_A.weight", f".lora_A.{name}.weight").replace(".lora_B.weight", f".lora_B.{name}.weight")
        assert torch.equal(live[live_key].detach(), value), key


def test_hot_swap_happens_between_generations(adapters):
    lm = load_model(TINY, device="cpu")
    wanted = {"v": ServedVersion(BASE, None)}
    assistant = Assistant(lm, lambda: wanted["v"], poll_seconds=0.0)
    s = heldout("describe", 1, seed=5)[0]
    base_answer = "".join(t for t, _ in assistant.stream([(s.question, None)], s.image, GenerationParams(temperature=0.0)))[-200:]

    versions_in_flight = []
    started = threading.Event()
    proceed = threading.Event()

    def slow_chat():
        for text, version in assistant.stream([(s.question, None)], s.image, GenerationParams(temperature=0.0, max_new_tokens=40)):
            versions_in_flight.append(version.version)
            started.set()
            proceed.wait(5)

    chat = threading.Thread(target=slow_chat)
    chat.start()
    started.wait(10)
    wanted["v"] = ServedVersion("v1", adapters / "v1")
    swapper = threading.Thread(target=assistant.refresh, kwargs={"force": True})
    swapper.start()
    time.sleep(0.3)
    assert assistant.version == BASE  # the swap is waiting for the generation in flight
    proceed.set()
    chat.join(20)
    swapper.join(20)
    assert set(versions_in_flight) == {BASE}
    assert assistant.version == "v1"
    assert_serves(assistant.model, adapters / "v1", "v1")

    wanted["v"] = ServedVersion("v2", adapters / "v2")
    _, served = next(assistant.stream([(s.question, None)], s.image, GenerationParams(temperature=0.0, max_new_tokens=2)))
    assert served.version == "v2" and served.group is None and list(assistant.model.peft_config) == ["v2"]  # the old adapter was unloaded
    assert_serves(assistant.model, adapters / "v2", "v2")

    wanted["v"] = ServedVersion(BASE, None)  # rollback to the base model: exactly its answers again
    again = "".join(t for t, v in assistant.stream([(s.question, None)], s.image, GenerationParams(temperature=0.0)) if v.version == BASE)[-200:]
    assert assistant.version == BASE and again == base_answer


def test_a_broken_adapter_is_refused_and_serving_goes_on(tmp_path):
    lm = load_model(TINY, device="cpu")
    (tmp_path / "v9").mkdir()
    assistant = Assistant(lm, lambda: ServedVersion("v9", tmp_path / "v9"), poll_seconds=0.0)
    assert assistant.version == BASE  # the missing adapter was not loaded
    with pytest.raises(AdapterLoadError):
        assistant.swap_to(ServedVersion("v9", tmp_path / "v9"))
    s = heldout("color", 1, seed=2)[0]
    text, served = list(assistant.stream([(s.question, None)], s.image, GenerationParams(temperature=0.0)))[-1]
    assert served.version == BASE and text.strip() == s.answer
