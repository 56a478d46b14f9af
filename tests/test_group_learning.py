"""Online learning with instruction groups (`llaca.worker.policy`): the routed system on disk,
each correction's outcome, and the worker and the assistant on the real tiny model (crashes,
concurrent workers and an old single-adapter data dir: test_group_recovery.py). The guard's
rule is in test_guard.py, the adapter gate in test_locks.py."""

from __future__ import annotations

import os
import threading
from pathlib import Path

import pytest

from feedback_store import (
    MAX_REFUSALS,
    AdapterStatus,
    BufferStatus,
    CorrectionState,
    FeedbackStore,
    UnknownAdapterError,
    correction_status,
)
from llaca.config.methods import GROUPS
from llaca.config.settings import Settings
from llaca.groups.codebook import InstructionCodebook
from llaca.groups.system import RoutedSystem, SystemFormatError, is_routed_system
from llaca.learn.evaluate import is_correct
from llaca.worker.adapter_files import publish, staging_dir
from llaca.world.heldout import heldout
from tests.conftest import TINY
from tests.worker_helpers import teach, tiny_worker

# -- the routed system on disk --------------------------------------------------------------


def _fake_adapter(folder: Path, tag: str) -> Path:
    folder.mkdir(parents=True)
    (folder / "adapter_config.json").write_text('{"tag": "%s"}' % tag)
    (folder / "adapter_model.safetensors").write_bytes(tag.encode())
    return folder


def test_routed_system_round_trips_and_links_unchanged_adapters(tmp_path):
    book = InstructionCodebook()
    g1 = book.add(["Where is the star? Answer with a quadrant."])
    g2 = book.add(["Which letter is written in the image?"])
    a1, a2 = _fake_adapter(tmp_path / "run1", "one"), _fake_adapter(tmp_path / "run2", "two")
    v1 = RoutedSystem(book, {g1: a1}, {g1: "r1"}).write(staging_dir(tmp_path / "adapters", "v1"))
    v1 = publish(v1, tmp_path / "adapters", "v1")
    assert is_routed_system(v1) and not is_routed_system(a1)
    s1 = RoutedSystem.load(v1)
    s2 = s1.replaced(g2, a2, "r2", book)
    v2 = publish(s2.write(staging_dir(tmp_path / "adapters", "v2")), tmp_path / "adapters", "v2")
    loaded = RoutedSystem.load(v2)
    assert loaded.trained_in == {g1: "r1", g2: "r2"} and loaded.adapter_name(g2) == f"{g2}@r2"
    assert os.path.samefile(v2 / g1 / "adapter_model.safetensors", v1 / g1 / "adapter_model.safetensors")  # linked
    assert loaded.route("Where is the circle? Answer with a quadrant.") == g1
    assert loaded.route("Which letter is written in the image?") == g2
    assert loaded.route("What color is the shape?") is None  # no group: the base model
    assert s1.route("Which letter is written in the image?") is None  # g2 has no adapter in v1


def test_an_incomplete_routed_system_is_never_published(tmp_path):
    book = InstructionCodebook()
    g1 = book.add(["Where is the star?"])
    stage = RoutedSystem(book, {g1: _fake_adapter(tmp_path / "run", "x")}, {g1: "r"}).write(
        staging_dir(tmp_path / "adapters", "v1"))
    (stage / g1 / "adapter_model.safetensors").unlink()
    with pytest.raises(SystemFormatError):
        publish(stage, tmp_path / "adapters", "v1")
    assert not (tmp_path / "adapters" / "v1").exists()
    (stage / "system.json").write_text('{"format": "something else"}')
    with pytest.raises(SystemFormatError):
        RoutedSystem.load(stage)


# -- what became of each correction ---------------------------------------------------------


def test_each_correction_has_one_outcome(tmp_path):
    store = FeedbackStore(tmp_path)
    _, buffer_id = teach(store, "position", 4, seed=1)
    items = store.buffer_items(buffer_id)
    assert {correction_status(i, store.get_buffer(buffer_id))[0] for i in items} == {CorrectionState.QUEUED}
    store.set_item_groups(buffer_id, {i.id: "g1" for i in items})
    store.register_adapter("v1", None, tmp_path / "v1", GROUPS)
    store.promote_adapter("v1")
    assert store.mark_learned([items[0].id, items[1].id], "v1") == 2
    assert store.mark_pending([items[0].id, items[2].id], "held out and answered wrong") == 1  # learned stays learned
    assert store.mark_learned([items[0].id], "v1") == 0
    claimed = store.claim_ready_buffer("w", 60)
    store.finish_claim(claimed.id, "w", "promoted", "ok", "v1")
    buf = store.get_buffer(buffer_id)
    states = [correction_status(i, buf) for i in buf.items]
    assert states[0] == (CorrectionState.LEARNED, "learned in v1")
    assert states[2] == (CorrectionState.PENDING, "held out and answered wrong")
    assert [i.group_id for i in buf.items] == ["g1"] * 4
    assert store.learned_share() == (2, 4)
    assert [it.id for it, st in store.group_items("g1")] == [i.id for i in items]
    with pytest.raises(UnknownAdapterError):
        store.mark_learned([items[3].id], "v9")  # no such version: nothing changes
    assert store.learned_share() == (2, 4)
    # a correction the guard keeps refusing is retried MAX_REFUSALS times, then left with its reason
    for k in range(MAX_REFUSALS):
        assert store.mark_pending([items[3].id], f"refused {k}", refused=True) == 1
    item = store.get_buffer(buffer_id).items[3]
    assert item.refusals == MAX_REFUSALS and item.learned_in is None
    state, words = correction_status(item, store.get_buffer(buffer_id))
    assert state == CorrectionState.PENDING and words.startswith("not retried") and "refused 2" in words


# -- the worker and the assistant on the tiny model -----------------------------------------


@pytest.mark.slow
def test_groups_learn_each_family_in_its_own_adapter_and_route_questions(tmp_path):
    from llaca.model.llava import GenerationParams, load_model
    from llaca.serve.assistant import BASE, Assistant, ServedVersion

    store = FeedbackStore(tmp_path)
    _, b1 = teach(store, "position", 24, seed=5)
    _, b2 = teach(store, "letter", 24, seed=6)
    worker = tiny_worker(store, tmp_path, learn_method=GROUPS)
    assert worker.run_once() and worker.run_once()
    bufs = [store.get_buffer(b) for b in (b1, b2)]
    assert [b.status for b in bufs] == ["promoted", "promoted"], [b.reason for b in bufs]
    current = store.current_adapter()
    assert current.version == "v2" and current.method == GROUPS and current.metrics["group"] == "g2"
    system = RoutedSystem.load(current.path)
    assert sorted(system.adapters) == ["g1", "g2"]
    assert current.metrics["tasks"][-2:] == ["group g1", "group g2"]  # the online matrix is by group
    # every correction is learned, or pending with its reason
    items = [i for b in (b1, b2) for i in store.buffer_items(b)]
    assert {i.group_id for i in store.buffer_items(b1)} == {"g1"} and {i.group_id for i in store.buffer_items(b2)} == {"g2"}
    assert all(i.learned_in or i.pending_reason for i in items)
    assert sum(bool(i.learned_in) for i in items) >= 0.9 * len(items)

    lm = load_model(TINY, device="cpu")
    base_lm = load_model(TINY, device="cpu")
    assistant = Assistant(lm, lambda: ServedVersion(current.version, Path(current.path)), poll_seconds=0.0)
    position, letter, color = heldout("position", 6, seed=91), heldout("letter", 6, seed=92), heldout("color", 6, seed=93)
    greedy = GenerationParams(temperature=0.0, max_new_tokens=24)

    def answer(sample):
        text, served = list(assistant.stream([(sample.question, None)], sample.image, greedy))[-1]
        return text.strip(), served

    alone = {}  # (family, i, reference) -> (answer, who answered)
    for family, samples in (("position", position), ("letter", letter), ("color", color)):
        for i, s in enumerate(samples):
            alone[family, i, s.answer] = answer(s)
    assert {served.group for (f, _, _), (_, served) in alone.items() if f == "position"} == {"g1"}
    assert {served.group for (f, _, _), (_, served) in alone.items() if f == "letter"} == {"g2"}
    assert {served.group for (f, _, _), (_, served) in alone.items() if f == "color"} == {None}
    assert all(served.version == "v2" for _, served in alone.values())
    assert sum(is_correct(text, ref) for (f, _, ref), (text, _) in alone.items() if f == "position") >= 5, alone
    # a question routed to no group gets exactly the base model's answer
    base = Assistant(base_lm, lambda: ServedVersion(BASE, None))
    for s in color:
        assert answer(s)[0] == list(base.stream([(s.question, None)], s.image, greedy))[-1][0].strip()

    # concurrent chats on different groups answer exactly as they do alone
    results, errors = {}, []

    def client(samples, family):
        try:
            for _ in range(2):
                for i, s in enumerate(samples):
                    results[family, i, s.answer] = answer(s)
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=client, args=(samples, family))
               for family, samples in (("position", position), ("letter", letter), ("color", color))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    assert not errors and results == alone
    assert assistant._gate.switches > 3  # they really took turns on the one model

    # the dashboard shows the groups of the served version, their adapters and what they learned
    from app.dashboard import HIDDEN_NAME, Dashboard
    from app.services import create_services

    services = create_services(Settings(data_dir=tmp_path, learn_method=GROUPS, admin_password="pw"), lm=lm)
    try:
        *_, groups = Dashboard(services).dashboard()
        learned = {g: sum(1 for i in items if i.group_id == g and i.learned_in) for g in ("g1", "g2")}
        assert [(r[0], r[2], r[3]) for r in groups] == [("g1", "v1", f"{learned['g1']} / 24"),
                                                     ("g2", "v2", f"{learned['g2']} / 24")]
        # a group's name is a user's question: without the admin password nobody sees it
        assert {r[1] for r in groups} == {HIDDEN_NAME}
        *_, named = Dashboard(services).dashboard(None, "pw")
        assert all(r[1] and r[1] != HIDDEN_NAME for r in named) and {r[4] for r in groups} == {"1 author(s)"}
        matrix, v1_groups = Dashboard(services).matrix_for("v1")
        assert [r[0] for r in v1_groups] == ["g1"] and matrix is not None  # v1 knew one group
    finally:
        services.store.close()


@pytest.mark.slow
def test_a_rejected_run_is_trained_again_and_poison_stays_refused(tmp_path):
    store = FeedbackStore(tmp_path)
    _, poison = teach(store, "color", 16, seed=9, answer_for=lambda s: "blue")
    assert tiny_worker(store, tmp_path, learn_method=GROUPS).run_once()
    [refused] = store.list_adapters()
    assert store.get_buffer(poison).status == "rejected" and "base probe color fell" in refused.reason, refused.reason
    _, starved = teach(store, "position", 12, seed=3)
    assert tiny_worker(store, tmp_path, learn_method=GROUPS, learn_steps=1).run_once()  # one step cannot fit the corrections
    assert store.get_buffer(starved).status == "rejected"
    assert store.current_adapter() is None and store.next_adapter_version() == "v1"
    for item in store.buffer_items(starved):
        state, words = correction_status(item, store.get_buffer(starved))
        assert state == CorrectionState.PENDING and "trained again" in words
    # the same user teaches more positions: the pending ones ride along and are learned now
    _, more = teach(store, "position", 12, seed=4)
    assert tiny_worker(store, tmp_path, learn_method=GROUPS).run_once()
    assert store.get_buffer(more).status == BufferStatus.PROMOTED, store.get_buffer(more).reason
    learned = [i for i in store.buffer_items(starved) if i.learned_in == "v1"]
    assert len(learned) == len(store.buffer_items(starved))
    assert all(i.learned_in is None for i in store.buffer_items(poison))  # "every colour is blue" never served
    assert [a.status for a in store.list_adapters()].count(AdapterStatus.CURRENT) == 1
