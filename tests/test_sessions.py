"""Sessions end to end: repeats spread over the run, confirmations after the other cases, each
through pytest-benchmark's own loop, every session kept in results.json and the baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from conftest import SLOWED_MODEL
from perfgate.baselines import load_baseline

SLOWED = "slowed_mlp-fp32-torch_cpu-b1"
TINY = "tiny_mlp-fp32-torch_cpu-b1"


def run(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, delay_us: str, *args: str
) -> pytest.RunResult:
    monkeypatch.setenv("PERFGATE_TEST_DELAY_US", delay_us)
    return project.runpytest_inprocess("perf", "-k", "fp32 and torch", "--perf-report", "out", *args)


@pytest.fixture
def project(perf_project: pytest.Pytester) -> pytest.Pytester:
    """The tiny project with the slowed MLP first: selected, its cases are SLOWED then TINY."""
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(matrix.read_text().replace("[models.tiny_mlp]", SLOWED_MODEL + "\n[models.tiny_mlp]"))
    return perf_project


def results(project: pytest.Pytester) -> dict[str, Any]:
    return json.loads((project.path / "out" / "results.json").read_text())


def timed_order(project: pytest.Pytester) -> list[str]:
    """The cases in the order they were timed, from the run's journal: one entry per session."""
    journal = Path(results(project)["journal"])
    events = [json.loads(line) for line in journal.read_text().splitlines()]
    return [e["case_id"] for e in events if e["event"] == "step" and e["step"] == "timing"]


def test_a_refresh_measures_k_sessions_round_robin_and_stores_each(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--perf-repeats 3: each case is timed three times, the rounds interleaved over the cases,
    reported once, and the baseline holds each session's summary and its slice of the samples."""
    result = run(project, monkeypatch, "0", "--perf-refresh-baselines", "--perf-repeats", "3")
    result.assert_outcomes(passed=2, deselected=6)
    assert timed_order(project) == [SLOWED, TINY] * 3
    stored = load_baseline(project.path / "baselines" / "test-runner" / "0001_baseline.json")
    assert stored is not None
    document = stored.document
    for case_id in (SLOWED, TINY):
        sessions = document["perfgate"]["cases"][case_id]["sessions"]
        assert [s["kind"] for s in sessions] == ["first", "repeat", "repeat"]
        data = next(b for b in document["benchmarks"] if b["params"]["perf_case"] == case_id)["stats"]["data"]
        slices = [s["samples"] for s in sessions]  # each session's share of the stored samples, in order
        assert slices[0][0] == 0 and slices[-1][1] == len(data) <= 2000
        assert all(
            a[1] == b[0] and a[0] < a[1] for a, b in zip(slices, [*slices[1:], [len(data)]], strict=True)
        )
        assert all(s["reference_us"] > 0 for s in sessions)
        assert len(stored.cases[case_id].sessions) == 3
    case = next(c for c in results(project)["cases"] if c["case_id"] == TINY)
    assert [s["kind"] for s in case["sessions"]] == ["first", "repeat", "repeat"]
    assert len(case["samples_s"]) == sum(s["n"] for s in case["sessions"])
    # pytest-benchmark's table shows each session as a row of its own.
    result.stdout.fnmatch_lines([f"*test_case[[]{TINY}[]] [[]repeat, session 3[]]*"])


def test_a_regression_is_confirmed_after_the_other_cases_through_the_same_loop(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A real slowdown fails its first reading; the case is timed again after TINY, in a fresh
    pass, and fails only because that confirmation fails too. pytest reports it once."""
    run(project, monkeypatch, "0", "--perf-refresh-baselines", "--perf-repeats", "2").assert_outcomes(passed=2, deselected=6)  # fmt: skip
    result = run(project, monkeypatch, "500", "--benchmark-compare")
    result.assert_outcomes(passed=1, failed=1, deselected=6)
    assert timed_order(project) == [SLOWED, TINY, SLOWED]
    case = next(c for c in results(project)["cases"] if c["case_id"] == SLOWED)
    assert [(s["kind"], s["kept"]) for s in case["sessions"]] == [("first", True), ("confirmation", True)]
    verdict = next(v for v in case["verdicts"] if v["gate"] == "regression")
    assert verdict["status"] == "fail" and len(verdict["values"]["readings"]) == 2
    assert all(r > 5 for r in verdict["values"]["readings"])
    result.stdout.fnmatch_lines(
        ["*regressed (confirmed: first reading x*; confirmation 1, after the other cases, x*)"]
    )
    result.stdout.fnmatch_lines([f"*test_case[[]{SLOWED}[]] [[]confirmation, session 2[]]*"])


def test_a_compare_with_repeats_judges_the_median_of_its_sessions(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    run(project, monkeypatch, "0", "--perf-refresh-baselines", "--perf-repeats", "2").assert_outcomes(passed=2, deselected=6)  # fmt: skip
    result = run(
        project,
        monkeypatch,
        "0",
        "--benchmark-compare",
        "--perf-repeats",
        "3",
        "-k",
        "tiny and fp32 and torch",
    )
    result.assert_outcomes(passed=1, deselected=7)
    verdict = next(v for v in results(project)["cases"][0]["verdicts"] if v["gate"] == "regression")
    assert len(verdict["values"]["current_sessions_ms"]) == 3
    assert len(verdict["values"]["baseline_sessions_ms"]) == 2


def test_repeats_under_isolation_are_served_by_the_child(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """--perf-isolate: each session of a repeat is measured in the child, and all are stored."""
    result = run(project, monkeypatch, "0", "--perf-isolate", "--perf-refresh-baselines", "--perf-repeats", "2", "-k", "tiny and fp32 and torch")  # fmt: skip
    result.assert_outcomes(passed=1, deselected=7)
    stored = load_baseline(project.path / "baselines" / "test-runner" / "0001_baseline.json")
    assert stored is not None and [s.kind for s in stored.cases[TINY].sessions] == ["first", "repeat"]


def test_zero_repeats_is_a_usage_error(project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    result = run(project, monkeypatch, "0", "--perf-repeats", "0")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--perf-repeats 0: a case needs at least 1 session*"])
