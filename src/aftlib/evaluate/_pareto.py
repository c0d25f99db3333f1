"""The Pareto front of a sweep: the cells that no other cell beats on quality for its cost."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ._sweep import CellResult

__all__ = ("pareto_front", "quality_points")


def pareto_front(points: Sequence[tuple[float, float]]) -> list[int]:
    """The indices of the points no other point beats: lower cost (first) and higher quality (second).

    A point is on the front when every point at least as cheap is of lower quality; of equal points,
    the first is kept. Points with a NaN are never on it.

    Returns:
        The indices on the front, from the cheapest to the dearest.

    Example:
        >>> pareto_front([(10, 0.5), (20, 0.4), (30, 0.7), (5, 0.1)])
        [3, 0, 2]
    """
    usable = [i for i, (x, y) in enumerate(points) if not (math.isnan(x) or math.isnan(y))]
    order = sorted(usable, key=lambda i: (points[i][0], -points[i][1], i))
    front: list[int] = []
    best = -math.inf
    for i in order:
        if points[i][1] > best:
            front.append(i)
            best = points[i][1]
    return front


def quality_points(results: Sequence[CellResult], cost: str) -> tuple[list[int], list[tuple[float, float]]]:
    """The cells that have a quality and a ``cost``, and their ``(cost, quality)`` points."""
    keep = [
        i
        for i, r in enumerate(results)
        if r.status != "failed" and r.value is not None and getattr(r, cost) is not None
    ]
    return keep, [(float(getattr(results[i], cost)), float(results[i].value)) for i in keep]  # type: ignore[arg-type]
