"""The regression gate: literal numbers, properties, and end to end on a real injected slowdown."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perfgate.drift import hardware_drift, settings_drift
from perfgate.gates import RegressionGate, RegressionPolicy, Verdict
from perfgate.reference_workload import measure_reference, reference_kernel
from perfgate.sessions import SessionSummary


def sessions(*p50_us: float, reference_us: float | None = None) -> list[SessionSummary]:
    """Session summaries with these p50s (in microseconds), as a refresh's repeats store them."""
    return [
        SessionSummary(p * 1e-6, p * 1.1e-6, p * 1.3e-6, 0.02, 500, "repeat", reference_us) for p in p50_us
    ]


# Three baseline sessions of a steady case, 2% apart: median 101 us, half-spread 1/101, so the
# limits are 101 x (1.05 x 1.0099) = 107.1 us and 101 / 1.0604 = 95.25 us.
BASE = sessions(100.0, 101.0, 102.0)
GATE = RegressionGate(RegressionPolicy(threshold=0.05))


def test_beyond_the_median_widened_by_half_spread_and_threshold_fails() -> None:
    """108 us is beyond 107.1 us: it fails, with every figure named."""
    verdict = GATE.compute(sessions(108.0), BASE)
    assert verdict.status == "fail"
    assert verdict.values["upper_limit_ms"] == pytest.approx(0.10710, abs=1e-5)
    assert verdict.values["half_spread"] == pytest.approx(1 / 101)
    assert verdict.values["ratio"] == pytest.approx(108 / 101)
    assert verdict.values["baseline_sessions_ms"] == pytest.approx([0.100, 0.101, 0.102])
    assert verdict.message == (
        "p50 0.101 ms -> 0.108 ms (x1.069), baseline's 3 sessions 0.1-0.102 ms, limits 0.09525-0.1071 ms "
        "(their median +-5%, widened by their half-spread 1.0%): regressed"
    )


def test_within_the_limit_passes() -> None:
    """107 us is 5.9% above the baseline's median, within the sessions' own spread + 5%: unchanged."""
    verdict = GATE.compute(sessions(107.0), BASE)
    assert verdict.status == "pass" and verdict.message.endswith(": unchanged")


def test_below_the_mirror_limit_is_improved() -> None:
    verdict = GATE.compute(sessions(95.0), BASE)
    assert verdict.status == "improved" and verdict.message.endswith("improved: refresh the baseline")
    assert GATE.compute(sessions(95.3), BASE).status == "pass"  # above 95.25


def test_the_current_reading_is_the_median_of_its_sessions() -> None:
    """One slow session among three (a neighbour's burst) does not move the median: unchanged."""
    verdict = GATE.compute(sessions(101.0, 130.0, 102.0), BASE)
    assert verdict.status == "pass" and verdict.values["current_p50_ms"] == pytest.approx(0.102)


def test_missing_baseline_is_new() -> None:
    """No baseline sessions: new, which passes (--perf-require-baseline makes it fail, end to end below)."""
    assert GATE.compute(sessions(100.0), []).status == "new"


def test_one_burst_session_in_the_baseline_neither_widens_nor_blinds_the_gate() -> None:
    """A baseline refreshed while a neighbour burst through one session (x1.3): the limit stays at
    107.1 us, so +7% still fails; the case is marked unstable, naming the spread."""
    burst = sessions(100.0, 101.0, 130.0)
    verdict = GATE.compute(sessions(108.0), burst)
    assert verdict.status == "fail" and verdict.values["unstable"]
    assert verdict.values["upper_limit_ms"] == pytest.approx(0.10710, abs=1e-5)
    assert "unstable at 5%: its sessions vary by 30.0%" in verdict.message


def test_a_case_whose_sessions_scatter_gets_limits_as_wide() -> None:
    """Sessions 96, 101, 106 us (half-spread 5/101): limit 101 x 1.05 x 1.0495 = 111.3 us."""
    scatter = sessions(96.0, 101.0, 106.0)
    assert GATE.compute(sessions(111.0), scatter).status == "pass"
    assert GATE.compute(sessions(112.0), scatter).status == "fail"


def test_one_baseline_session_says_its_spread_is_unknown() -> None:
    """A baseline of one session (a file from before repeats) is judged on the threshold, and says so."""
    verdict = GATE.compute(sessions(106.0), sessions(100.0))
    assert verdict.status == "fail"
    assert "1 baseline session: how far sessions fall apart is unknown" in verdict.message


REAL = json.loads((Path(__file__).parent / "data" / "sessions_aa.json").read_text())["cases"]


def old_rule(case: dict[str, Any]) -> str:
    """The gate before sessions, for contrast: one baseline session's raw samples against the
    reading's, failing when the p50 ratio is beyond the threshold and a one-sided Mann-Whitney U
    test gives p < 0.01 (as if the samples were independent; they are not)."""
    from scipy.stats import mannwhitneyu

    base, now = np.asarray(case["baseline_samples_s"]), np.asarray(case["current_samples_s"])
    beyond = np.median(now) / np.median(base) > 1 + case["old_threshold"]
    return "fail" if beyond and mannwhitneyu(now, base, alternative="greater").pvalue < 0.01 else "pass"


@pytest.mark.parametrize("case", REAL, ids=[f"{c['case_id']}+{c['level']:.0%}" for c in REAL])
def test_real_comparisons_measured_across_processes_on_this_machine(case: dict[str, Any]) -> None:
    """Comparisons recorded by benchmarks/gate_power.py and suite_aa.py: three baseline sessions of
    a refresh, and the reading (and its confirmation) of a later, separate pytest process.
    Unchanged code that the old rule called a regression passes; a real +20% slowdown fails."""
    baseline = [SessionSummary.from_dict(s) for s in case["baseline"]]
    gate = RegressionGate(RegressionPolicy(threshold=case["threshold"]))
    verdict = gate.compute([SessionSummary.from_dict(case["current"])], baseline)
    if verdict.failed and case["confirmation"]:  # the run's confirmation, after the other cases
        verdict = gate.compute([SessionSummary.from_dict(case["confirmation"])], baseline)
    if case["level"] == 0.0:
        assert verdict.status != "fail", verdict.message
        assert old_rule(case) == "fail"  # the false alarm this gate exists to remove
    else:
        assert verdict.status == "fail", verdict.message


def test_machine_factor_is_off_by_default_and_only_excuses_when_on() -> None:
    """Off by default; on, a reference 13% faster cannot fail a case, and a 25% slower machine is excused."""
    slower_machine = sessions(126.0)
    assert GATE.compute(slower_machine, BASE, reference_factor=1.25).status == "fail"
    on = RegressionGate(RegressionPolicy(threshold=0.05, normalize=True))
    assert on.compute(sessions(101.0), BASE, reference_factor=0.87).status == "pass"
    excused = on.compute(slower_machine, BASE, reference_factor=1.25)
    assert excused.status == "pass" and "machine factor 1.250" in excused.message


FLIP = {"fail": "improved", "improved": "fail", "pass": "pass"}
p50s = st.lists(st.floats(10.0, 10_000.0), min_size=1, max_size=5)


@settings(max_examples=80, deadline=None)
@given(now=p50s, then=p50s)
def test_the_limits_hold_whatever_the_sessions(now: list[float], then: list[float]) -> None:
    """Never a regression within the threshold of the baseline sessions' median; always one beyond
    the upper limit; and the limit never sits below median x (1 + threshold)."""
    verdict = GATE.compute(sessions(*now), sessions(*then))
    median_now, median_then = float(np.median(now)), float(np.median(then))
    assert verdict.values["upper_limit_ms"] >= median_then * 1.05e-3 * (1 - 1e-12)
    if median_now <= median_then * 1.05:
        assert verdict.status != "fail"
    if median_now * 1e-3 > verdict.values["upper_limit_ms"] * (1 + 1e-9):
        assert verdict.status == "fail"


@settings(max_examples=60, deadline=None)
@given(now=p50s, then=p50s)
def test_comparison_is_antisymmetric_for_one_session_each(now: list[float], then: list[float]) -> None:
    """With one session on each side, swapping them turns a slowdown into an improvement."""
    forward = GATE.compute(sessions(now[0]), sessions(then[0]))
    backward = GATE.compute(sessions(then[0]), sessions(now[0]))
    assert forward.values["ratio"] * backward.values["ratio"] == pytest.approx(1.0)
    if not np.isclose(forward.values["ratio"], 1.05) and not np.isclose(forward.values["ratio"], 1 / 1.05):
        assert backward.status == FLIP[forward.status]


def _spin(seconds: float) -> None:
    """Busy-wait for ``seconds``: a call that lasts at least that long, whatever the scheduler does."""
    end = time.perf_counter() + seconds
    while time.perf_counter() < end:
        pass


def test_reference_workload_reads_seconds_in_a_plausible_range() -> None:
    """The default kernel (about 16 us on a 2020s core) reads between 1 us and 10 ms: seconds, not ms or ns."""
    assert 1e-6 < measure_reference() < 1e-2


def test_reference_workload_reads_the_median_call() -> None:
    """Calls cycling 100 us, 300 us x3, 5 ms read ~300 us: not the min (100 us) nor the mean (~1.2 ms)."""
    durations = itertools.cycle([100e-6, 300e-6, 300e-6, 300e-6, 5e-3])

    def bursty() -> None:
        _spin(next(durations))

    assert 300e-6 <= measure_reference(min_rounds=50, min_time_s=0.0, kernel=bursty) < 600e-6


def test_reference_workload_reads_twice_the_time_for_twice_the_work() -> None:
    """The kernel doing its work twice reads 1.6x to 2.4x of once: the given kernel is what is timed.

    The two are measured alternately (A, B, A, B, ...) and their medians compared, so that a
    neighbour's burst on a shared machine hits both sides alike instead of one whole side.
    """
    once = reference_kernel()

    def twice() -> None:
        once()
        once()

    single: list[float] = []
    double: list[float] = []
    for _ in range(5):
        single.append(measure_reference(kernel=once))
        double.append(measure_reference(kernel=twice))
    assert 1.6 <= float(np.median(double)) / float(np.median(single)) <= 2.4


def test_reference_workload_honours_min_rounds_and_min_time() -> None:
    """At least ``min_rounds`` calls with no time floor, and calls for at least ``min_time_s``."""
    calls = 0

    def counted() -> None:
        nonlocal calls
        calls += 1

    measure_reference(min_rounds=500, min_time_s=0.0, kernel=counted)
    assert calls >= 500
    calls = 0
    # One round: only the time floor keeps it calling, for 50 ms of a kernel that takes ~0.1 us
    # (tens of thousands of calls; a warmup alone is a few dozen). The wall time, not the span of
    # the calls, is compared: a preemption just before the deadline may end the calls early.
    start = time.perf_counter()
    measure_reference(min_rounds=1, min_time_s=0.05, kernel=counted)
    assert time.perf_counter() - start >= 0.05
    assert calls >= 1000


def test_drift_lists_what_changed_but_not_the_clock() -> None:
    """CPU model, cores, library versions and thread settings are drift; a clock reading is not compared."""
    old = {"cpu_model": "Xeon A", "cpu_cores": 2, "libraries": {"torch": "2.4.0", "onnxruntime": "1.18.0"}}
    new = {"cpu_model": "Xeon B", "cpu_cores": 4, "libraries": {"torch": "2.4.0", "onnxruntime": "1.19.0"}}
    assert [d.line() for d in hardware_drift(old, new)] == [
        "cpu_model: Xeon A -> Xeon B",
        "cpu_cores: 2 -> 4",
        "library onnxruntime: 1.18.0 -> 1.19.0",
    ]
    assert hardware_drift({**old, "hz_actual": 2.1e9}, {**old, "hz_actual": 3.4e9}) == []
    lines = [
        d.line()
        for d in settings_drift("c", {"intra_op_threads": 1, "warmup_rounds": 5}, {"intra_op_threads": 2})
    ]
    assert lines == ["c: intra_op_threads: 1 -> 2"]


# ---- end to end, through pytester, on a real injected slowdown --------------------------------

SLOWED_MATRIX = """
pythonpath = ["{tests}"]
batch_sizes = [1]

[timing]
warmup_rounds = 5
warmup_time_s = 0.0
min_rounds = 200
min_time_s = 0.05

[regression]
threshold = {threshold}

[models.slowed_mlp]
factory = "tiny_models:slowed_mlp"
data = "tiny_models:blobs"
metric = "top1"
{extra_model}
[techniques.fp32]

[backends.torch_cpu]
"""
TINY_MODEL = """
[models.tiny_mlp]
factory = "tiny_models:tiny_mlp"
data = "tiny_models:blobs"
metric = "top1"
"""
SLOWED = "slowed_mlp-fp32-torch_cpu-b1"
TINY = "tiny_mlp-fp32-torch_cpu-b1"
# About 10x the tiny MLP's p50: a slowdown no noise on a shared runner can hide or fake.
DELAY_US = "500"


@pytest.fixture
def gate_project(perf_project: pytest.Pytester) -> pytest.Pytester:
    """The pytester project with a matrix of the slowed MLP (delay from PERFGATE_TEST_DELAY_US) and the tiny MLP."""
    write_matrix(perf_project, threshold=0.5, extra_model=TINY_MODEL)
    return perf_project


def write_matrix(project: pytest.Pytester, threshold: float, extra_model: str = "") -> None:
    text = SLOWED_MATRIX.format(
        tests=Path(__file__).parent.as_posix(), threshold=threshold, extra_model=extra_model
    )
    (project.path / "perf" / "matrix.toml").write_text(text)


def run(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, delay_us: str, *args: str
) -> pytest.RunResult:
    """One pytest run of the project, in process: a subprocess per run would cost seconds of imports."""
    monkeypatch.setenv("PERFGATE_TEST_DELAY_US", delay_us)
    return project.runpytest_inprocess("perf", *args)


def baseline_file(project: pytest.Pytester) -> Path:
    return project.path / "baselines" / "test-runner" / "0001_baseline.json"


def stored_p50(project: pytest.Pytester) -> dict[str, float]:
    document = json.loads(baseline_file(project).read_text())
    return {b["params"]["perf_case"]: b["stats"]["median"] for b in document["benchmarks"]}


def test_gate_and_baseline_lifecycle_on_a_real_injected_slowdown(
    gate_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """New, then a real busy-wait in the forward fails (so does a compare-fail rule), A/A passes,
    --perf-refresh-changed takes only the regressed case, -k refreshes a subset (improved), and
    --perf-prune-baselines removes a case dropped from the matrix."""
    first = run(gate_project, monkeypatch, "0", "--benchmark-compare", "--perf-refresh-baselines")
    first.assert_outcomes(passed=2)
    first.stdout.fnmatch_lines([f"{SLOWED}*new", f"*added  {SLOWED}  p50 - -> *"])
    before = stored_p50(gate_project)

    # pytest-benchmark's own saves go to its own storage, never beside the baseline, and never
    # become what the gate compares with (a slowed autosave would make the fast code "improved").
    saved = run(gate_project, monkeypatch, DELAY_US, "-k", "slowed", "--benchmark-autosave")
    saved.assert_outcomes(passed=1)
    assert sorted(p.name for p in baseline_file(gate_project).parent.iterdir()) == [
        ".0001_baseline.json.lock",
        "0001_baseline.json",
    ]
    assert list((gate_project.path / ".benchmarks").rglob("0001_*.json"))
    after_save = run(gate_project, monkeypatch, "0", "-k", "slowed", "--benchmark-compare")
    after_save.assert_outcomes(passed=1)
    after_save.stdout.fnmatch_lines([f"{SLOWED}*pass"])

    monkeypatch.setenv("PERFGATE_TEST_DELAY_US", DELAY_US)
    slowed = gate_project.runpytest_subprocess("perf", "-k", "slowed", "--benchmark-compare")
    slowed.stdout.fnmatch_lines(
        [
            f"*{SLOWED}: regression gate failed*",
            "*regressed (confirmed: first reading x*; confirmation 1, after the other cases, x*)",
        ]
    )
    slowed.stdout.fnmatch_lines(
        [
            "case*base p50 ms*base sessions ms*now p50 ms*ratio*limit ms*verdict*",
            f"{SLOWED}*(3)*fail",
            "p50: the median of a case's sessions' p50s; ratio: now / baseline; limit: *",
            "environment drift since the baseline: none",
        ]
    )

    run(gate_project, monkeypatch, "0", "-k", "slowed", "--benchmark-compare").assert_outcomes(
        passed=1
    )  # A/A

    refreshed = run(gate_project, monkeypatch, DELAY_US, "--benchmark-compare", "--perf-refresh-changed")
    refreshed.stdout.fnmatch_lines([f"{SLOWED}*fail", f"*replaced  {SLOWED}  p50 *"])
    after = stored_p50(gate_project)
    assert after[SLOWED] > 5 * before[SLOWED]
    tiny_row = next(line for line in refreshed.outlines if line.startswith(TINY) and "(3)" in line)
    if tiny_row.endswith("pass"):  # the shared runner's noise may move it; unchanged means not refreshed
        assert after[TINY] == before[TINY]
    before = after

    subset = run(
        gate_project, monkeypatch, "0", "--benchmark-compare", "--perf-refresh-baselines", "-k", "slowed"
    )
    subset.assert_outcomes(passed=1, deselected=1)
    subset.stdout.fnmatch_lines([f"{SLOWED}*improved", f"*replaced  {SLOWED}  p50 *"])
    assert stored_p50(gate_project)[TINY] == before[TINY]

    write_matrix(gate_project, threshold=0.5)  # tiny_mlp is no longer in the matrix
    pruned = run(gate_project, monkeypatch, "0", "--perf-refresh-baselines", "--perf-prune-baselines")
    pruned.stdout.fnmatch_lines([f"*removed  {TINY}  p50 * -> - (no longer in the matrix)"])
    assert sorted(stored_p50(gate_project)) == [SLOWED]


def test_require_baseline(perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch) -> None:
    """With --perf-require-baseline a case without a baseline fails instead of passing as new."""
    write_matrix(perf_project, threshold=0.5)
    strict = run(perf_project, monkeypatch, "0", "--benchmark-compare", "--perf-require-baseline")
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(["*no baseline for this runner (--perf-require-baseline)*"])


@pytest.mark.parametrize(
    ("text", "option", "expected"),
    [
        ("{oops", "--benchmark-compare", "*is not valid JSON*git checkout*"),
        (
            '{"benchmarks": [], "perfgate": {"schema_version": 7}}',
            "--perf-refresh-baselines",
            "*schema version 7*upgrade perfgate*",
        ),
    ],
)
def test_unreadable_baseline_stops_the_run_and_is_kept(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, text: str, option: str, expected: str
) -> None:
    """A corrupt or wrong-version baseline is a usage error naming the file and the fix; it is not overwritten."""
    write_matrix(perf_project, threshold=0.5)
    path = baseline_file(perf_project)
    path.parent.mkdir(parents=True)
    path.write_text(text)
    result = run(perf_project, monkeypatch, "0", option)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*{path}*"])
    result.stderr.fnmatch_lines([expected])
    assert path.read_text() == text


def test_refresh_changed_needs_compare(perf_project: pytest.Pytester) -> None:
    """--perf-refresh-changed without --benchmark-compare is a usage error that says why."""
    result = perf_project.runpytest_inprocess("perf", "--perf-refresh-changed")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--perf-refresh-changed needs --benchmark-compare*"])


def test_a_failure_stands_only_when_its_confirmation_fails_too() -> None:
    """A burst of noise during one reading is not a regression; a repeated slowdown is. The verdict
    names every reading that was taken."""
    from perfgate.execution import _confirmed

    first = Verdict("regression", "fail", "x1.300", {"ratio": 1.30, "current_p50_ms": 0.13})
    transient = _confirmed(first, Verdict("regression", "pass", "p50 ...: unchanged", {"ratio": 1.01}))
    assert transient.status == "pass" and transient.values["readings"] == [1.30, 1.01]
    assert transient.message == (
        "p50 ...: unchanged; not confirmed (first reading x1.300; confirmation 1, after the other "
        "cases, x1.010): the reading is not kept"
    )
    real = _confirmed(first, Verdict("regression", "fail", "p50 ...: regressed", {"ratio": 1.28}))
    assert real.status == "fail" and real.values["confirmations"] == 1
    assert real.message.endswith("(confirmed: first reading x1.300; confirmation 1, after the other cases, x1.280)")  # fmt: skip
    again = _confirmed(real, Verdict("regression", "fail", "p50 ...: regressed", {"ratio": 1.29}))
    assert again.values["readings"] == [1.30, 1.28, 1.29] and again.values["first_p50_ms"] == 0.13
