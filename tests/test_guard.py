"""The guard's rule (`llaca.worker.guard`): paired, material and significant losses refuse a
candidate; noise does not; what it was taught must be fitted; and which corrections are held out."""

from __future__ import annotations

import pytest

from llaca.worker.guard import (
    EARLIER,
    MIN_ITEMS_TO_HOLD_OUT,
    NEW,
    PROBE,
    TAUGHT,
    PairedSet,
    decide_paired,
    held_out,
    worse_p_value,
)


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


def test_held_out_share_minimum_and_seed():
    ids = list(range(100, 110))
    held = held_out(ids, buffer_id=7)
    assert len(held) == 2 and held <= set(ids)  # 20% of 10, at least 2
    assert held_out(ids, buffer_id=7) == held  # a retry after a crash splits the same way
    assert len(held_out(list(range(40)), buffer_id=7)) == 8
    assert held_out([1, 2], buffer_id=7) == set()  # below MIN_ITEMS_TO_HOLD_OUT: judged on what it trained on
    assert len(held_out([1, 2, 3], buffer_id=7)) == 2 and MIN_ITEMS_TO_HOLD_OUT == 3  # never all of them
