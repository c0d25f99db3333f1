"""Plots of a sweep: quality against cost, one labelled point per cell, the Pareto front drawn."""

from __future__ import annotations

import textwrap
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from .._errors import MissingExtraError
from ._pareto import pareto_front, quality_points

if TYPE_CHECKING:
    from ._sweep import CellResult

__all__ = ("plot_quality",)

_AXIS = {"tokens_per_record": "mean tokens per record", "cost_per_record": "mean cost per record"}
_KEY_WIDTH = 64


def plot_quality(results: Sequence[CellResult], cost: str, stem: Path) -> list[Path]:
    """Draw quality against ``cost`` (a :class:`CellResult` field) to ``STEM.png`` and ``STEM.svg``.

    One numbered point per cell that has both, with the standard error as an error bar, and a key beside
    the plot naming each number by the cell's axis values; the Pareto front (higher quality, lower cost)
    is marked and joined by a line. Nothing is drawn
    when no cell has both (a sweep without prices has no cost plot).

    Returns:
        The files written.

    Raises:
        MissingExtraError: matplotlib is not installed (the ``eval`` extra).
    """
    keep, points = quality_points(results, cost)
    if not points:
        return []
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise MissingExtraError("sweep plots", "eval", "matplotlib") from exc
    front = pareto_front(points)
    metric = next((results[i].metric for i in keep if results[i].metric), "quality")
    # the points are numbered; the key beside the plot names them, however many and however long
    key = [f"{j + 1:>2}  {textwrap.shorten(results[i].cell.label, _KEY_WIDTH)}" for j, i in enumerate(keep)]
    figure, (axes, side) = plt.subplots(
        1, 2, figsize=(11.0, max(5.0, 0.9 + 0.17 * len(key))), dpi=120, width_ratios=(3, 2)
    )
    try:
        xs = [p[0] for p in points]
        ys = [p[1] for p in points]
        errors = [results[i].standard_error or 0.0 for i in keep]
        axes.errorbar(
            xs, ys, yerr=errors, fmt="o", color="tab:blue", ecolor="lightgray", capsize=3, label="cell"
        )
        if front:
            axes.plot(
                [xs[i] for i in front],
                [ys[i] for i in front],
                "-",
                color="tab:red",
                marker="o",
                markerfacecolor="none",
                markersize=11,
                label="Pareto front",
            )
        rank = {j: r for r, j in enumerate(sorted(range(len(keep)), key=lambda j: (xs[j], ys[j])))}
        for j in range(len(keep)):
            above = rank[j] % 2 == 0  # neighbours by cost alternately above and below their points
            axes.annotate(
                str(j + 1),
                (xs[j], ys[j]),
                textcoords="offset points",
                xytext=(5, 5 if above else -6),
                va="bottom" if above else "top",
                fontsize=8,
            )
        side.axis("off")
        side.text(0.0, 1.0, "\n".join(key), va="top", ha="left", fontsize=7.5, family="monospace")
        axes.set_xlabel(_AXIS.get(cost, cost))
        axes.set_ylabel(str(metric))
        axes.set_title(f"{metric} against {_AXIS.get(cost, cost)}")
        axes.grid(True, alpha=0.3)
        axes.legend(loc="best", fontsize=8)
        figure.tight_layout()
        written = []
        for suffix in (".png", ".svg"):
            path = stem.with_suffix(suffix)
            figure.savefig(path)
            written.append(path)
        return written
    finally:
        plt.close(figure)
