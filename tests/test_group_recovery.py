"""The group policy through crashes and change (`llaca.worker.policy`): a SIGKILL mid-promotion, a version
promoted by another worker meanwhile, and a data dir that served a single adapter."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import pytest

from feedback_store import FeedbackStore
from llaca.config.methods import GROUPS
from llaca.groups.system import RoutedSystem, is_routed_system
from tests.conftest import TINY
from tests.worker_helpers import teach, tiny_worker


@pytest.mark.slow
@pytest.mark.parametrize("point", ["after-register"])  # a registered candidate to finish; a folder without a row: test_worker.py
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
    one, other = tiny_worker(store, tmp_path, learn_method=GROUPS), tiny_worker(store, tmp_path, learn_method=GROUPS)
    assert one.run_once() and store.current_adapter().version == "v1"  # g1: positions
    train = one.train

    def train_then_the_other_worker_promotes(*a, **k):
        result = train(*a, **k)
        assert other.run_once()  # meanwhile: the second position buffer, g1 retrained -> v2
        return result

    one.train = train_then_the_other_worker_promotes
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


@pytest.mark.slow
def test_a_data_dir_serving_a_single_adapter_keeps_it_and_learns_on_as_groups(tmp_path):
    """A version made by an earlier release's single-adapter worker (a plain peft folder) stays
    served until the worker, which learns as groups, promotes its first routed version."""
    from peft import LoraConfig, get_peft_model

    from llaca.learn.tuner import LM_TARGETS
    from llaca.model.llava import load_model
    from llaca.serve.assistant import Assistant, ServedVersion

    single = tmp_path / "adapters" / "v1"
    lm = load_model(TINY, device="cpu")
    get_peft_model(lm.model, LoraConfig(r=4, target_modules=LM_TARGETS)).save_pretrained(single)
    store = FeedbackStore(tmp_path)
    store.register_adapter("v1", None, single, "llaca", {}, {})
    store.promote_adapter("v1")
    assert not is_routed_system(single)
    current = store.current_adapter()
    assistant = Assistant(load_model(TINY, device="cpu"), lambda: ServedVersion(current.version, Path(current.path)))
    assert assistant.version == "v1"  # the single adapter serves
    _, buffer_id = teach(store, "position", 12, seed=21)
    worker = tiny_worker(store, tmp_path, learn_method=GROUPS, guard_margin=100)
    assert worker.run_once()
    buf = store.get_buffer(buffer_id)
    assert buf.status == "promoted", buf.reason
    now = store.current_adapter()
    assert now.version == "v2" and is_routed_system(now.path) and now.parent_version == "v1"
    assert list(RoutedSystem.load(now.path).adapters) == ["g1"]  # groups start from the base model
    assert (single / "adapter_config.json").exists()  # v1 stays on disk for rollback
