"""Plots of continual-learning results (matplotlib, headless): accuracy-matrix heatmaps and curves.

Shared by the benchmark's PNG and the app's learning dashboard.
"""

from __future__ import annotations

from pathlib import Path
from typing import Mapping, Sequence

import matplotlib
import numpy as np

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

MISSING = "–"  # the label of a cell with no figure
MISSING_NOTE = f"{MISSING} (grey): no figure, not evaluated"
MISSING_COLOR = "#d9d9d9"


def matrix_heatmap(ax, matrix: Sequence[Sequence[float | None]], tasks: Sequence[str], title: str) -> None:
    """R[j][i]: rows = after training task j, columns = accuracy on task i (percent).

    A cell with no figure (None, NaN, or a row shorter than the others) is grey and labelled
    ``MISSING``, with a note under the axis, so it cannot be read as 0 or as a rendering gap."""
    width = max([len(tasks), *(len(row) for row in matrix)])
    data = [[float("nan") if v is None else float(v) for v in row] + [float("nan")] * (width - len(row)) for row in matrix]
    cmap = matplotlib.colormaps["viridis"].with_extremes(bad=MISSING_COLOR)
    ax.imshow(np.ma.masked_invalid(np.array(data, dtype=float).reshape(len(data), width)),
              vmin=0, vmax=100, cmap=cmap, aspect="auto")
    missing = False
    for j, row in enumerate(data):
        for i, v in enumerate(row):
            if v == v:  # not nan
                ax.text(i, j, f"{v:.0f}", ha="center", va="center", fontsize=7, color="white" if v < 60 else "black")
            else:
                ax.text(i, j, MISSING, ha="center", va="center", fontsize=7, color="#555555")
                missing = True
    if missing:
        ax.set_xlabel(MISSING_NOTE, fontsize=7, color="#555555")
    ax.set_xticks(range(len(tasks)), tasks, rotation=45, ha="right", fontsize=7)
    ax.set_yticks(range(len(data)), [f"after {t}" for t in tasks[: len(data)]], fontsize=7)
    ax.set_title(title, fontsize=9)


def benchmark_figure(tasks: Sequence[str], results: Mapping[str, Mapping]) -> Figure:
    """Heatmaps side by side, and each method's average accuracy on the tasks seen so far."""
    methods = list(results)
    fig, axes = plt.subplots(1, len(methods) + 1, figsize=(3.6 * (len(methods) + 1), 3.8), constrained_layout=True)
    for ax, m in zip(axes, methods):
        r = results[m]
        forgetting = "n/a" if r.get("forgetting") is None else f"{r['forgetting']:.1f}"
        matrix_heatmap(ax, r["matrix"], tasks, f"{m}: avg {r['avg_acc']:.1f}, forg. {forgetting}")
        if len(r["matrix"]) == 1 and len(tasks) > 1:  # joint training: one row, after all tasks at once
            ax.set_yticks([0], ["after all (joint)"], fontsize=7)
    curve_ax = axes[-1]
    for m in methods:
        mat = results[m]["matrix"]
        if len(mat) == 1 and len(tasks) > 1:
            curve_ax.axhline(results[m]["avg_acc"], linestyle="--", color="grey", label=f"{m} (all tasks)")
            continue
        seen = [sum(mat[j][: j + 1]) / (j + 1) for j in range(len(mat))]
        curve_ax.plot(range(1, len(seen) + 1), seen, marker="o", label=m)
    curve_ax.set_xticks(range(1, len(tasks) + 1), tasks, rotation=45, ha="right", fontsize=7)
    curve_ax.set_ylim(0, 100)
    curve_ax.set_ylabel("mean accuracy on tasks seen (%)", fontsize=8)
    curve_ax.set_title("over the sequence", fontsize=9)
    curve_ax.legend(fontsize=7)
    return fig


def save(fig: Figure, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def curves_figure(families: Sequence[str], curves: Mapping[str, Mapping[str, Sequence[Mapping]]]) -> Figure:
    """Accuracy against the number of corrections: one panel per family, one line per method.
    `curves[method][family]` is a list of {"corrections": n, "taught": accuracy %}."""
    cols = min(4, len(families))
    rows = -(-len(families) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.0 * cols, 2.6 * rows), constrained_layout=True, squeeze=False)
    for ax, family in zip(axes.flat, families):
        for method, per_family in curves.items():
            points = per_family.get(family, [])
            ax.plot([p["corrections"] for p in points], [p["taught"] for p in points], marker="o", label=method)
        ax.set_title(family, fontsize=9)
        ax.set_ylim(0, 100)
        ax.set_xlabel("corrections", fontsize=8)
        ax.set_ylabel("accuracy (%)", fontsize=8)
    for ax in list(axes.flat)[len(families):]:
        ax.axis("off")
    axes.flat[0].legend(fontsize=7)
    return fig
