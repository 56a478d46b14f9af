"""The concept-ceiling diagnostic asks the base question whose true answer matches the continual one."""

from __future__ import annotations

import importlib.util
import re

import pytest

from llaca.world.families import generate
from tests.conftest import ROOT

spec = importlib.util.spec_from_file_location("concept_ceiling", ROOT / "benchmarks" / "concept_ceiling.py")
cc = importlib.util.module_from_spec(spec)
spec.loader.exec_module(cc)


@pytest.mark.parametrize("family", cc.FAMILIES)
def test_each_probe_has_the_continual_answer_as_its_truth(family):
    for item in generate(family, 40, seed=3, size=(48, 128)):
        qas = cc.probes(family, item)
        answer = item.turns[0][1]
        yes = [cc._yes(ref) for _, ref in qas]
        if family == "exists":
            assert yes == [answer == "yes"]
        elif family == "unanswerable":
            assert yes == [answer != "unanswerable"]
        elif family == "choice":
            options = dict(re.findall(r"^([ABC])\. (\w+)$", item.turns[0][0], flags=re.M))
            assert len(qas) == 1 and qas[0][1].startswith(f"Yes, there is a {options[answer]} ")
        elif family == "count":
            assert qas[0][1].split()[2] == answer  # "There are 3 objects."
        elif family in ("position", "letter"):
            assert answer in qas[0][1] or answer.lower() in qas[0][1].lower()
        else:
            assert qas[0][1].startswith("left ")


def test_a_right_yes_or_no_is_scored_right_and_a_wrong_one_wrong():
    assert cc.right("exists", "Yes, there is a red star at the top left.", "Yes, there is a red star at the bottom left.")
    assert not cc.right("exists", "No, there is no red star.", "Yes, there is a red star at the top left.")
    assert cc.right("count", "There are 3 objects.", "There are 3 objects.")
    assert not cc.right("count", "There are 4 objects.", "There are 3 objects.")
    # choice: the asked shape's colour, wherever the answer puts it
    ref = "Yes, there is a red star at the top left."
    assert cc.right("choice", "Yes, there is a red star at the bottom right.", ref)
    assert not cc.right("choice", "Yes, there is a blue star at the top left.", ref)
    assert not cc.right("choice", "No, there is no star.", ref)
