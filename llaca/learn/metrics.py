"""Continual-learning metrics over an accuracy matrix.

This module owns the definitions of the numbers the benchmark, the worker's guard and the
dashboard report. `R[j][i]` is the accuracy (in percent) on task i after training task j, with
T tasks, rows j = 0..T-1 and columns i = 0..T-1 (0-based throughout):

- average accuracy  = mean_i R[T-1][i]                                   (the last row)
- forgetting        = mean_{i<T-1} ( max_{i<=j<=T-2} R[j][i] - R[T-1][i] )   (points)
- backward transfer = mean_{i<T-1} ( R[T-1][i] - R[i][i] )
- new-task accuracy = mean_i R[i][i]                                     (plasticity)

With a single task, forgetting and backward transfer are 0. Forgetting of a task is not
clipped at 0: a task that ends better than it ever was has negative forgetting.

A matrix may be lower-triangular (row j lists tasks 0..j) or full T×T; entries above the
diagonal (accuracy on tasks not trained yet) are ignored and may be None or NaN.

The learning worker keeps the same kind of matrix online (`extend_online`): one row per version
served in turn plus the candidate's row last, one column per base probe and per buffer learned
(None where a version was not measured on a column). Its forgetting per column
(`online_forgetting`) is the same definition: the best earlier accuracy minus the last row's.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class ContinualMetrics:
    """Summary of one accuracy matrix; all values in percent / percentage points."""

    avg_acc: float
    forgetting: float
    bwt: float
    new_acc: float


def summarize(matrix: Sequence[Sequence[Any]]) -> ContinualMetrics:
    """Average accuracy, forgetting, backward transfer and new-task accuracy of `matrix`."""
    rows = validate_matrix(matrix)
    last = rows[-1]
    n_tasks = len(rows)
    bwt = [last[i] - rows[i][i] for i in range(n_tasks - 1)]
    return ContinualMetrics(
        avg_acc=_mean(last),
        forgetting=_mean(_forgetting(rows)),
        bwt=_mean(bwt),
        new_acc=_mean([rows[i][i] for i in range(n_tasks)]),
    )


def forgetting_per_task(matrix: Sequence[Sequence[Any]]) -> list[float]:
    """Forgetting of each task but the last (T-1 values, [] for one task), in points."""
    return _forgetting(validate_matrix(matrix))


def validate_matrix(matrix: Sequence[Sequence[Any]]) -> list[list[float]]:
    """Check `matrix` and return its lower triangle as floats (row j has j+1 entries).

    Raises ValueError when the matrix is empty, a row has neither j+1 nor T entries, or an
    entry on or below the diagonal is not a number in [0, 100].
    """
    try:
        raw = [list(row) for row in matrix]
    except TypeError as exc:
        raise ValueError(f"accuracy matrix must be a sequence of rows: {exc}") from None
    n_tasks = len(raw)
    if n_tasks == 0:
        raise ValueError("accuracy matrix is empty: it needs one row per trained task")
    rows: list[list[float]] = []
    for j, row in enumerate(raw):
        if len(row) not in (j + 1, n_tasks):
            raise ValueError(f"accuracy matrix row {j} has {len(row)} entries; expected "
                             f"{j + 1} (lower-triangular) or {n_tasks} (full {n_tasks}x{n_tasks})")
        rows.append([_accuracy(row[i], j, i) for i in range(j + 1)])
    return rows


def _accuracy(value: Any, j: int, i: int) -> float:
    if isinstance(value, bool):
        raise ValueError(f"accuracy R[{j}][{i}] is a bool ({value}); expected a percentage")
    try:
        x = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"accuracy R[{j}][{i}] = {value!r} is not a number") from None
    if not math.isfinite(x) or not 0.0 <= x <= 100.0:
        raise ValueError(f"accuracy R[{j}][{i}] = {x} is not a percentage in [0, 100]")
    return x


def _forgetting(rows: list[list[float]]) -> list[float]:
    n_tasks = len(rows)
    padded = [row + [None] * (n_tasks - len(row)) for row in rows]
    return _column_forgetting(padded)[: n_tasks - 1]  # type: ignore[return-value]


def _column_forgetting(rows: Sequence[Sequence[float | None]]) -> list[float | None]:
    """Per column: the best accuracy of the rows before the last, minus the last row's (None
    where the last row or every earlier row has no value)."""
    last = rows[-1]
    out: list[float | None] = []
    for i, value in enumerate(last):
        seen = [row[i] for row in rows[:-1] if i < len(row) and row[i] is not None]
        out.append(max(seen) - value if seen and value is not None else None)
    return out


def online_forgetting(tasks: Sequence[str], matrix: Sequence[Sequence[float | None]]) -> dict[str, float]:
    """Forgetting of each column of an online matrix that has one (points, rounded to 0.01)."""
    if not matrix:
        return {}
    return {t: round(f, 2) for t, f in zip(tasks, _column_forgetting(matrix)) if f is not None}


def row_average(row: Sequence[float | None]) -> float | None:
    """Mean accuracy of the measured entries of one row (None if none is measured)."""
    values = [v for v in row if v is not None]
    return _mean(values) if values else None


def extend_online(tasks: Sequence[str], rows: Sequence[Sequence[float | None]], labels: Sequence[str],
                  new_task: str, first: tuple[str, Mapping[str, float]], last: tuple[str, Mapping[str, float]],
                  ) -> tuple[list[str], list[list[float | None]], list[str]]:
    """The online matrix (columns ``tasks``, ``rows`` labelled ``labels``) with column ``new_task``
    and the row ``last`` = (label, accuracy per column) added. A matrix without rows starts with
    ``first``, the version the new row was trained from, measured on the same columns."""
    tasks = list(tasks)
    if new_task not in tasks:
        tasks.append(new_task)
    out, out_labels = [list(r) for r in rows], list(labels)
    if not out:
        out, out_labels = [[first[1].get(t) for t in tasks]], [first[0]]
    out = [r + [None] * (len(tasks) - len(r)) for r in out]
    out.append([last[1].get(t) for t in tasks])
    out_labels.append(last[0])
    return tasks, out, out_labels


def _mean(values: list[float]) -> float:
    return sum(values) / len(values) if values else 0.0
