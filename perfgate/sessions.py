"""A measurement session: the unit the regression gate judges.

Samples inside one session are autocorrelated and drift with the machine's load, so thousands of
them say little about the next session: two sessions minutes apart differ by more than one
session's spread (docs/regression-gate.md). perfgate therefore summarises each session (a fresh
runtime session, warmed up and timed by the stopping rule) into one :class:`SessionSummary`, and
judges a case by its sessions' p50s: the baseline's repeats give the between-session spread,
and the current run's sessions (its first reading, its repeats, a confirmation) are compared
with it.
"""

from __future__ import annotations

import datetime as dt
import statistics
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

# How a session came to be measured: the case's own test, a repeat later in the run (the
# round-robin of --perf-repeats), or the re-measurement of a failing verdict.
SESSION_KINDS = ("first", "repeat", "confirmation")


@dataclass(frozen=True)
class SessionSummary:
    """One session of one case, in seconds.

    :param p50_s: the median call.
    :param p90_s: the 90th percentile.
    :param p99_s: the 99th percentile (from few samples it is close to the maximum).
    :param spread: the interquartile range over the median: the session's own dispersion.
    :param n: timed calls.
    :param kind: one of :data:`SESSION_KINDS`.
    :param reference_us: the reference workload's p50 timed right after it, if it was.
    :param at: when the session ended, ISO 8601 in UTC.
    """

    p50_s: float
    p90_s: float
    p99_s: float
    spread: float
    n: int
    kind: str = "first"
    reference_us: float | None = None
    at: str = ""

    @classmethod
    def from_samples(
        cls, samples_s: Sequence[float], kind: str = "first", reference_us: float | None = None
    ) -> SessionSummary:
        """Summarise one session's raw per-call durations."""
        data = np.asarray(samples_s, dtype=np.float64)
        if data.size == 0:
            raise ValueError("a session needs at least one sample")
        q25, p50, q75, p90, p99 = (float(x) for x in np.percentile(data, [25, 50, 75, 90, 99]))
        return cls(
            p50_s=p50,
            p90_s=p90,
            p99_s=p99,
            spread=(q75 - q25) / p50 if p50 > 0 else 0.0,
            n=int(data.size),
            kind=kind,
            reference_us=reference_us,
            at=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> SessionSummary:
        known = {k: data[k] for k in cls.__dataclass_fields__ if k in data}
        return cls(**known)


# Each session keeps at most this many samples (evenly thinned), in results and baselines alike.
MAX_SESSION_SAMPLES = 2000


def thin(samples: Sequence[float], limit: int = MAX_SESSION_SAMPLES) -> list[float]:
    """At most ``limit`` samples, taken evenly across the session so drift within it is kept."""
    if len(samples) <= limit:
        return [round(float(s), 9) for s in samples]
    step = len(samples) / limit
    return [round(float(samples[int(i * step)]), 9) for i in range(limit)]


def session_p50(sessions: Sequence[SessionSummary]) -> float:
    """A run's value for a case: the median of its sessions' p50s (their mean for two)."""
    if not sessions:
        raise ValueError("no sessions")
    return float(statistics.median(s.p50_s for s in sessions))


def between_spread(p50s: Sequence[float]) -> float | None:
    """How far a case's sessions are apart: (slowest - fastest) / fastest; ``None`` for one session."""
    if len(p50s) < 2:
        return None
    return max(p50s) / min(p50s) - 1.0
