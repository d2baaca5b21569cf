"""Latency statistics computed from raw samples."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass

import numpy as np

PERCENTILES = (50, 90, 95, 99)
# A tail percentile q is trusted only when at least this many samples lie beyond it:
# with fewer, one noisy sample moves it (p99 needs >= 1000 samples).
MIN_TAIL_SAMPLES = 10


def percentile(samples: Sequence[float] | np.ndarray, q: float) -> float:
    """The q-th percentile with linear interpolation between order statistics (numpy's default)."""
    return float(np.percentile(np.asarray(samples, dtype=np.float64), q))


def tail_is_reliable(n: int, q: float) -> bool:
    """Whether ``n`` samples are enough to estimate the q-th percentile."""
    return n * (100.0 - q) / 100.0 >= MIN_TAIL_SAMPLES


@dataclass(frozen=True)
class LatencyStats:
    """Summary of one case's timed calls; every time is in milliseconds."""

    rounds: int
    batch_size: int
    mean_ms: float
    stdev_ms: float
    cv: float
    min_ms: float
    max_ms: float
    p50_ms: float
    p90_ms: float
    p95_ms: float
    p99_ms: float
    iqr_ms: float
    throughput_per_s: float
    low_confidence: tuple[str, ...]

    @classmethod
    def from_samples(cls, samples_s: Sequence[float] | np.ndarray, batch_size: int = 1) -> LatencyStats:
        """Summarise raw per-call durations.

        :param samples_s: one duration per timed call, in seconds.
        :param batch_size: samples processed by one call, for the throughput.
        """
        data = np.asarray(samples_s, dtype=np.float64) * 1e3
        if data.size == 0:
            raise ValueError("no samples to summarise")
        if not np.all(np.isfinite(data)) or np.any(data < 0):
            raise ValueError("samples must be finite, non-negative durations")
        mean = float(data.mean())
        stdev = float(data.std(ddof=1)) if data.size > 1 else 0.0
        q = {p: float(np.percentile(data, p)) for p in (25, 75, *PERCENTILES)}
        return cls(
            rounds=int(data.size),
            batch_size=batch_size,
            mean_ms=mean,
            stdev_ms=stdev,
            cv=stdev / mean if mean > 0 else math.nan,
            min_ms=float(data.min()),
            max_ms=float(data.max()),
            p50_ms=q[50],
            p90_ms=q[90],
            p95_ms=q[95],
            p99_ms=q[99],
            iqr_ms=q[75] - q[25],
            throughput_per_s=batch_size * 1e3 / mean if mean > 0 else math.inf,
            low_confidence=tuple(f"p{p}" for p in PERCENTILES if not tail_is_reliable(data.size, p)),
        )

    def to_dict(self) -> dict[str, object]:
        result = asdict(self)
        result["low_confidence"] = list(self.low_confidence)
        return result
