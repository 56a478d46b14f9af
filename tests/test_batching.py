"""Answers batched across users and groups: identical to unbatched ones at temperature 0,
per-request stop and sampling, the bounded set of resident adapters, swaps while answering."""

from __future__ import annotations

import threading
import time

import pytest

from llaca.bench.random_adapters import FAMILIES, routed_system
from llaca.model.llava import GenerationParams, load_model
from llaca.model.shared import SharedModel
from llaca.serve.assistant import BASE, Assistant, ServedVersion
from llaca.serve.batched_assistant import BatchedAssistant
from llaca.world.heldout import heldout
from tests.conftest import TINY

GREEDY = GenerationParams(temperature=0.0, max_new_tokens=24)


@pytest.fixture(scope="module")
def routed(tmp_path_factory):
    lm = load_model(TINY, device="cpu")
    root = tmp_path_factory.mktemp("routed")
    path, groups = routed_system(lm.model, root)
    samples = [s for k, f in enumerate(FAMILIES) for s in heldout(f, 3, seed=900 + k)]
    samples += heldout("exists", 2, seed=950)  # routes to no group: the base model answers
    unbatched = Assistant(lm, lambda: ServedVersion("v1", path), poll_seconds=0.0)
    expected = [list(unbatched.stream([(s.question, None)], s.image, GREEDY))[-1] for s in samples]
    return path, groups, samples, expected


def ask_all(assistant, samples, params=GREEDY, stagger: float = 0.0):
    """Every sample asked from its own thread at once (or `stagger` s apart); the final answers."""
    out = [None] * len(samples)

    def ask(i):
        out[i] = list(assistant.stream([(samples[i].question, None)], samples[i].image, params))[-1]

    threads = [threading.Thread(target=ask, args=(i,)) for i in range(len(samples))]
    for t in threads:
        t.start()
        time.sleep(stagger)
    for t in threads:
        t.join(60)
    return out


def batched(path, max_batch=8, max_adapters=8):
    shared = SharedModel(load_model(TINY, device="cpu"), max_adapters=max_adapters)
    return BatchedAssistant(shared, lambda: ServedVersion("v1", path), poll_seconds=0.0, max_batch=max_batch)


def test_batched_answers_equal_unbatched_across_groups(routed):
    path, groups, samples, expected = routed
    assert len({served.group for _, served in expected}) == len(FAMILIES) + 1  # four groups and the base model
    assert len({text for text, _ in expected}) > len(FAMILIES)  # the adapters answer differently
    assistant = batched(path)
    for stagger in (0.0, 0.01):  # all at once, then joining a running batch at step boundaries
        got = ask_all(assistant, samples, stagger=stagger)
        assert [t for t, _ in got] == [t for t, _ in expected]
        assert [s for _, s in got] == [s for _, s in expected]
    assert assistant.batcher.row_steps > 2 * assistant.batcher.steps  # rows really shared steps
    alone = [list(assistant.stream([(s.question, None)], s.image, GREEDY))[-1][0] for s in samples[:4]]
    assert alone == [t for t, _ in expected[:4]]


def test_resident_adapters_stay_within_the_bound_and_reload(routed):
    path, groups, samples, expected = routed
    assistant = batched(path, max_batch=8, max_adapters=2)
    shared = assistant.shared
    seen = []
    watching = threading.Event()

    def watch():
        while not watching.is_set():
            seen.append(len(shared.resident()))
            time.sleep(0.002)

    w = threading.Thread(target=watch)
    w.start()
    got = ask_all(assistant, samples)
    watching.set()
    w.join()
    assert [t for t, _ in got] == [t for t, _ in expected]
    assert max(seen) <= 2 and len(shared.resident()) <= 2
    assert shared.loads >= len(FAMILIES) and shared.evictions >= len(FAMILIES) - 2
    model = shared.model
    assert len([n for n in model.peft_config]) <= 2  # peft holds no more than the bound either


def test_stop_and_sampling_are_per_request(routed):
    path, groups, samples, expected = routed
    assistant = batched(path)
    long = GenerationParams(temperature=0.0, max_new_tokens=200)
    stop = threading.Event()
    stopped = []

    def stopped_reader():
        for text, _ in assistant.stream([(samples[6].question, None)], samples[6].image, long, stop):
            stopped.append(text)
            if len(stopped) == 2:
                stop.set()

    sampled = GenerationParams(temperature=1.0, top_p=0.9, max_new_tokens=24)
    others = []
    t = threading.Thread(target=stopped_reader)
    t.start()
    s = threading.Thread(target=lambda: others.append(ask_all(assistant, samples[:3], sampled)))
    s.start()
    got = ask_all(assistant, samples)
    t.join(30)
    s.join(30)
    assert [x for x, _ in got] == [x for x, _ in expected]  # greedy rows beside sampled and stopped ones
    assert 2 <= len(stopped) <= 3 and len(stopped[-1]) < len(expected[6][0]) + 200
    assert all(isinstance(x, str) for x, _ in others[0])


def test_a_swap_while_answering_drops_the_old_adapters(routed, tmp_path):
    path, groups, samples, expected = routed
    wanted = {"v": ServedVersion("v1", path)}
    shared = SharedModel(load_model(TINY, device="cpu"), max_adapters=8)
    assistant = BatchedAssistant(shared, lambda: wanted["v"], poll_seconds=0.0)
    long = GenerationParams(temperature=0.0, max_new_tokens=60)
    s = samples[0]
    stream = assistant.stream([(s.question, None)], s.image, long)
    text, served = next(stream)
    assert served.version == "v1" and served.group is not None
    wanted["v"] = ServedVersion(BASE, None)
    assert assistant.refresh(force=True) == BASE  # the swap does not wait for the answer in flight
    assert len(shared.resident()) == 1  # only the pinned adapter of the answer in flight is left
    rest = [t for t, v in stream]
    assert all(v.version == "v1" for v in [served]) and rest[-1] == expected[0][0]
    assert shared.drop_unused(set()) and shared.resident() == []
    base_answer = list(assistant.stream([(s.question, None)], s.image, GREEDY))[-1]
    assert base_answer[1].version == BASE and base_answer[1].group is None
    wanted["v"] = ServedVersion("v1", path)  # back to the routed version: adapters load into an emptied model
    assert assistant.refresh(force=True) == "v1"
    assert list(assistant.stream([(s.question, None)], s.image, GREEDY))[-1] == expected[0]
