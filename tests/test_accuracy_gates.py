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
