"""The regression gate: literal numbers, properties, and end to end on a real injected slowdown."""

from __future__ import annotations

import itertools
import json
import time
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from perfgate.drift import hardware_drift, settings_drift
from perfgate.gates import RegressionGate, RegressionPolicy, Verdict
from perfgate.reference_workload import measure_reference, reference_kernel

BASE = np.array([1.00, 1.02, 1.04, 1.06, 1.08, 1.10, 1.12, 1.14, 1.16, 1.18]) * 1e-3
GATE = RegressionGate(RegressionPolicy(threshold=0.10))


def test_significant_slowdown_beyond_threshold_fails() -> None:
    """Every sample 20% slower: ratio 1.2, CI above 1, p < 0.01, so the case fails."""
    verdict = GATE.compute(BASE * 1.2, BASE)
    assert verdict.status == "fail"
    assert verdict.values["ratio"] == pytest.approx(1.2)
    assert verdict.values["baseline_p50_ms"] == pytest.approx(1.09)
    assert verdict.values["current_p50_ms"] == pytest.approx(1.308)
    assert verdict.values["ratio_ci"] == pytest.approx([1.125, 1.2923], abs=1e-4)
    assert verdict.values["p_value"] == pytest.approx(9.13e-5, rel=1e-2)
    assert verdict.message.endswith("regressed")


def test_slowdown_within_threshold_passes() -> None:
    """5% slower is below the 10% practical threshold: unchanged."""
    verdict = GATE.compute(BASE * 1.05, BASE)
    assert (verdict.status, verdict.message.split(", ", 1)[1]) == (
        "pass",
        "x1.050 of the baseline: unchanged (within the threshold)",
    )


def test_large_but_insignificant_change_passes() -> None:
    """A 40% median shift between two bimodal sets that overlap is not significant (p = 0.084)."""
    baseline = np.array([1.0] * 5 + [2.0] * 5) * 1e-3
    current = np.array([1.0] * 4 + [2.0] + [2.2] * 5) * 1e-3
    verdict = GATE.compute(current, baseline)
    assert verdict.status == "pass" and verdict.values["ratio"] == pytest.approx(1.4)
    assert "not significant (p=0.084)" in verdict.message


def test_speedup_is_improved() -> None:
    """20% faster passes as improved, with the hint to refresh."""
    verdict = GATE.compute(BASE * 0.8, BASE)
    assert verdict.status == "improved" and not verdict.failed
    assert verdict.message.endswith("improved: refresh the baseline")


def test_missing_baseline_is_new() -> None:
    """No baseline samples: new, which passes (--perf-require-baseline makes it fail, end to end below)."""
    assert GATE.compute(BASE, None).status == "new"


def test_uniformly_slower_machine_is_normalized() -> None:
    """Every sample 30% slower, and the reference workload 30% slower too: unchanged, ratio 1."""
    verdict = GATE.compute(BASE * 1.3, BASE, reference_factor=1.3)
    assert verdict.status == "pass" and verdict.values["ratio"] == pytest.approx(1.0)
    assert verdict.values["raw_ratio"] == pytest.approx(1.3)
    unnormalized = RegressionGate(RegressionPolicy(normalize=False)).compute(
        BASE * 1.3, BASE, reference_factor=1.3
    )
    assert unnormalized.status == "fail"


def test_median_only_baseline_uses_the_threshold_alone() -> None:
    """A baseline without raw samples (one median) is judged on the threshold, and says so."""
    verdict = GATE.compute(BASE * 1.2, np.array([1.09e-3]))
    assert (
        verdict.status == "fail" and "threshold only" in verdict.message and "ratio_ci" not in verdict.values
    )


def test_verdict_is_reproducible() -> None:
    """The bootstrap is seeded: the same samples give the same interval, run after run."""
    rng = np.random.default_rng(3)
    current, baseline = rng.lognormal(0, 0.2, 500), rng.lognormal(0, 0.2, 500)
    assert GATE.compute(current, baseline).values == GATE.compute(current, baseline).values


def _sample_sets() -> st.SearchStrategy[np.ndarray]:
    return st.lists(st.floats(1e-5, 1e-2), min_size=5, max_size=60).map(lambda xs: np.asarray(xs))


FLIP = {"fail": "improved", "improved": "fail", "pass": "pass"}
FAST = RegressionPolicy(resamples=200)


@settings(max_examples=60, deadline=None)
# Powers of two scale floats exactly: any other factor can round two distinct samples into a tie.
@given(current=_sample_sets(), baseline=_sample_sets(), factor=st.sampled_from([0.25, 0.5, 1.0, 2.0, 4.0]))
def test_comparison_is_antisymmetric(current: np.ndarray, baseline: np.ndarray, factor: float) -> None:
    """Swapping baseline and current (and inverting the machine factor) turns a slowdown into a speed-up."""
    gate = RegressionGate(FAST)
    forward, backward = gate.compute(current, baseline, factor), gate.compute(baseline, current, 1 / factor)
    assert forward.values["ratio"] * backward.values["ratio"] == pytest.approx(1.0)
    assert forward.values["p_value"] == pytest.approx(backward.values["p_value"])
    ratio = forward.values["ratio"]
    if not np.isclose(ratio, 1.1) and not np.isclose(ratio, 1 / 1.1):  # off the threshold's edge
        assert backward.status == FLIP[forward.status]


@settings(max_examples=40, deadline=None)
@given(samples=_sample_sets(), k=st.floats(0.2, 5.0))
def test_scaled_copy_gives_ratio_k(samples: np.ndarray, k: float) -> None:
    """The same samples scaled by k compare at ratio k, and at ratio 1 once the machine factor is k."""
    gate = RegressionGate(FAST)
    assert gate.compute(samples * k, samples).values["ratio"] == pytest.approx(k)
    assert gate.compute(samples * k, samples, reference_factor=k).values["ratio"] == pytest.approx(1.0)


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
        [f"*{SLOWED}: regression gate failed*", "*regressed (confirmed: the first measurement read x*"]
    )
    slowed.stdout.fnmatch_lines(
        [
            "case*base p50 ms*now p50 ms*ratio*95% CI*machine*verdict*",
            f"{SLOWED}*fail",
            "ratio: p50 now / p50 baseline, divided by the machine factor*",
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
    tiny_row = next(line for line in refreshed.outlines if line.startswith(TINY) and "[" in line)
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
    """A burst of noise during one measurement is not a regression; a repeated slowdown is."""
    from perfgate.execution import _confirmed

    first = Verdict("regression", "fail", "x1.300 slower", {"ratio": 1.30})
    transient = _confirmed(
        first, Verdict("regression", "pass", "x1.010 of the baseline: unchanged", {"ratio": 1.01})
    )
    assert transient.status == "pass"
    assert transient.values["first_ratio"] == 1.30 and transient.values["ratio"] == 1.01
    assert "a first measurement read x1.300 and was not confirmed" in transient.message
    real = _confirmed(first, Verdict("regression", "fail", "x1.280 slower", {"ratio": 1.28}))
    assert real.status == "fail" and "(confirmed: the first measurement read x1.300)" in real.message
    assert real.values["confirmations"] == 1


def test_the_machine_factor_excuses_but_never_accuses() -> None:
    """A faster reference workload alone cannot fail a case; a uniformly slower machine is excused."""
    rng = np.random.default_rng(0)
    base = 1e-4 * (1 + 0.01 * rng.standard_normal(500))
    gate = RegressionGate(RegressionPolicy(threshold=0.05))
    same = 1e-4 * (1 + 0.01 * rng.standard_normal(500))
    # The reference read 13% faster while the case ran at its baseline speed (seen on this runner).
    assert gate.compute(same, base, reference_factor=0.87).status == "pass"
    slower_machine = same * 1.25
    excused = gate.compute(slower_machine, base, reference_factor=1.22)
    assert excused.status == "pass" and "the whole machine is slower" in excused.message
    assert gate.compute(slower_machine, base, reference_factor=1.0).status == "fail"
