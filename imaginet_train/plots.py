"""PNG plots with matplotlib's object API (Figure + Agg canvas): no pyplot state, no display needed."""
from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure


def sweep_plot(rows: Sequence[Mapping[str, Any]], keys: Sequence[str], xlabel: str, path: Path,
               clean: Mapping[str, Any] | None = None) -> Path:
    """One line per metric in `keys` over the rows' `value`; dotted lines at the clean values."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    xs = [r["value"] for r in rows]
    for i, key in enumerate(keys):
        colour = f"C{i}"
        ax.plot(xs, [_nan(r[key]) for r in rows], marker="o", color=colour, label=key.replace("_", " "))
        if clean is not None:
            ax.axhline(_nan(clean[key]), color=colour, linestyle=":", linewidth=1)
    ax.set(xlabel=xlabel, ylabel="metric", ylim=(0, 1.02), title=f"robustness: {xlabel} (dotted: clean)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="lower right")
    fig.savefig(path, dpi=100)
    return path


def confusion_plot(matrix: Sequence[Sequence[int]], classes: Sequence[str], path: Path) -> Path:
    """A confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    fig = Figure(figsize=(5, 4.5), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(matrix, cmap="Blues")
    fig.colorbar(image, ax=ax)
    ticks = range(len(classes))
    ax.set_xticks(ticks, classes, rotation=30, ha="right")
    ax.set_yticks(ticks, classes)
    ax.set(xlabel="predicted", ylabel="true", title="family confusion matrix (synthetic images)")
    peak = max((max(row) for row in matrix), default=0)
    for i, row in enumerate(matrix):
        for j, count in enumerate(row):
            ax.text(j, i, str(count), ha="center", va="center",
                    color="white" if count > peak / 2 else "black")
    fig.savefig(path, dpi=100)
    return path


def curve_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], xlabel: str, ylabel: str,
               path: Path) -> Path:
    """Named (x, y) series on one axis, e.g. training loss per epoch."""
    fig = Figure(figsize=(6, 4), layout="constrained")
    ax = fig.add_subplot()
    for name, (xs, ys) in series.items():
        ax.plot(xs, ys, marker=".", label=name)
    ax.set(xlabel=xlabel, ylabel=ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=100)
    return path


def _nan(value: Any) -> float:
    return math.nan if value is None else float(value)
