"""One copy of the base model per process: the in-app worker trains on the served model.

Training a LoRA on the shared model, while its adapters answer, gives the adapter that
training on a private copy gives; the served adapters and the answers are untouched; the app
process holds the base weights once (distinct storages), where `--max-batch 1` holds two."""

from __future__ import annotations

import threading

import pytest
import torch
from safetensors.torch import load_file

from llaca.bench.random_adapters import routed_system
from llaca.learn.tuner import TuneConfig, tune
from llaca.model.llava import GenerationParams, load_model
from llaca.model.memory import parameter_bytes
from llaca.model.shared import SharedModel
from llaca.serve.assistant import ServedVersion
from llaca.serve.batched_assistant import BatchedAssistant
from llaca.world.heldout import heldout
from tests.conftest import TINY

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=24)


@pytest.mark.slow  # over ~10 s on 2 cores
def test_training_on_the_shared_model_while_it_serves_equals_training_a_private_copy(tmp_path):
    private = load_model(TINY, device="cpu")
    path, groups = routed_system(private.model, tmp_path)
    samples = heldout("count", 6, seed=31)
    expected = [a for a in (list(BatchedAssistant(SharedModel(load_model(TINY, device="cpu")),
                                                  lambda: ServedVersion("v1", path), poll_seconds=0.0)
                                 .stream([(s.question, None)], s.image, GREEDY))[-1][0] for s in samples)]
    train = heldout("color", 8, seed=32)
    cfg = TuneConfig(method="llaca", steps=6, batch_size=4, lr=1e-3, seed=3)
    own = tune(private.model, private.processor, train, cfg, out_dir=tmp_path / "own")

    shared = SharedModel(load_model(TINY, device="cpu"))
    assistant = BatchedAssistant(shared, lambda: ServedVersion("v1", path), poll_seconds=0.0)
    list(assistant.stream([(samples[0].question, None)], samples[0].image, GREEDY))  # a served adapter is resident
    served_before = {n: p.detach().clone() for n, p in shared.model.named_parameters() if "lora_" in n}
    answers, done = [], threading.Event()

    def chat():
        while not done.is_set():
            answers.append([list(assistant.stream([(s.question, None)], s.image, GREEDY))[-1][0] for s in samples])

    t = threading.Thread(target=chat)
    t.start()
    try:
        result = tune(None, shared.lm.processor, train, cfg, out_dir=tmp_path / "shared", shared=shared)
    finally:
        done.set()
        t.join(60)
    assert answers and all(a == expected for a in answers)  # chat during training: the served answers
    a, b = load_file(tmp_path / "own" / "adapter_model.safetensors"), load_file(tmp_path / "shared" / "adapter_model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert own.record["loss_last"] == result.record["loss_last"]
    after = dict(shared.model.named_parameters())
    assert all(torch.equal(after[n], p) for n, p in served_before.items())  # served adapters untouched
    assert "llaca-training" not in shared.model.peft_config
    assert not any(p.requires_grad for p in shared.model.parameters())


def test_the_app_process_holds_the_base_weights_once(tmp_path):
    from app.services import create_services
    from llaca.config.settings import Settings
    from llaca.worker.loop import LearningWorker, WorkerConfig

    for max_batch, copies in ((8, 1), (1, 2)):
        settings = Settings.from_args(["--data-dir", str(tmp_path / str(max_batch)), "--max-batch", str(max_batch)],
                                      env={})
        services = create_services(settings)
        worker = LearningWorker(WorkerConfig(settings), services.store,
                                shared=getattr(services.assistant, "shared", None))
        one = parameter_bytes(services.assistant.lm.model)
        held = parameter_bytes(services.assistant.lm.model, worker.lm.model)
        assert held == copies * one, (max_batch, held, one)
        services.store.close()


def test_judging_on_the_shared_model_answers_as_a_private_copy(tmp_path):
    """The worker's evaluation on the shared model (one adapter for every row of `generate`'s
    batches) gives the answers that applying the adapter to a private copy gives."""
    from llaca.bench.random_adapters import random_adapter
    from llaca.learn.evaluate import adapter_applied, generate_answers
    from llaca.model.shared import adapter_key

    private = load_model(TINY, device="cpu")
    adapter = random_adapter(private.model, tmp_path / "a", seed=5, b_scale=1.0)
    samples = heldout("count", 5, seed=41) + heldout("shape", 4, seed=42)  # batches of 9, then 3
    with adapter_applied(private.model, adapter) as model:
        want = generate_answers(model, private.processor, samples, batch_size=6)
    base = generate_answers(private.model, private.processor, samples, batch_size=6)
    assert want != base  # the adapter changes answers
    shared = SharedModel(load_model(TINY, device="cpu"))
    with shared.answering(adapter_key(adapter), adapter) as model:
        assert generate_answers(model, shared.lm.processor, samples, batch_size=6) == want
    with shared.answering(None, None) as model:  # the base model, with an adapter resident
        assert generate_answers(model, shared.lm.processor, samples, batch_size=6) == base
