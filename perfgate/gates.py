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
            return Verdict(
                self.name, "fail", "fidelity to the FP32 reference: " + "; ".join(broken), fid.to_dict()
            )
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
    """When a change of latency fails (or is reported as improved) under ``--benchmark-compare``.

    :param threshold: the practical limit: the p50 ratio must exceed ``1 + threshold`` to fail
        (or fall below ``1 / (1 + threshold)`` to be reported as improved).
    :param alpha: the significance level of the one-sided Mann-Whitney U test on the raw samples.
    :param confidence: the level of the bootstrap confidence interval of the p50 ratio.
    :param resamples: bootstrap resamples; more gives a steadier interval, at some CPU time.
    :param seed: seeds the bootstrap, so that the same samples always give the same verdict.
    :param normalize: divide the ratio by the reference workload's ratio (docs/regression-gate.md).
    :param confirm: re-measurements a failing case gets before it fails; it fails only if every
        one fails too (a neighbour's burst during one measurement does not repeat; a real
        slowdown does). 0 fails on the first measurement.
    """

    threshold: float = 0.10
    alpha: float = 0.01
    confidence: float = 0.95
    resamples: int = 1000
    seed: int = 0
    normalize: bool = True
    confirm: int = 1

    def merged(self, overrides: dict[str, Any]) -> RegressionPolicy:
        """A copy with ``overrides`` applied; unknown keys are an error naming the valid ones."""
        valid = {f.name for f in fields(self)}
        unknown = set(overrides) - valid
        if unknown:
            raise ValueError(f"unknown regression setting(s) {sorted(unknown)}; valid: {sorted(valid)}")
        return replace(self, **overrides)


# Below this many samples on either side the test and the interval mean nothing: threshold only.
MIN_GATE_SAMPLES = 5
# The bootstrap works on at most this many samples per side, taken evenly (as baselines store them).
MAX_BOOTSTRAP_SAMPLES = 2000


def _evenly(samples: np.ndarray, limit: int) -> np.ndarray:
    """At most ``limit`` samples, taken evenly across the run."""
    if samples.size <= limit:
        return samples
    return samples[(np.arange(limit) * (samples.size / limit)).astype(np.int64)]


def bootstrap_ratio_ci(
    current: np.ndarray, baseline: np.ndarray, confidence: float, resamples: int, seed: int
) -> tuple[float, float]:
    """Percentile bootstrap interval of ``median(current) / median(baseline)``.

    :param current: the current samples.
    :param baseline: the baseline samples.
    :param confidence: the interval's level, e.g. 0.95.
    :param resamples: how many bootstrap resamples to draw.
    :param seed: seeds the resampling, so that the interval is reproducible.
    """
    rng = np.random.default_rng(seed)
    cur, base = _evenly(current, MAX_BOOTSTRAP_SAMPLES), _evenly(baseline, MAX_BOOTSTRAP_SAMPLES)
    ratios = np.empty(resamples)
    # Chunks keep the index matrices to a few MB whatever the sample count.
    chunk = max(1, 2_000_000 // max(cur.size, base.size))
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        num = np.median(cur[rng.integers(0, cur.size, size=(n, cur.size))], axis=1)
        den = np.median(base[rng.integers(0, base.size, size=(n, base.size))], axis=1)
        ratios[start : start + n] = num / den
    tail = (1.0 - confidence) / 2.0 * 100.0
    low, high = np.percentile(ratios, [tail, 100.0 - tail])
    return float(low), float(high)


def mann_whitney_p(current: np.ndarray, baseline: np.ndarray, alternative: str) -> float:
    """One-sided Mann-Whitney U p-value: is ``current`` stochastically greater (or less)?

    :param current: the current samples.
    :param baseline: the baseline samples (already scaled by the reference factor, if any).
    :param alternative: ``"greater"`` to test for a slowdown, ``"less"`` for a speed-up.
    """
    from scipy.stats import mannwhitneyu  # heavy: imported only when a comparison runs

    if np.ptp(np.concatenate([current, baseline])) == 0.0:
        return 1.0  # all samples equal: no evidence either way (the test's variance is zero)
    return float(mannwhitneyu(current, baseline, alternative=alternative, method="asymptotic").pvalue)


class RegressionGate:
    """Judges the current raw samples against the baseline's: significant AND beyond the threshold.

    The ratio is ``p50(current) / p50(baseline)``, divided by the reference workload's ratio
    when both sessions timed it (a uniformly slower or faster machine then cancels out).
    """

    name = "regression"

    def __init__(self, policy: RegressionPolicy) -> None:
        self.policy = policy

    def compute(
        self, current_s: np.ndarray, baseline_s: np.ndarray | None, reference_factor: float | None = None
    ) -> Verdict:
        """The verdict for one case.

        :param current_s: this run's per-call durations, in seconds.
        :param baseline_s: the baseline's per-call durations, or ``None`` when there is none.
        :param reference_factor: the reference workload's p50 now / at the baseline, or ``None``.
        """
        if baseline_s is None or len(baseline_s) == 0:
            return Verdict(self.name, "new", "no baseline for this runner: reported as new")
        current, baseline = np.asarray(current_s, np.float64), np.asarray(baseline_s, np.float64)
        factor = reference_factor if self.policy.normalize and reference_factor else 1.0
        now, base = float(np.median(current)), float(np.median(baseline))
        ratio = now / base / factor
        values: dict[str, Any] = {
            "baseline_p50_ms": base * 1e3,
            "current_p50_ms": now * 1e3,
            "ratio": ratio,
            "raw_ratio": now / base,
            "reference_factor": factor,
            "threshold": self.policy.threshold,
            "n_baseline": int(baseline.size),
            "n_current": int(current.size),
        }
        if min(current.size, baseline.size) >= MIN_GATE_SAMPLES:
            low, high = bootstrap_ratio_ci(
                current, baseline, self.policy.confidence, self.policy.resamples, self.policy.seed
            )
            values["ratio_ci"] = [low / factor, high / factor]
            # Test in the direction the medians moved; equal medians are no evidence of either.
            direction = "greater" if ratio > 1.0 else "less"
            values["p_value"] = 1.0 if ratio == 1.0 else mann_whitney_p(current, baseline * factor, direction)
        status, word = self._judge(ratio, now / base, values.get("p_value"))
        return Verdict(self.name, status, f"p50 {base * 1e3:.4g} ms -> {now * 1e3:.4g} ms, {word}", values)

    def _judge(self, ratio: float, raw: float, p_value: float | None) -> tuple[str, str]:
        """Fail (or improve) only when the normalized AND the raw ratio are beyond the limit.

        The machine factor may excuse a slowdown that the whole machine shares, never accuse: a
        reference workload was measured 13% faster while every case ran at its baseline speed
        (docs/regression-gate.md), and a factor alone must not fail a case.
        """
        limit = 1.0 + self.policy.threshold
        significant = p_value is None or p_value < self.policy.alpha
        evidence = (
            "threshold only: the baseline has too few raw samples" if p_value is None else f"p={p_value:.2g}"
        )
        if ratio > limit and raw > limit and significant:
            return (
                "fail",
                f"x{ratio:.3f} slower than the baseline (limit x{limit:.2f}, {evidence}): regressed",
            )
        if ratio < 1.0 / limit and raw < 1.0 / limit and significant:
            return (
                "improved",
                f"x{ratio:.3f} of the baseline (limit x{1 / limit:.2f}, {evidence}): improved: refresh the baseline",
            )
        if raw > limit >= ratio:
            return (
                "pass",
                f"x{ratio:.3f} of the baseline: unchanged (raw x{raw:.3f}: the whole machine is slower)",
            )
        if ratio > limit >= raw:
            return (
                "pass",
                f"x{ratio:.3f} after the machine factor, raw x{raw:.3f}: unchanged (a factor never fails a case)",
            )
        why = "within the threshold" if 1.0 / limit <= ratio <= limit else f"not significant ({evidence})"
        return "pass", f"x{ratio:.3f} of the baseline: unchanged ({why})"
