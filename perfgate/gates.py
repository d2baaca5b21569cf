"""Gates: small objects that take measured values (and a baseline) and return a verdict."""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any, ClassVar

from perfgate.accuracy import AccuracyResult, Fidelity
from perfgate.sessions import SessionSummary, between_spread, session_p50
from perfgate.validation import Rule, SettingError, Settings, boolean, integer, number, optional


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
class AccuracyPolicy(Settings):
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

    KIND: ClassVar[str] = "accuracy setting"
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
class RegressionPolicy(Settings):
    """When a change of latency fails (or is reported as improved) under ``--benchmark-compare``.

    :param threshold: the practical limit: the current p50 must exceed the baseline's slowest
        session by more than this fraction to fail (or undercut its fastest by as much to be
        reported as improved). A case whose baseline sessions vary by more is judged at the
        spread it showed instead, and marked unstable.
    :param normalize: divide by the machine factor (the reference workload now / at the
        baseline), to excuse a slowdown the whole machine shares, never to accuse; off by
        default, because the factor moved more between sessions than the cases it corrects
        (docs/regression-gate.md). Never applied to GPU cases.
    :param confirm: re-measurements a failing case gets, each in a fresh runtime session after
        the other cases; it fails only if every one fails too. 0 fails on the first reading.
    """

    threshold: float = 0.10
    normalize: bool = False
    confirm: int = 1

    KIND: ClassVar[str] = "regression setting"
    RULES: ClassVar[dict[str, Rule]] = {
        "threshold": number(0, hint="the p50 slowdown that fails, as a fraction: 0.10 for 10%"),
        "normalize": boolean(hint="divide by the reference workload's ratio"),
        "confirm": integer(0, hint="re-measurements before a case fails; 0 fails on the first"),
    }

    def merged(self, overrides: Mapping[str, Any]) -> RegressionPolicy:
        """A copy with ``overrides`` applied (see :meth:`Settings.merged`); a removed setting is
        refused with what replaced it.

        :raises SettingError: a key is unknown or removed, or a value has the wrong type or range.
        """
        removed = sorted(set(overrides) & REMOVED_REGRESSION_SETTINGS)
        if removed:
            raise SettingError(
                removed[0],
                overrides[removed[0]],
                "no longer a setting: the gate judges sessions against the spread between the "
                "baseline's sessions, not raw samples with a significance test (docs/regression-gate.md); "
                "delete it",
            )
        return super().merged(overrides)


# The settings of the gate before sessions (Mann-Whitney U and a bootstrap interval on raw samples).
REMOVED_REGRESSION_SETTINGS = frozenset({"alpha", "confidence", "resamples", "seed"})


def half_spread(p50s: Sequence[float]) -> float:
    """How far a case's sessions stray from their median, robust to one stray session.

    The smaller of the distances from the median to the fastest and to the slowest session, over
    the median: for two sessions, half their gap; for three, their median absolute deviation. One
    session caught in a neighbour's burst (seen here: x1.3 and more) then neither widens the limits
    nor blinds the gate to a real slowdown, while a case whose sessions all scatter gets limits as
    wide as that scatter.
    """
    if len(p50s) < 2:
        return 0.0
    median = statistics.median(p50s)
    return min(median - min(p50s), max(p50s) - median) / median


class RegressionGate:
    """Judges the current sessions' p50 against the spread between the baseline's sessions.

    Samples within one session are autocorrelated, and sessions differ by more than a session's
    own spread, so no test on raw samples bounds anything here (docs/regression-gate.md). The
    unit is the session: the baseline's repeats show how far sessions of unchanged code fall
    apart. A case fails only beyond the baseline sessions' median, widened by their half-spread
    and then by the threshold; it is improved below the mirror image of that limit.
    """

    name = "regression"

    def __init__(self, policy: RegressionPolicy) -> None:
        self.policy = policy

    def compute(
        self,
        current: Sequence[SessionSummary],
        baseline: Sequence[SessionSummary],
        reference_factor: float | None = None,
    ) -> Verdict:
        """The verdict for one case.

        :param current: this run's sessions of the case (its first reading and its repeats).
        :param baseline: the baseline's sessions; empty when there is none.
        :param reference_factor: the reference workload's p50 now / at the baseline, or ``None``.
        """
        if not baseline:
            return Verdict(self.name, "new", "no baseline for this runner: reported as new")
        base_p50s = [s.p50_s for s in baseline]
        now, base = session_p50(current), session_p50(baseline)
        spread, half = between_spread(base_p50s), half_spread(base_p50s)
        threshold = self.policy.threshold
        band = (1.0 + threshold) * (1.0 + half)
        factor = reference_factor if self.policy.normalize and reference_factor else 1.0
        # The factor may excuse (raise the upper limit, lower the improvement limit), never accuse.
        upper = base * band * max(factor, 1.0)
        lower = base / band * min(factor, 1.0)
        values: dict[str, Any] = {
            "baseline_p50_ms": base * 1e3,
            "baseline_sessions_ms": [p * 1e3 for p in base_p50s],
            "current_p50_ms": now * 1e3,
            "current_sessions_ms": [s.p50_s * 1e3 for s in current],
            "ratio": now / base,
            "upper_limit_ms": upper * 1e3,
            "lower_limit_ms": lower * 1e3,
            "threshold": threshold,
            "half_spread": half,
            "judged_at": band - 1.0,
            "between_spread": spread,
            # Its sessions vary by more than the threshold: a noisy case, or one session in a burst.
            "unstable": spread is not None and spread > threshold,
            "reference_factor": factor,
        }
        if now > upper:
            status, word = "fail", "regressed"
        elif now < lower:
            status, word = "improved", "improved: refresh the baseline"
        else:
            status, word = "pass", "unchanged"
        head = f"p50 {base * 1e3:.4g} ms -> {now * 1e3:.4g} ms (x{now / base:.3f})"
        return Verdict(self.name, status, f"{head}, {_against(values, len(base_p50s))}: {word}", values)


def _against(values: dict[str, Any], sessions: int) -> str:
    """What the p50 was held against: the baseline sessions and the limits they set."""
    limits = f"limits {values['lower_limit_ms']:.4g}-{values['upper_limit_ms']:.4g} ms"
    if sessions == 1:
        return (
            f"{limits} (the median +-{values['threshold']:.0%}; 1 baseline session: how far sessions "
            "fall apart is unknown, refresh with --perf-repeats 3)"
        )
    low, high = min(values["baseline_sessions_ms"]), max(values["baseline_sessions_ms"])
    text = (
        f"baseline's {sessions} sessions {low:.4g}-{high:.4g} ms, {limits} (their median +-"
        f"{values['threshold']:.0%}, widened by their half-spread {values['half_spread']:.1%}"
    )
    if values["unstable"]:
        text += (
            f"; unstable at {values['threshold']:.0%}: its sessions vary by {values['between_spread']:.1%}"
        )
    if values["reference_factor"] != 1.0:
        text += f"; machine factor {values['reference_factor']:.3f}"
    return text + ")"


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
