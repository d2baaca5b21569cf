"""End-to-end: the plugin drives a real matrix through pytester."""

from __future__ import annotations

import json

import pytest


def test_runs_every_case_and_reports(perf_project: pytest.Pytester) -> None:
    """Every combination runs, passes its gates, and lands in results.json with its figures."""
    result = perf_project.runpytest("perf", "--perf-report", "out")
    result.assert_outcomes(passed=4)
    result.stdout.fnmatch_lines(["*model tiny_mlp*", "*tiny_mlp-fp32-onnxruntime_cpu-b1*"])
    document = json.loads((perf_project.path / "out" / "results.json").read_text())
    cases = {c["case_id"]: c for c in document["cases"]}
    assert sorted(cases) == [
        "tiny_mlp-fp32-onnxruntime_cpu-b1",
        "tiny_mlp-fp32-torch_cpu-b1",
        "tiny_mlp-int8_dynamic-onnxruntime_cpu-b1",
        "tiny_mlp-int8_dynamic-torch_cpu-b1",
    ]
    for case in cases.values():
        assert case["latency"]["p50_ms"] > 0 and case["latency"]["rounds"] >= 30
        assert len(case["samples_s"]) == case["latency"]["rounds"]
        assert case["accuracy"]["metric"] >= 0.95
    assert (perf_project.path / "out" / "report.md").read_text().startswith("# perfgate report")
