"""Accuracy gates: literal verdicts, NaN handling, and the fidelity metrics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from perfgate.accuracy import AccuracyResult, Fidelity, top1
from perfgate.gates import AccuracyPolicy, FidelityGate, TaskMetricGate, accuracy_verdicts


def result(metric: float | None, reference: float | None, fidelity: Fidelity) -> AccuracyResult:
    return AccuracyResult("top1", metric, reference, fidelity, eval_samples=360)


PERFECT = Fidelity(1.0, math.inf, 1.0, 0.0, finite=True)


def test_top1_counts_argmax_hits() -> None:
    outputs = np.array([[0.1, 0.9], [0.8, 0.2], [0.3, 0.7], [0.6, 0.4]])
    assert top1(outputs, np.array([1, 0, 0, 0])) == 0.75


def test_task_metric_keeps_99_percent_of_reference() -> None:
    """MLPerf's rule: 0.9801 of a 0.99 reference passes, 0.98 fails."""
    gate = TaskMetricGate(AccuracyPolicy())
    assert gate.compute(result(0.9801, 0.99, PERFECT)).status == "pass"
    failed = gate.compute(result(0.98, 0.99, PERFECT))
    assert failed.status == "fail"
    assert "0.9800" in failed.message and "0.9801" in failed.message and "99.00%" in failed.message


def test_task_metric_gate_is_off_without_labels() -> None:
    assert TaskMetricGate(AccuracyPolicy()).compute(result(None, None, PERFECT)) is None


def test_fidelity_lists_every_broken_threshold() -> None:
    policy = AccuracyPolicy(min_top1_agreement=0.99, min_sqnr_db=30.0, max_abs_diff=1e-4)
    fidelity = Fidelity(top1_agreement=0.95, sqnr_db=20.0, cosine=0.999, max_abs_diff=5e-4, finite=True)
    verdict = FidelityGate(policy).compute(result(0.9, 0.9, fidelity))
    assert verdict.failed
    assert "top-1 agreement 0.95 (needs >= 0.99)" in verdict.message
    assert "SQNR dB 20 (needs >= 30)" in verdict.message
    assert "max abs diff 0.0005 (needs <= 0.0001)" in verdict.message


def test_nan_outputs_fail_whatever_the_thresholds() -> None:
    reference = np.ones((4, 3), dtype=np.float32)
    outputs = reference.copy()
    outputs[2, 1] = np.nan
    fidelity = Fidelity.compare(reference, outputs)
    assert not fidelity.finite
    verdicts = accuracy_verdicts(result(None, None, fidelity), AccuracyPolicy(min_relative_metric=None))
    assert [v.status for v in verdicts] == ["fail"]
    assert "NaN or Inf" in verdicts[0].message


def test_fidelity_figures_on_a_known_perturbation() -> None:
    """Noise of 1% of the signal's power is 20 dB SQNR."""
    reference = np.array([[3.0, 4.0]])
    outputs = np.array([[3.3, 4.4]])  # error 0.1x the signal: power ratio 100
    fid = Fidelity.compare(reference, outputs)
    assert fid.sqnr_db == pytest.approx(20.0)
    assert fid.cosine == pytest.approx(1.0)
    assert fid.max_abs_diff == pytest.approx(0.4)
    assert fid.top1_agreement == 1.0


def test_policy_rejects_unknown_settings() -> None:
    with pytest.raises(ValueError, match="min_sqnr"):
        AccuracyPolicy().merged({"min_sqnr": 30})


finite = st.floats(min_value=-100, max_value=100, allow_nan=False)


@given(arrays(np.float64, (8, 5), elements=finite))
def test_identical_outputs_have_perfect_fidelity(reference: np.ndarray) -> None:
    fid = Fidelity.compare(reference, reference.copy())
    assert fid.max_abs_diff == 0 and fid.top1_agreement == 1.0 and fid.sqnr_db == math.inf


@pytest.mark.parametrize(
    ("reference", "output", "cosine"),
    [
        ([[3.0, 4.0]], [[0.0, 0.0]], 0.0),  # collapsed output: every value quantized to zero
        ([[0.0, 0.0]], [[3.0, 4.0]], 0.0),  # zero reference, non-zero output
        ([[0.0, 0.0]], [[0.0, 0.0]], 1.0),  # both zero: identical
        ([[1.0, 0.0]], [[1.0, 1.0]], 1.0 / math.sqrt(2.0)),  # the usual cosine: 45 degrees
        ([[1.0, 2.0]], [[-2.0, -4.0]], -1.0),  # opposite directions
        ([[1e-200, 0.0]], [[0.0, 1e-200]], 0.0),  # orthogonal rows whose norms' product underflows
        ([[1e-200, 1e-200]], [[3e-200, 3e-200]], 1.0),  # tiny but parallel
    ],
    ids=[
        "output-zero",
        "reference-zero",
        "both-zero",
        "45-degrees",
        "opposite",
        "tiny-orthogonal",
        "tiny-parallel",
    ],
)
def test_cosine_of_a_single_row(
    reference: list[list[float]], output: list[list[float]], cosine: float
) -> None:
    """A row's cosine: 0.0 when exactly one side is all zero, 1.0 when both are, else the usual one."""
    fid = Fidelity.compare(np.array(reference), np.array(output))
    assert fid.cosine == pytest.approx(cosine, abs=1e-12)


def test_collapsed_int8_output_row_fails_the_cosine_gate() -> None:
    """An all-zero output row against a non-zero reference scores 0.0 and fails min_cosine 0.9."""
    reference = np.array([[0.5, -1.0, 2.0], [1.0, 2.0, 2.0]], dtype=np.float32)
    outputs = np.array([[0.5, -1.0, 2.0], [0.0, 0.0, 0.0]], dtype=np.float32)
    fid = Fidelity.compare(reference, outputs)
    assert fid.cosine == pytest.approx(0.5)  # rows 1.0 and 0.0
    assert Fidelity.compare(reference[1:], outputs[1:]).cosine == 0.0
    verdict = FidelityGate(AccuracyPolicy(min_cosine=0.9)).compute(result(None, None, fid))
    assert verdict.failed
    assert "cosine 0.5 (needs >= 0.9)" in verdict.message


def test_zero_rows_on_both_sides_agree_but_do_not_hide_a_collapsed_row() -> None:
    """Both-zero rows count 1.0; next to a collapsed row (0.0) the mean is 0.5, not 1.0."""
    reference = np.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
    outputs = np.zeros((2, 3))
    assert Fidelity.compare(reference, outputs).cosine == pytest.approx(0.5)
    assert Fidelity.compare(reference[:1], outputs[:1]).cosine == 1.0


# Magnitudes bounded away from 0, so that rows scaled by 1e-170 stay non-zero in float64.
magnitudes = st.floats(min_value=1e-3, max_value=100)
nonzero = st.one_of(magnitudes, magnitudes.map(lambda x: -x))


@given(
    arrays(np.float64, (6, 4), elements=nonzero),
    arrays(np.float64, (6, 4), elements=nonzero),
    st.sampled_from([1e-170, 1e-20, 1.0, 1e20]),
)
def test_cosine_ignores_the_scale_of_the_rows(
    reference: np.ndarray, outputs: np.ndarray, scale: float
) -> None:
    """Cosine depends on direction only: rows scaled by 1e-170 (whose squared norms underflow to 0)
    score what the unscaled rows score, 1 against themselves and -1 against their negation.
    """
    expected = Fidelity.compare(reference, outputs).cosine
    assert -1.0 - 1e-12 <= expected <= 1.0 + 1e-12
    assert Fidelity.compare(reference * scale, outputs * scale).cosine == pytest.approx(expected, abs=1e-12)
    assert Fidelity.compare(reference * scale, reference * scale).cosine == pytest.approx(1.0)
    assert Fidelity.compare(reference * scale, -reference * scale).cosine == pytest.approx(-1.0)
