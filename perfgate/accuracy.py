"""Accuracy of a variant: its task metric, and its fidelity to the FP32 reference outputs."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass

import numpy as np

from perfgate.registry import Registry

Metric = Callable[[np.ndarray, np.ndarray], float]
"""A task metric: ``metric(outputs, labels) -> score``, higher is better."""

METRICS: Registry[Metric] = Registry("metric")


def top1(outputs: np.ndarray, labels: np.ndarray) -> float:
    """Fraction of rows whose arg-max is the label."""
    return float(np.mean(np.argmax(outputs, axis=-1) == labels))


METRICS.register("top1", top1)


def resolve_metric(name: str) -> Metric:
    """A registered metric by name, or a user's own as ``"package.module:function"``."""
    if ":" in name:
        from perfgate.registry import import_object

        return import_object(name)  # type: ignore[return-value]
    return METRICS.get(name)


@dataclass(frozen=True)
class Fidelity:
    """How closely a variant's outputs follow the reference outputs on the same inputs."""

    top1_agreement: float
    sqnr_db: float
    cosine: float
    max_abs_diff: float
    finite: bool

    @classmethod
    def compare(cls, reference: np.ndarray, outputs: np.ndarray) -> Fidelity:
        """Compare outputs with the reference, row by row over the whole evaluation set."""
        if reference.shape != outputs.shape:
            raise ValueError(f"output shape {outputs.shape} differs from the reference's {reference.shape}")
        ref = reference.astype(np.float64).reshape(len(reference), -1)
        out = outputs.astype(np.float64).reshape(len(outputs), -1)
        finite = bool(np.all(np.isfinite(out)))
        if not finite:
            return cls(0.0, -math.inf, 0.0, math.inf, finite=False)
        noise = float(np.sum((ref - out) ** 2))
        signal = float(np.sum(ref**2))
        sqnr = math.inf if noise == 0 else 10.0 * math.log10(signal / noise) if signal > 0 else -math.inf
        norms = np.linalg.norm(ref, axis=1) * np.linalg.norm(out, axis=1)
        cosines = np.where(norms > 0, np.sum(ref * out, axis=1) / np.where(norms > 0, norms, 1.0), 1.0)
        return cls(
            top1_agreement=float(np.mean(np.argmax(ref, axis=1) == np.argmax(out, axis=1))),
            sqnr_db=sqnr,
            cosine=float(np.mean(cosines)),
            max_abs_diff=float(np.max(np.abs(ref - out))),
            finite=True,
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
            "fidelity": self.fidelity.to_dict(),
        }
