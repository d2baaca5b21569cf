"""The accuracy-vs-latency Pareto frontier."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float]) -> bool:
    """Whether point ``a`` (latency, accuracy) is at least as good as ``b`` on both and better on one."""
    return a[0] <= b[0] and a[1] >= b[1] and (a[0] < b[0] or a[1] > b[1])


def pareto_front(points: Sequence[tuple[float, float]]) -> list[bool]:
    """For each (latency, accuracy) point, whether no other point dominates it."""
    return [not any(dominates(other, point) for other in points) for point in points]
