"""Gates: small objects that take measured values (and a baseline) and return a verdict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np

from perfgate.accuracy import AccuracyResult


@dataclass(frozen=True)
class Verdict:
    """The outcome of one gate on one case."""

    gate: str
    status: str  # "pass" | "fail" | "new" | "improved"
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class AccuracyPolicy:
    """Thresholds of the accuracy gates; ``None`` switches a check off.

    The default task-metric rule is MLPerf's: keep at least 99% of the FP32 reference score.
    """

    min_relative_metric: float | None = 0.99
    min_top1_agreement: float | None = None
    min_sqnr_db: float | None = None
    min_cosine: float | None = None
    max_abs_diff: float | None = None

    def merged(self, overrides: dict[str, Any]) -> AccuracyPolicy:
        """A copy with ``overrides`` applied; unknown keys are an error naming the valid ones."""
        valid = {f.name for f in fields(self)}
        unknown = set(overrides) - valid
        if unknown:
            raise ValueError(f"unknown accuracy setting(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, float | None]:
        return asdict(self)


class TaskMetricGate:
    """The variant keeps at least ``min_relative_metric`` of the reference's task metric."""

    name = "task_metric"

    def __init__(self, policy: AccuracyPolicy) -> None:
        self.policy = policy

    def compute(self, result: AccuracyResult) -> Verdict | None:
        floor = self.policy.min_relative_metric
        if floor is None or result.metric is None or result.reference_metric is None:
            return None
        required = floor * result.reference_metric
        values = {"metric": result.metric, "reference": result.reference_metric, "required": required}
        ok = math.isfinite(result.metric) and result.metric >= required - 1e-12
        message = (
            f"{result.metric_name} {result.metric:.4f} vs reference {result.reference_metric:.4f}: "
            f"{'keeps' if ok else 'falls below'} the required {required:.4f} "
            f"({floor:.2%} of the reference)"
        )
        return Verdict(self.name, "pass" if ok else "fail", message, values)


class FidelityGate:
    """The outputs follow the reference: agreement, SQNR, cosine and max-abs-diff thresholds."""

    name = "fidelity"

    def __init__(self, policy: AccuracyPolicy) -> None:
        self.policy = policy

    def compute(self, result: AccuracyResult) -> Verdict:
        fid = result.fidelity
        if not fid.finite:
            return Verdict(self.name, "fail", "outputs contain NaN or Inf", fid.to_dict())
        p = self.policy
        checks = [
            ("top-1 agreement", fid.top1_agreement, p.min_top1_agreement, ">="),
            ("SQNR dB", fid.sqnr_db, p.min_sqnr_db, ">="),
            ("cosine", fid.cosine, p.min_cosine, ">="),
            ("max abs diff", fid.max_abs_diff, p.max_abs_diff, "<="),
        ]
        broken = [
            f"{label} {value:.6g} (needs {op} {limit:.6g})"
            for label, value, limit, op in checks
            if limit is not None and not (value >= limit if op == ">=" else value <= limit)
        ]
        summary = ", ".join(f"{label} {value:.6g}" for label, value, _, _ in checks)
        if broken:
            return Verdict(self.name, "fail", "fidelity to the FP32 reference: " + "; ".join(broken), fid.to_dict())
        return Verdict(self.name, "pass", summary, fid.to_dict())


def accuracy_verdicts(result: AccuracyResult, policy: AccuracyPolicy) -> list[Verdict]:
    """Every accuracy gate that applies to this result, in a stable order."""
    verdicts = [FidelityGate(policy).compute(result)]
    task = TaskMetricGate(policy).compute(result)
    if task is not None:
        verdicts.append(task)
    return verdicts


@dataclass(frozen=True)
class RegressionPolicy:
    """When a slowdown fails the gate: ``threshold`` is the practical limit on the p50 ratio - 1."""

    threshold: float = 0.10

    def merged(self, overrides: dict[str, Any]) -> RegressionPolicy:
        valid = {f.name for f in fields(self)}
        unknown = set(overrides) - valid
        if unknown:
            raise ValueError(f"unknown regression setting(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return replace(self, **overrides)


class RegressionGate:
    """Compares the current samples with the baseline's on their medians."""

    name = "regression"

    def __init__(self, policy: RegressionPolicy) -> None:
        self.policy = policy

    def compute(self, current_s: np.ndarray, baseline_s: np.ndarray | None) -> Verdict:
        if baseline_s is None or len(baseline_s) == 0:
            return Verdict(self.name, "new", "no baseline for this runner: reported as new")
        now, base = float(np.median(current_s)), float(np.median(baseline_s))
        ratio = now / base
        values = {"baseline_p50_ms": base * 1e3, "current_p50_ms": now * 1e3, "ratio": ratio}
        limit = 1.0 + self.policy.threshold
        if ratio > limit:
            status, word = "fail", "regressed"
        elif ratio < 1.0 / limit:
            status, word = "improved", "improved: refresh the baseline"
        else:
            status, word = "pass", "unchanged"
        message = f"p50 {base * 1e3:.4g} ms -> {now * 1e3:.4g} ms (x{ratio:.3f}, limit x{limit:.2f}): {word}"
        return Verdict(self.name, status, message, values)
