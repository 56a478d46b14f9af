"""Tests for llaca.learn.metrics on small accuracy matrices whose metrics are worked out by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from llaca.learn.metrics import (
    ContinualMetrics,
    forgetting_per_task,
    summarize,
    validate_matrix,
)

# Rows: after training task j; columns: task i; percent.
THREE_TASKS = [
    [80.0],
    [70.0, 90.0],
    [60.0, 85.0, 75.0],
]
# avg     = (60 + 85 + 75) / 3                      = 73.333...
# new     = (80 + 90 + 75) / 3                      = 81.666...
# forget  = task 0: max(80, 70) - 60 = 20; task 1: 90 - 85 = 5   -> 12.5
# bwt     = ((60 - 80) + (85 - 90)) / 2             = -12.5

FOUR_TASKS_FULL = [  # entries above the diagonal are ignored
    [50.0, 10.0, 0.0, 0.0],
    [70.0, 60.0, 5.0, 0.0],
    [65.0, 80.0, 40.0, 2.0],
    [55.0, 70.0, 35.0, 90.0],
]
# avg     = (55 + 70 + 35 + 90) / 4                  = 62.5
# new     = (50 + 60 + 40 + 90) / 4                  = 60.0
# forget  = task 0: max(50, 70, 65) - 55 = 15   (peak after task 1, not on the diagonal)
#           task 1: max(60, 80) - 70     = 10
#           task 2: 40 - 35              = 5     -> 30 / 3 = 10.0
# bwt     = ((55 - 50) + (70 - 60) + (35 - 40)) / 3 = 10 / 3


def test_three_tasks_lower_triangular():
    m = summarize(THREE_TASKS)
    assert m.avg_acc == pytest.approx(220 / 3)
    assert m.new_acc == pytest.approx(245 / 3)
    assert m.forgetting == pytest.approx(12.5)
    assert m.bwt == pytest.approx(-12.5)
    assert forgetting_per_task(THREE_TASKS) == pytest.approx([20.0, 5.0])


def test_four_tasks_full_matrix_ignores_upper_triangle():
    m = summarize(FOUR_TASKS_FULL)
    assert m == ContinualMetrics(avg_acc=pytest.approx(62.5), forgetting=pytest.approx(10.0),
                                 bwt=pytest.approx(10 / 3), new_acc=pytest.approx(60.0))
    assert forgetting_per_task(FOUR_TASKS_FULL) == pytest.approx([15.0, 10.0, 5.0])
    lower = [row[: j + 1] for j, row in enumerate(FOUR_TASKS_FULL)]
    assert summarize(lower) == summarize(FOUR_TASKS_FULL)


def test_upper_triangle_may_hold_none_or_nan_and_numpy_is_accepted():
    m = summarize([[80.0, None], [60.0, 90.0]])
    assert (m.avg_acc, m.forgetting, m.bwt, m.new_acc) == (75.0, 20.0, -20.0, 85.0)
    arr = np.array([[80.0, math.nan], [60.0, 90.0]])
    assert summarize(arr) == m


def test_single_task_has_no_forgetting_or_transfer():
    m = summarize([[42.0]])
    assert m == ContinualMetrics(avg_acc=42.0, forgetting=0.0, bwt=0.0, new_acc=42.0)
    assert forgetting_per_task([[42.0]]) == []


def test_improvement_gives_negative_forgetting_and_positive_bwt():
    m = summarize([[40.0], [55.0, 90.0]])  # task 0 got better while learning task 1
    assert m.forgetting == pytest.approx(-15.0)
    assert m.bwt == pytest.approx(15.0)


def test_no_change_means_zero_forgetting():
    m = summarize([[90.0], [90.0, 80.0], [90.0, 80.0, 70.0]])
    assert m.forgetting == 0.0 and m.bwt == 0.0
    assert m.avg_acc == pytest.approx(80.0) and m.new_acc == pytest.approx(80.0)


@pytest.mark.parametrize("matrix, message", [
    ([], "empty"),
    (5, "sequence of rows"),
    ([[50.0], [60.0, 70.0, 80.0]], "row 1 has 3 entries"),
    ([[50.0, 1.0], [60.0]], "row 1 has 1 entries"),
    ([[50.0], [60.0, "abc"]], r"R\[1\]\[1\] = 'abc' is not a number"),
    ([[50.0], [None, 70.0]], r"R\[1\]\[0\] = None is not a number"),
    ([[math.nan]], "not a percentage"),
    ([[50.0], [60.0, 150.0]], "not a percentage"),
    ([[-1.0]], "not a percentage"),
    ([[True]], "bool"),
])
def test_invalid_matrices_raise_value_error(matrix, message):
    with pytest.raises(ValueError, match=message):
        summarize(matrix)
    with pytest.raises(ValueError, match=message):
        forgetting_per_task(matrix)


def test_validate_matrix_returns_lower_triangle_as_floats():
    assert validate_matrix([[1, 2], [3, 4]]) == [[1.0], [3.0, 4.0]]
