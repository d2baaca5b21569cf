"""Latency statistics: literal numbers, and properties that hold for any samples."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from perfgate.stats import LatencyStats, percentile, tail_is_reliable


def test_summary_of_five_samples() -> None:
    """1..5 ms: numpy-linear percentiles, sample stdev, throughput from the mean."""
    stats = LatencyStats.from_samples([0.001, 0.002, 0.003, 0.004, 0.005], batch_size=4)
    assert stats.rounds == 5
    assert stats.mean_ms == pytest.approx(3.0)
    assert stats.p50_ms == pytest.approx(3.0)
    assert stats.p90_ms == pytest.approx(4.6)
    assert stats.p95_ms == pytest.approx(4.8)
    assert stats.p99_ms == pytest.approx(4.96)
    assert stats.stdev_ms == pytest.approx(math.sqrt(2.5))
    assert stats.cv == pytest.approx(math.sqrt(2.5) / 3.0)
    assert stats.iqr_ms == pytest.approx(2.0)
    assert stats.throughput_per_s == pytest.approx(4 * 1000 / 3.0)
    assert stats.low_confidence == ("p50", "p90", "p95", "p99")


def test_tail_confidence_needs_ten_samples_beyond_the_percentile() -> None:
    assert tail_is_reliable(1000, 99) and not tail_is_reliable(999, 99)
    assert tail_is_reliable(200, 95) and not tail_is_reliable(199, 95)
    assert tail_is_reliable(20, 50) and not tail_is_reliable(19, 50)


def test_single_sample_has_zero_spread() -> None:
    stats = LatencyStats.from_samples([0.002])
    assert (stats.p50_ms, stats.p99_ms, stats.stdev_ms) == (2.0, 2.0, 0.0)


@pytest.mark.parametrize("bad", [[], [float("nan")], [-0.001], [float("inf")]])
def test_rejects_samples_that_are_not_durations(bad: list[float]) -> None:
    with pytest.raises(ValueError):
        LatencyStats.from_samples(bad)


durations = st.lists(st.floats(min_value=1e-7, max_value=10.0), min_size=1, max_size=300)


@given(durations)
def test_percentiles_are_monotone(samples: list[float]) -> None:
    s = LatencyStats.from_samples(samples)
    eps = 1e-9 * max(samples) * 1e3
    assert s.min_ms - eps <= s.p50_ms <= s.p90_ms + eps <= s.p95_ms + 2 * eps <= s.p99_ms + 3 * eps
    assert s.p99_ms <= s.max_ms + eps


@given(durations, st.floats(min_value=0.5, max_value=4.0))
def test_scaling_samples_scales_every_statistic(samples: list[float], factor: float) -> None:
    a = LatencyStats.from_samples(samples)
    b = LatencyStats.from_samples([x * factor for x in samples])
    for field in ("mean_ms", "p50_ms", "p90_ms", "p99_ms", "min_ms", "max_ms"):
        assert getattr(b, field) == pytest.approx(getattr(a, field) * factor, rel=1e-9)
    assert b.throughput_per_s == pytest.approx(a.throughput_per_s / factor, rel=1e-9)


def linear_percentile(values: list[float], q: float) -> float:
    """The q-th percentile by linear interpolation between order statistics, written out by hand.

    The independent reference for :func:`perfgate.stats.percentile`: sort, take the fractional
    rank ``q / 100 * (n - 1)`` and interpolate between the two order statistics around it.

    :param values: the samples, at least one.
    :param q: the percentile, in [0, 100].
    """
    ordered = sorted(values)
    rank = q / 100.0 * (len(ordered) - 1)
    lower = math.floor(rank)
    upper = min(lower + 1, len(ordered) - 1)
    fraction = rank - lower
    return ordered[lower] + fraction * (ordered[upper] - ordered[lower])


@pytest.mark.parametrize(
    ("values", "q", "expected"),
    [
        ([1.0, 2.0, 3.0, 4.0], 50, 2.5),  # between the two middle values
        ([4.0, 1.0, 3.0, 2.0], 50, 2.5),  # order of the samples does not matter
        ([3.0, 1.0, 2.0], 50, 2.0),  # odd count: the middle value
        ([5.0, 1.0, 9.0], 0, 1.0),  # q=0 is the minimum
        ([5.0, 1.0, 9.0], 100, 9.0),  # q=100 is the maximum
        ([10.0, 20.0], 25, 12.5),  # a quarter of the way from 10 to 20
        ([10.0, 20.0, 30.0, 40.0, 50.0], 90, 46.0),  # rank 3.6: 40 + 0.6 * 10
        ([7.0], 0, 7.0),  # a single sample is every percentile
        ([7.0], 37.5, 7.0),
        ([7.0], 100, 7.0),
    ],
)
def test_percentile_literal_values(values: list[float], q: float, expected: float) -> None:
    """Linear interpolation at rank q/100*(n-1) of the sorted samples, on hand-computed cases."""
    assert percentile(values, q) == pytest.approx(expected, rel=1e-12)
    assert percentile(np.array(values), q) == pytest.approx(expected, rel=1e-12)


@given(st.lists(st.floats(min_value=0, max_value=1e3), min_size=1, max_size=50), st.floats(0, 100))
def test_percentile_matches_a_hand_written_linear_interpolation(values: list[float], q: float) -> None:
    """For any samples and q, the percentile is the hand-written linear interpolation's value."""
    assert percentile(values, q) == pytest.approx(linear_percentile(values, q), rel=1e-9, abs=1e-9)
