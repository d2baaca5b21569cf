"""Gates: small objects that take measured values (and a baseline) and return a verdict."""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

import numpy as np

from perfgate.accuracy import AccuracyResult, Fidelity
from perfgate.validation import Rule, boolean, check_table, integer, number, optional


@dataclass(frozen=True)
class Verdict:
    """The outcome of one gate on one case."""

    gate: str
    status: str  # "pass" | "fail" | "new" | "improved" | "incomparable" | "allowed"
    message: str
    values: dict[str, Any] = field(default_factory=dict)

    @property
    def failed(self) -> bool:
        return self.status == "fail"

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


METRIC_DIRECTIONS = ("higher", "lower")


@dataclass(frozen=True)
class AccuracyPolicy:
    """Thresholds of the accuracy gates; ``None`` switches a check off.

    The default task-metric rule is MLPerf's: keep at least 99% of the FP32 reference score (for a
    lower-is-better metric: stay within 101% of it).

    :param min_relative_metric: the variant keeps this fraction of the FP32 reference's metric.
    :param max_metric_delta: an absolute tolerance on the metric, used instead of the relative
        rules when set; the only rule that means anything when a reference is <= 0 (R², -MSE).
    :param max_baseline_drop: under ``--benchmark-compare``, the relative drop of the metric
        against the one stored in this runner's baseline that fails the case (MLPerf-style 1%).
    :param max_abs_diff: the output-difference tolerance's absolute floor.
    :param max_diff_rtol: added to it, this fraction of the output scale (the largest absolute
        reference output), so that a tolerance means the same for logits and for a regressor in
        the hundreds.
    :param require_effect: fail a variant whose technique changed nothing (no quantized op) or
        whose artifact is not smaller than FP32 for a size-reducing technique.
    """

    min_relative_metric: float | None = 0.99
    max_metric_delta: float | None = None
    max_baseline_drop: float | None = 0.01
    min_top1_agreement: float | None = None
    min_sqnr_db: float | None = None
    min_cosine: float | None = None
    max_abs_diff: float | None = None
    max_diff_rtol: float | None = None
    require_effect: bool = True

    # ``None`` (from a technique's defaults) switches a check off; a TOML file has no null.
    RULES: ClassVar[dict[str, Rule]] = {
        "min_relative_metric": optional(
            number(
                0,
                1,
                low_open=True,
                hint="the share of the FP32 reference's metric a variant keeps, e.g. 0.99",
            )
        ),
        "max_metric_delta": optional(number(0, hint="the allowed move of the metric, in its own units")),
        "max_baseline_drop": optional(
            number(0, hint="the allowed relative move from the baseline's metric, e.g. 0.01 for 1%")
        ),
        "min_top1_agreement": optional(number(0, 1, hint="the share of predictions equal to FP32's")),
        "min_sqnr_db": optional(number(hint="signal-to-quantization-noise floor, in dB")),
        "min_cosine": optional(number(-1, 1, hint="mean cosine similarity of the outputs to FP32's")),
        "max_abs_diff": optional(number(0, hint="the output difference's absolute tolerance")),
        "max_diff_rtol": optional(number(0, hint="added to max_abs_diff, times the output scale")),
        "require_effect": boolean(hint="fail a variant whose technique changed nothing"),
    }

    def merged(self, overrides: dict[str, Any]) -> AccuracyPolicy:
        """A copy with ``overrides`` applied, each checked against :attr:`RULES`.

        :raises SettingError: a key is unknown or a value has the wrong type or range.
        """
        check_table(overrides, self.RULES, "accuracy setting")
        return replace(self, **overrides)

    def to_dict(self) -> dict[str, float | bool | None]:
        return asdict(self)

    def diff_limit(self, output_scale: float) -> float | None:
        """The largest allowed output difference for outputs of this scale, or ``None`` for no check."""
        if self.max_abs_diff is None and self.max_diff_rtol is None:
            return None
        return (self.max_abs_diff or 0.0) + (self.max_diff_rtol or 0.0) * output_scale


@dataclass(frozen=True)
class MetricRule:
    """How far a task metric may move the wrong way from a reference value.

    :param direction: ``"higher"`` or ``"lower"``: which way the metric is better.
    :param relative: the allowed move as a fraction of the reference (needs a reference > 0).
    :param absolute: the allowed move in the metric's own units; wins over ``relative`` when set.
    """

    direction: str
    relative: float | None
    absolute: float | None

    @property
    def active(self) -> bool:
        return self.relative is not None or self.absolute is not None

    def limit(self, reference: float, of: str = "the reference") -> tuple[float | None, str]:
        """The worst value the metric may take, and how it was set; ``None`` with the reason when refused."""
        sign = 1.0 if self.direction == "lower" else -1.0
        if self.absolute is not None:
            return (
                reference + sign * self.absolute,
                f"the reference {'+' if sign > 0 else '-'} {self.absolute:g}",
            )
        assert self.relative is not None
        if not reference > 0:
            return None, (
                f"the reference is {reference:.6g} (<= 0): a relative tolerance means nothing for it; "
                "set max_metric_delta (an absolute tolerance) in the model's accuracy table"
            )
        share = 1.0 + sign * self.relative
        return reference * share, f"{share:.2%} of {of}"

    def keeps(self, metric: float, limit: float) -> bool:
        """Whether ``metric`` is at least as good as ``limit`` (a float rounding's grace)."""
        if not math.isfinite(metric):
            return False
        return metric <= limit + 1e-12 if self.direction == "lower" else metric >= limit - 1e-12


def _metric_verdict(
    gate: str, rule: MetricRule, name: str | None, metric: float, reference: float, against: str
) -> Verdict:
    """The verdict of ``metric`` against ``reference`` under ``rule``, both values in the message."""
    better = "lower" if rule.direction == "lower" else "higher"
    limit, how = rule.limit(reference, "the reference" if against == "reference" else against)
    values = {"metric": metric, "reference": reference, "direction": rule.direction, "required": limit}
    head = f"{name} {metric:.4f} vs {against} {reference:.4f} ({better} is better)"
    if limit is None:
        return Verdict(gate, "fail", f"{head}: {how}", values)
    ok = rule.keeps(metric, limit)
    word = "keeps" if ok else ("exceeds" if rule.direction == "lower" else "falls below")
    bound = "allowed" if rule.direction == "lower" else "required"
    return Verdict(gate, "pass" if ok else "fail", f"{head}: {word} the {bound} {limit:.4f} ({how})", values)


class TaskMetricGate:
    """The variant keeps its task metric within the policy's tolerance of the FP32 reference's."""

    name = "task_metric"

    def __init__(self, policy: AccuracyPolicy) -> None:
        self.policy = policy

    def compute(self, result: AccuracyResult) -> Verdict | None:
        floor = self.policy.min_relative_metric
        relative = None if floor is None else 1.0 - floor
        rule = MetricRule(result.metric_direction, relative, self.policy.max_metric_delta)
        if not rule.active or result.metric is None or result.reference_metric is None:
            return None
        return _metric_verdict(
            self.name, rule, result.metric_name, result.metric, result.reference_metric, "reference"
        )


class BaselineAccuracyGate:
    """Under ``--benchmark-compare``: the task metric keeps what this runner's baseline stored.

    Every other gate compares a variant with the FP32 reference of the *current* model, so a model
    change that makes the FP32 model itself worse would pass them all.
    """

    name = "baseline_accuracy"

    def __init__(self, policy: AccuracyPolicy) -> None:
        self.policy = policy

    def compute(self, result: AccuracyResult, baseline_metric: float | None) -> Verdict | None:
        """The verdict, or ``None`` when the case or its baseline has no task metric.

        :param result: this run's accuracy pass.
        :param baseline_metric: the task metric stored with the case's baseline.
        """
        rule = MetricRule(
            result.metric_direction, self.policy.max_baseline_drop, self.policy.max_metric_delta
        )
        if not rule.active or result.metric is None or baseline_metric is None:
            return None
        return _metric_verdict(
            self.name, rule, result.metric_name, result.metric, baseline_metric, "the baseline's"
        )


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
        ]
        broken = [
            f"{label} {value:.6g} (needs {op} {limit:.6g})"
            for label, value, limit, op in checks
            if limit is not None and not (value >= limit if op == ">=" else value <= limit)
        ]
        diff = self._diff_problem(fid)
        broken += [diff] if diff else []
        summary = ", ".join(f"{label} {value:.6g}" for label, value, _, _ in checks)
        summary += f", max abs diff {fid.max_abs_diff:.6g}"
        if broken:
            return Verdict(
                self.name, "fail", "fidelity to the FP32 reference: " + "; ".join(broken), fid.to_dict()
            )
        return Verdict(self.name, "pass", summary, fid.to_dict())

    def _diff_problem(self, fid: Fidelity) -> str | None:
        """The max-abs-diff check against a tolerance that scales with the outputs, or ``None`` if it holds."""
        p = self.policy
        limit = p.diff_limit(fid.output_scale)
        if limit is None or fid.max_abs_diff <= limit:
            return None
        if not p.max_diff_rtol:
            return f"max abs diff {fid.max_abs_diff:.6g} (needs <= {limit:.6g})"
        return (
            f"max abs diff {fid.max_abs_diff:.6g} (needs <= {p.max_abs_diff or 0:g} + {p.max_diff_rtol:g} "
            f"x output scale {fid.output_scale:.6g} = {limit:.6g})"
        )


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

    RULES: ClassVar[dict[str, Rule]] = {
        "threshold": number(0, hint="the p50 slowdown that fails, as a fraction: 0.10 for 10%"),
        "alpha": number(0, 1, low_open=True, high_open=True, hint="the significance level, e.g. 0.01"),
        "confidence": number(
            0, 1, low_open=True, high_open=True, hint="the bootstrap interval's level, e.g. 0.95"
        ),
        "resamples": integer(1, hint="bootstrap resamples, e.g. 1000"),
        "seed": integer(0, hint="seeds the bootstrap"),
        "normalize": boolean(hint="divide by the reference workload's ratio"),
        "confirm": integer(0, hint="re-measurements before a case fails; 0 fails on the first"),
    }

    def merged(self, overrides: dict[str, Any]) -> RegressionPolicy:
        """A copy with ``overrides`` applied, each checked against :attr:`RULES`.

        :raises SettingError: a key is unknown or a value has the wrong type or range.
        """
        check_table(overrides, self.RULES, "regression setting")
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


# Lowerings whose whole point is INT8 compute: a variant with none of it did nothing.
INT8_LOWERINGS = frozenset({"int8_dynamic", "int8_static", "int8_qat"})


@dataclass(frozen=True)
class Effect:
    """What a technique's lowering really changed, as the backend and the artifact show it.

    :param lowering: the lowering the technique asked for (``int8_static``, ``fp16``, ...).
    :param size_reducing: whether the technique exists to make the artifact smaller.
    :param counts: the backend's ``inspect()``: ``quantized_ops`` and ``float_ops``, or ``{}``.
    :param artifact_bytes: the variant's artifact size.
    :param float_bytes: the size of the untransformed FP32 model (its serialized torch state dict).
    """

    lowering: str
    size_reducing: bool
    counts: dict[str, int]
    artifact_bytes: int | None
    float_bytes: int | None

    def problems(self) -> list[str]:
        """Why the variant does not show its technique's effect; empty when it does."""
        problems = []
        quantized = self.counts.get("quantized_ops")
        if self.lowering in INT8_LOWERINGS and quantized == 0:
            problems.append(
                f"no quantized op: all {self.counts.get('float_ops', 0)} compute ops are still float"
            )
        if (
            self.size_reducing
            and self.artifact_bytes
            and self.float_bytes
            and self.artifact_bytes >= self.float_bytes
        ):
            problems.append(
                f"the artifact ({self.artifact_bytes} bytes) is not smaller than FP32 ({self.float_bytes} bytes)"
            )
        return problems

    def to_dict(self) -> dict[str, Any]:
        return {**self.counts, "artifact_bytes": self.artifact_bytes, "float_bytes": self.float_bytes}


class TechniqueEffectGate:
    """The technique did something: INT8 ops really quantized, a size-reducing artifact really smaller.

    Its verdict is ``allowed`` (flagged, not failed) where the matrix sets ``require_effect = false``.
    """

    name = "technique_effect"

    def __init__(self, policy: AccuracyPolicy) -> None:
        self.policy = policy

    def compute(self, effect: Effect) -> Verdict | None:
        """The verdict, or ``None`` for a technique that promises no measurable effect (fp32, threads)."""
        if effect.lowering not in INT8_LOWERINGS and not effect.size_reducing:
            return None
        values = {**effect.to_dict(), "problems": effect.problems()}
        summary = _effect_summary(effect)
        if not values["problems"]:
            return Verdict(self.name, "pass", summary, values)
        text = "; ".join(values["problems"])
        if not self.policy.require_effect:
            return Verdict(self.name, "allowed", f"{text} (allowed: require_effect = false)", values)
        return Verdict(
            self.name,
            "fail",
            f"{text}; if that is expected, set require_effect = false for this case",
            values,
        )


def _effect_summary(effect: Effect) -> str:
    parts = []
    if effect.counts:
        parts.append(f"{effect.counts.get('quantized_ops', 0)} quantized / {effect.counts.get('float_ops', 0)} float compute ops")  # fmt: skip
    if effect.artifact_bytes and effect.float_bytes:
        parts.append(f"artifact {effect.artifact_bytes / effect.float_bytes:.0%} of FP32")
    return ", ".join(parts) or "no measurement of the effect"
