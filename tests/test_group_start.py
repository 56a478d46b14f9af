"""Where a new group starts (`llaca.groups.start`) and which group a correction joins
(`llaca.groups.grouping`), on the real tiny model: the weights a new group starts from, and the
weights of the groups it learned from, compared tensor by tensor."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from feedback_store import FeedbackStore
from llaca.config.settings import Settings
from llaca.groups.codebook import InstructionCodebook
from llaca.groups.grouping import (
    answer_kind,
    assign_questions,
    join_decision,
    same_kind,
)
from llaca.groups.start import BASE, SCENE_RATIO, Fit, probe, start_adapter
from llaca.groups.system import RoutedSystem
from llaca.learn.tuner import TuneConfig, tune
from llaca.model.llava import load_model
from llaca.worker.loop import LearningWorker, WorkerConfig
from llaca.world.heldout import heldout
from tests.conftest import TINY
from tests.worker_helpers import teach

WEIGHTS = "adapter_model.safetensors"


def tensors(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(Path(folder) / WEIGHTS))


def digest(folder: Path) -> str:
    return hashlib.sha256((Path(folder) / WEIGHTS).read_bytes()).hexdigest()


# -- the rule, on given probe results ----------------------------------------------------------


def test_answer_kinds_mask_numbers_and_keep_closed_answers():
    assert answer_kind("[0.06, 0.23, 0.30, 0.46]") == answer_kind("[0.5, 0.1, 0.9, 0.7]") == "# # # #"
    assert answer_kind("3") == answer_kind("5") == "#"
    assert answer_kind("Top left.") == "top left"
    quadrants = ["top left", "top right", "bottom left", "bottom right"] * 3
    assert same_kind(["top left", "bottom right"], quadrants)
    assert not same_kind(["yes", "no"], quadrants)
    # a group taught 26 letters is not of the kind of a question answered A, B or C
    letters = [chr(ord("A") + k) for k in range(26)]
    assert not same_kind(["A", "B", "C", "A"], letters)
    assert not same_kind(["top left"], [])


def test_join_decision_needs_right_answers_or_the_groups_kind_and_the_lowest_loss():
    fits = {BASE: Fit(0.0, 4.0), "g1": Fit(0.75, 0.3), "g2": Fit(0.1, 2.0)}
    assert join_decision(fits) == "g1"  # already answers most right
    assert join_decision({BASE: Fit(0.5, 1.0), "g1": Fit(0.7, 0.8)}) is None  # not enough better than base
    young = {BASE: Fit(0.0, 4.0), "g1": Fit(0.0, 2.1), "g2": Fit(0.0, 1.5)}
    taught = {"g1": ["top left", "bottom right", "top right", "bottom left"] * 2, "g2": ["3", "4"] * 4}
    assert join_decision(young) is None
    assert join_decision(young, ["top right", "top left"], taught.get) == "g1"  # g2 is closer, not of the kind
    assert join_decision(young, ["3", "4", "4"], taught.get) == "g2"
    assert join_decision({BASE: Fit(0.0, 1.0), "g1": Fit(0.0, 2.1)}, ["top left"], taught.get) is None  # worse than base


def test_assign_questions_stores_each_wording_where_it_goes():
    book = InstructionCodebook()
    g1 = book.add(["Where is the shape? Answer with top left, top right, bottom left or bottom right."])
    fits = {BASE: Fit(0.0, 4.0), g1: Fit(0.0, 2.0)}
    samples = {"Where is the shape?": heldout("position", 4, seed=1), "How many shapes are there?": heldout("count", 4, seed=2)}
    samples["Where is the shape?"] = [replace(s, turns=[("Where is the shape?", s.answer)]) for s in samples["Where is the shape?"]]
    quadrants = ["top left", "top right", "bottom left", "bottom right"] * 2
    decisions = assign_questions(book, ["Where is the shape?", "How many shapes are there?", "Where is the shape?"],
                                 samples.get, lambda _: fits, {g1: quadrants}.get)
    assert (decisions["Where is the shape?"].group, decisions["Where is the shape?"].by) == (g1, "answers")
    assert decisions["How many shapes are there?"].by == "new"
    assert book.route("Where is the shape?") == g1  # asked so again, it routes to the group
    assert book.instructions(g1)["Where is the shape?"] == 2
    assert book.route("How many shapes are there?") == decisions["How many shapes are there?"].group != g1


# -- the starts, on the tiny model -------------------------------------------------------------


@pytest.fixture(scope="module")
def trained(tiny, tmp_path_factory):
    """Group adapters: position and count (trained until they answer in their format), letter (a few steps)."""
    root = tmp_path_factory.mktemp("groups")
    cfg = TuneConfig(method="seq", steps=40, batch_size=8, lr=1e-3, seed=0)
    tune(tiny.model, tiny.processor, heldout("position", 64, seed=1), cfg, out_dir=root / "position")
    tune(tiny.model, tiny.processor, heldout("count", 32, seed=2), replace(cfg, steps=30), out_dir=root / "count")
    tune(tiny.model, tiny.processor, heldout("letter", 16, seed=3), replace(cfg, steps=5), out_dir=root / "letter")
    return {"g1": root / "position", "g2": root / "count", "g3": root / "letter"}


def test_probe_start_copies_the_adapter_that_answers_and_its_source_is_not_written(tiny, trained, tmp_path):
    samples = heldout("position", 16, seed=3)
    fits = probe(tiny.model, tiny.processor, trained, samples)
    assert fits["g1"].accuracy >= 0.5 > fits[BASE].accuracy and fits["g1"].loss < fits["g2"].loss
    before = {g: digest(p) for g, p in trained.items()}
    start = start_adapter("probe", tiny.model, tiny.processor, trained, samples, fits=fits)
    assert (start.adapter, start.source) == (trained["g1"], "g1")
    # the new group's first weights are the source's, tensor for tensor: one step at lr 0
    tune(tiny.model, tiny.processor, samples, TuneConfig(method="seq", steps=1, batch_size=4, lr=0.0),
         init_adapter=start.adapter, out_dir=tmp_path / "new")
    source, new = tensors(trained["g1"]), tensors(tmp_path / "new")
    assert source.keys() == new.keys() and all(torch.equal(source[k], new[k]) for k in source)
    # and a real run from it trains the copy, never the source
    tune(tiny.model, tiny.processor, samples, TuneConfig(method="seq", steps=3, batch_size=4, lr=1e-3),
         init_adapter=start.adapter, out_dir=tmp_path / "trained")
    assert any(not torch.equal(source[k], v) for k, v in tensors(tmp_path / "trained").items())
    assert {g: digest(p) for g, p in trained.items()} == before
    # a kind of question no adapter answers starts fresh
    fresh = start_adapter("probe", tiny.model, tiny.processor, trained, heldout("box", 8, seed=4))
    assert fresh.adapter is None and fresh.record()["start"] == "probe"


def test_scene_start_copies_the_clearly_nearest_group_unless_the_base_model_knows_more(tiny, trained):
    taught = {"g1": heldout("position", 16, seed=1), "g2": heldout("count", 16, seed=2),
              "g3": heldout("letter", 16, seed=3)}
    count_and_letter = {g: trained[g] for g in ("g2", "g3")}
    # a choice between options about several scattered shapes: count's scenes, and the base
    # model says none of the answers: count's adapter is the one to build on
    near = start_adapter("scene", tiny.model, tiny.processor, count_and_letter, heldout("choice", 16, seed=8),
                         group_samples=taught)
    assert (near.adapter, near.source) == (trained["g2"], "g2"), near.evidence
    assert near.evidence["g2 distance"] <= SCENE_RATIO * near.evidence["g3 distance"]
    # one shape in a corner is clearly nearest count's scenes too, but the base model already
    # says where it is ("... top left ..."), which a copy of count's adapter would overwrite
    known = start_adapter("scene", tiny.model, tiny.processor, count_and_letter, heldout("position", 16, seed=9),
                          group_samples=taught)
    assert known.adapter is None and known.evidence["base says"] > known.evidence["g2 says"], known.evidence
    # a letter is like neither position's nor count's scenes: no clear nearest group, fresh
    far = start_adapter("scene", tiny.model, tiny.processor, {g: trained[g] for g in ("g1", "g2")},
                        heldout("letter", 16, seed=10), group_samples=taught)
    assert far.adapter is None and "base says" not in far.evidence
    # with one group there is no runner-up to be clearly nearer than: fresh
    alone = start_adapter("scene", tiny.model, tiny.processor, {"g2": trained["g2"]}, heldout("choice", 16, seed=8),
                          group_samples=taught)
    assert alone.adapter is None


def test_subspace_start_keeps_the_down_projections_and_zeroes_the_up_projections(tiny, trained, tmp_path):
    start = start_adapter("subspace", tiny.model, tiny.processor, trained, heldout("position", 8, seed=5),
                          scratch=tmp_path)
    assert start.source == "g1"
    source, copy = tensors(trained["g1"]), tensors(start.adapter)
    a_keys = [k for k in source if ".lora_A." in k]
    b_keys = [k for k in source if ".lora_B." in k]
    assert a_keys and b_keys and len(a_keys) + len(b_keys) == len(source)
    assert all(torch.equal(copy[k], source[k]) for k in a_keys)
    assert all(not copy[k].any() for k in b_keys) and all(source[k].any() for k in b_keys)


def test_merged_start_combines_every_group_into_one_adapter_of_the_same_rank(tiny, trained, tmp_path):
    start = start_adapter("merged", tiny.model, tiny.processor, trained, [], scratch=tmp_path)
    merged, source = tensors(start.adapter), tensors(trained["g1"])
    assert {k: v.shape for k, v in merged.items()} == {k: v.shape for k, v in source.items()}
    assert start_adapter("fresh", tiny.model, tiny.processor, trained, []).adapter is None


# -- through the worker ------------------------------------------------------------------------


@pytest.mark.slow
def test_a_new_wording_joins_its_group_and_the_other_groups_stay_bit_identical(tmp_path):
    """Position taught in its own words, then count, then position asked another way: the new
    wording joins the position group (its answers are that group's kind), it routes there when
    asked, and the count group's weights in the new version are the old ones, byte for byte."""
    store = FeedbackStore(tmp_path)
    worker = LearningWorker(WorkerConfig(Settings(data_dir=tmp_path, learn_method="llaca+groups+probe"),
                                         probe_n=20), store, lm=load_model(TINY, device="cpu"))  # its own: it trains
    teach(store, "position", 16, seed=5)
    assert worker.run_once()
    teach(store, "count", 8, seed=6)
    assert worker.run_once()
    before = RoutedSystem.load(store.current_adapter().path)
    assert sorted(before.adapters) == ["g1", "g2"]
    short = "Where is the shape?"
    teach(store, "position", 8, seed=7, question=short)
    assert worker.run_once()
    after = store.current_adapter()
    system = RoutedSystem.load(after.path)
    assert after.metrics["group"] == "g1" and sorted(system.adapters) == ["g1", "g2"], after.metrics
    assert system.route(short) == "g1"
    assert digest(system.adapters["g2"]) == digest(before.adapters["g2"])
    assert digest(system.adapters["g1"]) != digest(before.adapters["g1"])
    store.close()
