"""Where a case's time goes: its backend's own profiler, summarised per operator.

A case is profiled in a run of its own after it was timed, never inside the timed rounds:

- when its regression is confirmed (``--perf-trace-failures``, on under ``--benchmark-compare``),
  so that the report says *where* the slowdown is, not only that it exists;
- when it is asked for (``--perf-trace-case ID``);
- at a baseline refresh, whose compact per-operator summary is stored with the baseline: what a
  later failure's profile is compared with (:func:`growth`).

Each backend reads its own profiler (``Backend.profile``): ``torch.profiler`` for the torch
backends, ONNX Runtime's session profiling, OpenVINO's ``PERF_COUNT``; one that has none raises
:class:`ProfileUnavailable` with the reason, which the report shows instead.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

# Profiled calls: enough that a 10 us operator's mean is not one call's noise, few enough that a
# 30 ms full-size model's profile stays a couple of seconds.
PROFILE_MIN_RUNS, PROFILE_MAX_RUNS, PROFILE_TIME_S = 5, 200, 1.0
# Operators kept in a stored summary (results.json, the baseline); the rest are summed as OTHER.
SUMMARY_OPERATORS = 40
OTHER = "(other operators)"
# The operators a failure's report lists: those whose time grew the most.
TOP_GROWERS = 5


class ProfileUnavailable(Exception):
    """The backend has no profiler perfgate reads, or this build of it cannot profile; says why."""


@dataclass
class OperatorProfile:
    """Mean time per run of each operator, as the backend's profiler attributes it.

    :param source: the profiler (``torch.profiler``, ``onnxruntime``, ``openvino PERF_COUNT``).
    :param runs: the profiled calls the means are over.
    :param operators: operator -> mean microseconds per call, the operator named as its backend
        names it (an aten op, an ONNX node and its type, an OpenVINO layer and its type).
    :param files: what the profiler wrote (a Chrome trace, its JSON, a table), absolute paths.
    """

    source: str
    runs: int
    operators: dict[str, float]
    files: list[str] = field(default_factory=list)

    def summary(self, keep: int = SUMMARY_OPERATORS) -> dict[str, Any]:
        """The compact form results.json and the baseline store: the ``keep`` slowest operators,
        the rest summed under :data:`OTHER`, each in microseconds per call."""
        ranked = sorted(self.operators.items(), key=lambda item: (-item[1], item[0]))
        kept = {name: round(us, 3) for name, us in ranked[:keep]}
        rest = sum(us for _, us in ranked[keep:])
        if rest > 0:
            kept[OTHER] = round(rest, 3)
        return {"source": self.source, "runs": self.runs, "operators_us": kept}


@dataclass(frozen=True)
class OperatorGrowth:
    """One operator's time per call at the baseline and now."""

    operator: str
    baseline_us: float | None  # None: the baseline's profile does not have it (a new operator)
    current_us: float

    @property
    def delta_us(self) -> float:
        return self.current_us - (self.baseline_us or 0.0)

    @property
    def ratio(self) -> float | None:
        return self.current_us / self.baseline_us if self.baseline_us else None


def growth(
    current: dict[str, float], baseline: dict[str, float], top: int = TOP_GROWERS
) -> list[OperatorGrowth]:
    """The operators whose time per call grew the most from ``baseline`` to ``current``.

    Only growth counts (an operator that got faster explains no slowdown); :data:`OTHER` is left
    out, since it names no operator. Ties go by name, so the order is stable.

    :param current: operator -> us per call now (a profile's ``operators_us``).
    :param baseline: the same at the baseline.
    """
    grown = [
        OperatorGrowth(name, baseline.get(name), us)
        for name, us in current.items()
        if name != OTHER and us > baseline.get(name, 0.0)
    ]
    return sorted(grown, key=lambda g: (-g.delta_us, g.operator))[:top]


def profiled_runs(run: Callable[[], None], calls: int | None = None) -> int:
    """Call ``run`` until :data:`PROFILE_TIME_S` has passed (between the run bounds), or ``calls``
    times; returns how many calls were made. The profiler around it divides by this."""
    if calls is not None:
        for _ in range(calls):
            run()
        return calls
    made, start = 0, time.perf_counter()
    while made < PROFILE_MAX_RUNS and (
        made < PROFILE_MIN_RUNS or time.perf_counter() - start < PROFILE_TIME_S
    ):
        run()
        made += 1
    return made


def growth_lines(profile: dict[str, Any] | None) -> list[str]:
    """What a profiled case's report says about where its time went, one line each.

    :param profile: the case's ``CaseResult.profile``; its ``baseline_operators_us`` is the
        summary stored with the baseline it was judged against, when that has one.
    """
    if not profile:
        return []
    if profile.get("unavailable"):
        return [f"profile: unavailable: {profile['unavailable']}"]
    current = profile.get("operators_us") or {}
    then = profile.get("baseline_operators_us")
    head = f"profile ({profile['source']}, {profile['runs']} calls)"
    if not then:
        ranked = sorted(((n, us) for n, us in current.items() if n != OTHER), key=lambda x: (-x[1], x[0]))
        shown = "; ".join(f"{name} {us:.1f} us" for name, us in ranked[:TOP_GROWERS])
        why = (
            ""
            if profile.get("trigger") == "request"
            else ", the baseline has no profile to compare with (a refresh stores one)"
        )
        return [f"{head}{why}; slowest operators: {shown}"]
    grown = growth(current, then)
    if not grown:
        return [f"{head}: no operator grew against the baseline's profile"]
    return [
        f"{head}, operators that grew most against the baseline's: "
        + "; ".join(_growth_text(g) for g in grown)
    ]


def _growth_text(g: OperatorGrowth) -> str:
    if g.baseline_us is None:
        return f"{g.operator} new, {g.current_us:.1f} us"
    return f"{g.operator} {g.baseline_us:.1f} -> {g.current_us:.1f} us (+{g.delta_us:.1f} us, x{g.ratio:.2f})"


def profile_folder(root: Path, case_id: str, trigger: str) -> Path:
    """A fresh folder for one profile's files: ``<root>/<case id>/<trigger>-<time>``."""
    folder = Path(root) / case_id / f"{trigger}-{time.strftime('%Y%m%dT%H%M%S')}-{time.time_ns() % 10**6:06d}"
    folder.mkdir(parents=True, exist_ok=True)
    return folder
