"""Online learning with instruction groups: the gate, the paired guard, the routed system on
disk, each correction's outcome, and the worker and the assistant on the real tiny model."""

from __future__ import annotations

import os
import signal
import threading
import time
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
from llaca.model.locks import AdapterGate
from llaca.worker.adapter_files import publish, staging_dir
from llaca.worker.guard import (
    EARLIER,
    NEW,
    PROBE,
    TAUGHT,
    PairedSet,
    decide_paired,
    worse_p_value,
)
from llaca.worker.loop import LearningWorker, WorkerConfig
from llaca.world.heldout import heldout
from tests.conftest import TINY
from tests.worker_helpers import teach

# -- the gate ------------------------------------------------------------------------------


def test_gate_lets_one_adapter_share_and_makes_another_wait():
    gate, active, log = AdapterGate(), [], []
    activate = active.append
    inside = threading.Event()
    release = threading.Event()

    def hold(mode):
        with gate.use(mode, activate):
            log.append(("in", mode, tuple(active)))
            inside.set()
            release.wait(5)
        log.append(("out", mode))

    a1 = threading.Thread(target=hold, args=("g1",))
    a1.start()
    inside.wait(5)
    with gate.use("g1", activate):  # the same adapter: no wait, no switch
        assert gate.holders == 2 and active == ["g1"]
    b = threading.Thread(target=hold, args=("g2",))
    b.start()
    time.sleep(0.2)
    assert active == ["g1"] and ("in", "g2", ("g1",)) not in log  # g2 waits for g1's generation
    late = []

    def late_g1():
        with gate.use("g1", activate):
            late.append(tuple(active))

    c = threading.Thread(target=late_g1)
    c.start()
    time.sleep(0.2)
    assert late == []  # first come, first served: a later g1 waits behind the waiting g2
    release.set()
    for t in (a1, b, c):
        t.join(5)
    assert late == [("g1", "g2", "g1")] and gate.switches == 3 and gate.holders == 0


def test_gate_stays_usable_when_a_switch_fails():
    gate = AdapterGate()

    def broken(mode):
        raise RuntimeError("no such adapter")

    with pytest.raises(RuntimeError):
        with gate.use("g9", broken):
            pass
    with gate.use("g1", lambda m: None):
        assert gate.holders == 1


# -- the paired guard -----------------------------------------------------------------------


def test_worse_p_value_is_the_exact_one_sided_mcnemar_test():
    assert worse_p_value(0, 5) == 1.0
    assert worse_p_value(1, 0) == 0.5
    assert worse_p_value(3, 0) == pytest.approx(0.125)
    assert worse_p_value(10, 10) > 0.5
    assert worse_p_value(52, 0) < 1e-9


def _set(name, kind, cand, cur):
    return PairedSet(name, kind, [bool(x) for x in cand], [bool(x) for x in cur])


def test_paired_guard_refuses_a_significant_loss_and_ignores_noise():
    probes_kept = _set("color", PROBE, [1] * 60, [1] * 60)
    poisoned = _set("color", PROBE, [1] * 8 + [0] * 52, [1] * 60)  # "every colour is blue"
    taught = _set("taught", TAUGHT, [1] * 20, [0] * 20)
    noise = _set("group g1", EARLIER, [1, 0], [1, 1])  # one item of two: 50 points, p = 0.5
    ok = decide_paired([taught, noise, probes_kept], margin=5.0)
    assert ok.passed and ok.p_values["group g1"] == 0.5, ok.reason
    bad = decide_paired([taught, poisoned], margin=5.0)
    assert not bad.passed and "base probe color fell 100% -> 13%" in bad.reason and bad.p_values["color"] < 1e-9
    small_but_significant = _set("shape", PROBE, [1] * 97 + [0] * 3, [1] * 100)  # 3 lost, p = 0.125 anyway
    assert decide_paired([taught, small_but_significant], margin=2.0).passed


def test_paired_guard_needs_the_taught_corrections_fitted_not_an_improvement():
    already_right = _set("group g1", NEW, [1] * 10, [1] * 10)  # the served system answers them: fine
    fitted = _set("taught", TAUGHT, [1] * 9 + [0], [1] * 10)
    assert decide_paired([fitted, already_right], margin=5.0).passed
    unfitted = _set("taught", TAUGHT, [1] * 3 + [0] * 7, [0] * 10)
    report = decide_paired([unfitted, already_right], margin=5.0)
    assert not report.passed and "did not fit what it was taught" in report.reason
    with pytest.raises(ValueError):
        decide_paired([_set("x", NEW, [1, 1], [1])], margin=5.0)


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


def _worker(store, tmp_path, **settings) -> LearningWorker:
    from llaca.model.llava import load_model

    lm = load_model(TINY, device="cpu")
    cfg = WorkerConfig(Settings(data_dir=tmp_path, learn_method=GROUPS, **settings), probe_n=40)
    return LearningWorker(cfg, store, lm=lm)


@pytest.mark.slow
def test_groups_learn_each_family_in_its_own_adapter_and_route_questions(tmp_path):
    from llaca.model.llava import GenerationParams, load_model
    from llaca.serve.assistant import BASE, Assistant, ServedVersion

    store = FeedbackStore(tmp_path)
    _, b1 = teach(store, "position", 24, seed=5)
    _, b2 = teach(store, "letter", 24, seed=6)
    worker = _worker(store, tmp_path)
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
    assert _worker(store, tmp_path).run_once()
    [refused] = store.list_adapters()
    assert store.get_buffer(poison).status == "rejected" and "base probe color fell" in refused.reason, refused.reason
    _, starved = teach(store, "position", 12, seed=3)
    assert _worker(store, tmp_path, learn_steps=1).run_once()  # one step cannot fit the corrections
    assert store.get_buffer(starved).status == "rejected"
    assert store.current_adapter() is None and store.next_adapter_version() == "v1"
    for item in store.buffer_items(starved):
        state, words = correction_status(item, store.get_buffer(starved))
        assert state == CorrectionState.PENDING and "trained again" in words
    # the same user teaches more positions: the pending ones ride along and are learned now
    _, more = teach(store, "position", 12, seed=4)
    assert _worker(store, tmp_path).run_once()
    assert store.get_buffer(more).status == BufferStatus.PROMOTED, store.get_buffer(more).reason
    learned = [i for i in store.buffer_items(starved) if i.learned_in == "v1"]
    assert len(learned) == len(store.buffer_items(starved))
    assert all(i.learned_in is None for i in store.buffer_items(poison))  # "every colour is blue" never served
    assert [a.status for a in store.list_adapters()].count(AdapterStatus.CURRENT) == 1


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after-publish", "after-register"])
def test_sigkill_mid_promotion_keeps_the_routed_system_consistent(tmp_path, point):
    from tests.test_worker import start_worker, wait_for

    store = FeedbackStore(tmp_path)
    _, buffer_id = teach(store, "position", 12, seed=4)
    proc = start_worker(tmp_path, "--once", "--crash-at", point, "--guard-margin", "100")
    assert proc.wait(180) == -signal.SIGKILL, proc.stderr.read()[-2000:]
    assert store.current_adapter() is None
    assert {i.group_id for i in store.buffer_items(buffer_id)} == {"g1"}  # assigned before training
    wait_for(lambda: store.get_buffer(buffer_id).lease_until < time.time(), 10, "the lease to expire")
    proc = start_worker(tmp_path, "--once", "--guard-margin", "100")
    assert proc.wait(180) == 0, proc.stderr.read()[-2000:]
    assert store.get_buffer(buffer_id).status == "promoted"
    current = store.current_adapter()
    assert len(store.list_adapters()) == 1  # finished, not trained twice
    system = RoutedSystem.load(current.path)
    assert list(system.adapters) == ["g1"]
    assert all(i.learned_in or i.pending_reason for i in store.buffer_items(buffer_id))


@pytest.mark.slow
def test_a_version_promoted_by_another_worker_meanwhile_is_built_on_not_lost(tmp_path):
    from llaca.worker.policy import GroupChangedMeanwhile

    store = FeedbackStore(tmp_path)
    _, first = teach(store, "position", 8, seed=21)
    _, letters = teach(store, "letter", 8, seed=22)
    _, more = teach(store, "position", 8, seed=23)
    one, other = _worker(store, tmp_path), _worker(store, tmp_path)
    assert one.run_once() and store.current_adapter().version == "v1"  # g1: positions
    train = one._train

    def train_then_the_other_worker_promotes(*a, **k):
        result = train(*a, **k)
        assert other.run_once()  # meanwhile: the second position buffer, g1 retrained -> v2
        return result

    one._train = train_then_the_other_worker_promotes
    assert one.run_once()  # the letters: g2, built on v2
    assert [store.get_buffer(b).status for b in (first, letters, more)] == ["promoted"] * 3
    v2, v3 = (RoutedSystem.load(store.get_adapter(v).path) for v in ("v2", "v3"))
    assert store.current_adapter().version == "v3" and sorted(v3.adapters) == ["g1", "g2"]
    assert v3.trained_in["g1"] == v2.trained_in["g1"]  # v2's retrained positions were kept

    # the same group retrained meanwhile: this run is abandoned, the buffer goes back to the queue
    _, again = teach(store, "letter", 8, seed=24)
    _, again2 = teach(store, "letter", 8, seed=25)
    with pytest.raises(GroupChangedMeanwhile):
        one.run_once()
    assert store.get_buffer(again).status == "training"  # its lease expires, then it is trained again
    assert not list((tmp_path / "adapters").glob("*.tmp"))
    assert store.current_adapter().version == "v4" and RoutedSystem.load(store.current_adapter().path).trained_in["g2"]
