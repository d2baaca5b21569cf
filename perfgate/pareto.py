"""The score-vs-latency Pareto frontier, and the score a model's cases are ranked on.

The report's tables and the plots both rank a model's cases by :func:`model_score` and mark the
frontier it gives, so that a table and its plot never disagree.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from perfgate.results import UNFINISHED, CaseResult


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


def _dominates_costs(a: Sequence[Any], b: Sequence[Any]) -> bool:
    """Whether cost vector ``a`` is no worse than ``b`` everywhere and better somewhere (lower wins)."""
    return all(x <= y for x, y in zip(a, b, strict=True)) and any(x < y for x, y in zip(a, b, strict=True))


def energy_per_inference(result: CaseResult) -> float | None:
    """The case's measured joules per inference, or ``None`` where no counter measured it."""
    energy = result.energy or {}
    value = energy.get("joules_per_inference") if energy.get("measured") else None
    return None if value is None else float(value)


def metric_direction(accuracy: dict[str, Any]) -> str:
    """``"higher"`` or ``"lower"``: which way the task metric is better (results without it: higher)."""
    return "lower" if accuracy.get("metric_direction") == "lower" else "higher"


@dataclass(frozen=True)
class Score:
    """What a model's cases are ranked on: its task metric, or top-1 agreement where it has none.

    :param name: the metric's name (``top1``, ``mse``, ...), or ``top-1 agreement``.
    :param higher_is_better: the direction; a lower-is-better metric (MSE) ranks the smaller first.
    :param task_metric: ``False`` for the fallback, top-1 agreement with the FP32 reference.
    """

    name: str
    higher_is_better: bool = True
    task_metric: bool = True

    @property
    def direction(self) -> str:
        return "higher" if self.higher_is_better else "lower"

    @property
    def header(self) -> str:
        """The table column of the score; its delta column is this with a Δ in front."""
        return self.name if self.task_metric else "agreement"

    def describe(self) -> str:
        """``mse (lower is better)``: the line above a model's table."""
        what = self.name if self.task_metric else "top-1 agreement with the FP32 reference"
        return f"{what} ({self.direction} is better)"

    def value(self, result: CaseResult) -> float | None:
        if not result.accuracy:
            return None
        if self.task_metric:
            metric = result.accuracy.get("metric")
            return None if metric is None else float(metric)
        return float(result.accuracy["fidelity"]["top1_agreement"])

    def delta(self, result: CaseResult) -> float | None:
        """The case's metric minus the FP32 reference's (none for agreement, the reference's is 1)."""
        if not self.task_metric or not result.accuracy:
            return None
        return result.accuracy.get("metric_delta")

    def rank(self, value: float) -> float:
        """The value turned so that larger is better, for ``max`` and sorting."""
        return value if self.higher_is_better else -value

    def front(self, cases: Sequence[CaseResult]) -> dict[str, bool]:
        """case id -> on the Pareto frontier, for the timed and scored cases that did not crash.

        Where every one of them has a measured energy per inference (perfgate.energy), energy is
        a third axis: a case is then dominated only by one at least as fast, as good and as frugal.
        """
        usable = [
            (r, (r.latency.p50_ms, value))
            for r in cases
            if r.latency and (value := self.value(r)) is not None and r.status not in UNFINISHED
        ]
        energies = [energy_per_inference(r) for r, _ in usable]
        if usable and all(e is not None for e in energies):
            sign = 1.0 if self.higher_is_better else -1.0
            costs = [(p[0], -sign * p[1], e) for (_, p), e in zip(usable, energies, strict=True)]
            flags = [not any(_dominates_costs(o, c) for o in costs) for c in costs]
        else:
            flags = pareto_front([point for _, point in usable], higher_is_better=self.higher_is_better)
        return dict(zip([r.case_id for r, _ in usable], flags, strict=True))


AGREEMENT = Score("top-1 agreement", higher_is_better=True, task_metric=False)


def model_score(cases: Sequence[CaseResult]) -> Score:
    """The score of one model's cases: its task metric when every scored case has the same one
    (name and direction), else top-1 agreement for all, so that one table never mixes two scales."""
    kinds = {
        (r.accuracy.get("metric_name") or "metric", metric_direction(r.accuracy))
        if r.accuracy.get("metric") is not None
        else None
        for r in cases
        if r.accuracy
    }
    if len(kinds) == 1 and (kind := kinds.pop()) is not None:
        return Score(kind[0], higher_is_better=kind[1] == "higher")
    return AGREEMENT
