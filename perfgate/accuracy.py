"""Accuracy of a variant: its task metric, and its fidelity to the FP32 reference outputs."""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from perfgate.registry import Registry

Metric = Callable[[np.ndarray, np.ndarray], float]
"""A task metric: ``metric(outputs, labels) -> score``; the model's ``metric_direction`` says which way is better."""

METRICS: Registry[Metric] = Registry("metric")


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max is the label."""
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))


METRICS.register("top1", top1)


def _targets(outputs: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A regressor's predictions (``(N,)`` or ``(N, 1)``) and its float targets, both float64 ``(N,)``."""
    predicted = np.asarray(outputs, dtype=np.float64).reshape(len(outputs), -1)
    if predicted.shape[1] != 1:
        raise MetricError(
            f"a regression metric needs one output per row, got outputs of shape {outputs.shape}: "
            "use top1 or your own metric for a classifier"
        )
    return predicted[:, 0], np.asarray(labels, dtype=np.float64).reshape(-1)


def mae(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Mean absolute error of a regressor's predictions; lower is better."""
    predicted, target = _targets(outputs, labels)
    return float(np.mean(np.abs(predicted - target)))


def mse(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Mean squared error of a regressor's predictions; lower is better."""
    predicted, target = _targets(outputs, labels)
    return float(np.mean((predicted - target) ** 2))


def r2(outputs: np.ndarray, labels: np.ndarray) -> float:
    """The coefficient of determination R² (1 - residual / total sum of squares); higher is better."""
    predicted, target = _targets(outputs, labels)
    total = float(np.sum((target - target.mean()) ** 2))
    if total == 0:
        raise MetricError("r2 is undefined on constant targets: use mae or mse")
    return 1.0 - float(np.sum((target - predicted) ** 2)) / total


METRICS.register("mae", mae)
METRICS.register("mse", mse)
METRICS.register("r2", r2)
# Which way each registered metric is better: a model naming one needs no metric_direction, and
# one that contradicts it is refused when the matrix loads (a "higher" MAE would pass every regression).
METRIC_DIRECTIONS = {"top1": "higher", "mae": "lower", "mse": "lower", "r2": "higher"}


class MetricError(ValueError):
    """A task metric returned something other than one finite number."""


def checked_metric(name: str, metric: Metric) -> Metric:
    """``metric``, its result checked and converted to a Python float.

    A number, a numpy scalar or a 0-d array is accepted. An array of several values, a non-number
    (``None``, a string, a bool) or a NaN/Inf computed from finite outputs raises
    :class:`MetricError` naming the metric. A NaN/Inf from outputs that are themselves not finite
    is returned as is: the fidelity gate fails that variant with "outputs contain NaN or Inf".

    :param name: the metric as the matrix names it (``top1``, ``my_models:balanced_accuracy``).
    :param metric: the function.
    """

    @functools.wraps(metric)
    def checked(outputs: np.ndarray, labels: np.ndarray) -> float:
        value = metric(outputs, labels)
        return as_score(name, value, outputs)

    return checked


def as_score(name: str, value: object, outputs: np.ndarray | None = None) -> float:
    """The float of a metric's ``value``, or :class:`MetricError` saying what it returned instead.

    :param name: the metric's name, for the message.
    :param value: what the metric returned.
    :param outputs: the outputs it scored: a non-finite value is allowed only when they are not finite.
    """
    if isinstance(value, np.ndarray) and value.ndim > 0:
        raise MetricError(
            f"metric {name} returned ndarray of shape {value.shape}, not a number: return a float"
        )
    if isinstance(value, bool | np.bool_) or not isinstance(value, int | float | np.number | np.ndarray):
        raise MetricError(
            f"metric {name} returned {type(value).__name__} {value!r}, not a number: return a float"
        )
    dtype = np.asarray(value).dtype
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise MetricError(f"metric {name} returned {dtype} {value!r}, not a real number: return a float")
    score = float(value)
    if not math.isfinite(score) and (outputs is None or bool(np.all(np.isfinite(outputs)))):
        raise MetricError(
            f"metric {name} returned {score} on finite outputs, not a finite number: "
            "return a float (guard its divisions and logarithms)"
        )
    return score


def resolve_metric(name: str) -> Metric:
    """A registered metric by name, or a user's own as ``"package.module:function"``.

    The function returned checks what the metric returns (:func:`checked_metric`): one finite
    float, or :class:`MetricError` naming the metric.
    """
    if ":" in name:
        from perfgate.registry import import_object

        return checked_metric(name, import_object(name))
    return checked_metric(name, METRICS.get(name))


def _row_cosines(ref: np.ndarray, out: np.ndarray) -> np.ndarray:
    """The cosine similarity of each pair of rows, with a defined value for all-zero rows.

    :param ref: the reference rows, float64 of shape ``(N, D)``.
    :param out: the output rows, of the same shape.
    """
    ref_zero = ~np.any(ref != 0, axis=1)
    out_zero = ~np.any(out != 0, axis=1)
    # Each row is divided by its largest magnitude first, so that tiny (or huge) but non-zero rows
    # keep a norm >= 1 instead of under- or overflowing to a false zero (or inf).
    ref_unit = ref / np.where(ref_zero, 1.0, np.max(np.abs(ref), axis=1, initial=0.0))[:, None]
    out_unit = out / np.where(out_zero, 1.0, np.max(np.abs(out), axis=1, initial=0.0))[:, None]
    norms = np.linalg.norm(ref_unit, axis=1) * np.linalg.norm(out_unit, axis=1)
    cosines = np.sum(ref_unit * out_unit, axis=1) / np.where(ref_zero | out_zero, 1.0, norms)
    # A zero row has no direction. Two zero rows agree exactly (1.0); a zero row against a
    # non-zero one is the collapsed-scale INT8 failure (every output 0) and must not pass a
    # cosine gate, so it scores 0.0, as orthogonal rows do.
    return np.where(ref_zero & out_zero, 1.0, np.where(ref_zero | out_zero, 0.0, cosines))


def _scale(ref: np.ndarray) -> float:
    """The largest absolute value of the (finite part of the) reference outputs."""
    finite = ref[np.isfinite(ref)]
    return float(np.max(np.abs(finite))) if finite.size else 0.0


@dataclass(frozen=True)
class Fidelity:
    """How closely a variant's outputs follow the reference outputs on the same inputs."""

    top1_agreement: float
    sqnr_db: float
    cosine: float
    max_abs_diff: float
    finite: bool
    # The largest absolute reference output: what a scale-aware diff tolerance is relative to.
    output_scale: float = 0.0

    @classmethod
    def compare(cls, reference: np.ndarray, outputs: np.ndarray) -> Fidelity:
        """Compare outputs with the reference, row by row over the whole evaluation set."""
        if reference.shape != outputs.shape:
            raise ValueError(f"output shape {outputs.shape} differs from the reference's {reference.shape}")
        ref = reference.astype(np.float64).reshape(len(reference), -1)
        out = outputs.astype(np.float64).reshape(len(outputs), -1)
        finite = bool(np.all(np.isfinite(out)))
        if not finite:
            return cls(0.0, -math.inf, 0.0, math.inf, finite=False, output_scale=_scale(ref))
        noise = float(np.sum((ref - out) ** 2))
        signal = float(np.sum(ref**2))
        sqnr = math.inf if noise == 0 else 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf
        cosines = _row_cosines(ref, out)
        return cls(
            top1_agreement=float(np.mean(np.argmax(ref, axis=1) == np.argmax(out, axis=1))),
            sqnr_db=sqnr,
            cosine=float(np.mean(cosines)),
            max_abs_diff=float(np.max(np.abs(ref - out))),
            finite=True,
            output_scale=_scale(ref),
        )

    def to_dict(self) -> dict[str, float | bool]:
        return asdict(self)


@dataclass(frozen=True)
class AccuracyResult:
    """The accuracy pass of one case."""

    metric_name: str | None
    metric: float | None
    reference_metric: float | None
    fidelity: Fidelity
    eval_samples: int
    metric_direction: str = "higher"  # "lower" for a loss or an error (MSE, MAE)

    @property
    def metric_delta(self) -> float | None:
        if self.metric is None or self.reference_metric is None:
            return None
        return self.metric - self.reference_metric

    def to_dict(self) -> dict[str, object]:
        return {
            "metric_name": self.metric_name,
            "metric": self.metric,
            "reference_metric": self.reference_metric,
            "metric_delta": self.metric_delta,
            "eval_samples": self.eval_samples,
            "metric_direction": self.metric_direction,
            "fidelity": self.fidelity.to_dict(),
        }
