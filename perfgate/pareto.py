"""The score-vs-latency Pareto frontier."""

from __future__ import annotations

from collections.abc import Sequence


def dominates(a: tuple[float, float], b: tuple[float, float], higher_is_better: bool = True) -> bool:
    """Whether point ``a`` (latency, score) is at least as good as ``b`` on both and better on one.

    :param higher_is_better: the score's direction: ``False`` for a metric such as MSE, where the
        smaller score is the better one. Lower latency is always better.
    """
    sign = 1.0 if higher_is_better else -1.0
    sa, sb = sign * a[1], sign * b[1]
    return a[0] <= b[0] and sa >= sb and (a[0] < b[0] or sa > sb)


def pareto_front(points: Sequence[tuple[float, float]], higher_is_better: bool = True) -> list[bool]:
    """For each (latency, score) point, whether no other point dominates it (see ``dominates``)."""
    return [not any(dominates(other, point, higher_is_better) for other in points) for point in points]
