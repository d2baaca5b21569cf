"""Verdicts that cannot lie: the baseline the gate reads, its validation, accuracy against it,
any metric direction and output scale, incomparable environments. Each test failed on the code
before these fixes (the issue's item number is in its docstring)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from conftest import TINY_MATRIX
from perfgate.accuracy import AccuracyResult, Fidelity
from perfgate.baselines import BaselineError, load_baseline, refresh
from perfgate.gates import AccuracyPolicy, BaselineAccuracyGate, TaskMetricGate
from perfgate.results import CaseResult
from perfgate.stats import LatencyStats

TESTS = Path(__file__).parent
FP32_TORCH = "tiny_mlp-fp32-torch_cpu-b1"


def baseline_file(project: pytest.Pytester, runner: str = "test-runner") -> Path:
    return project.path / "baselines" / runner / "0001_baseline.json"


def run(
    project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, *args: str, **env: str
) -> pytest.RunResult:
    """One in-process run of the project's perf suite with ``env`` set (and unset afterwards)."""
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    try:
        return project.runpytest_inprocess("perf", *args)
    finally:
        for name in env:
            monkeypatch.delenv(name)


def edit_matrix(project: pytest.Pytester, old: str, new: str) -> None:
    matrix = project.path / "perf" / "matrix.toml"
    text = matrix.read_text()
    assert old in text
    matrix.write_text(text.replace(old, new))


# ---- 1, 2, 3, 7: the gate reads perfgate's own file, by case id, wherever it lies -------------


def test_a_newer_file_beside_the_baseline_is_never_compared(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 1: a 0002_*.json beside 0001_baseline.json (what --benchmark-save wrote there) with a
    10x faster p50 must not be what the gate compares with."""
    run(perf_project, monkeypatch, "-k", "fp32 and torch", "--perf-refresh-baselines").assert_outcomes(
        passed=1
    )
    document = json.loads(baseline_file(perf_project).read_text())
    for entry in document["benchmarks"]:
        entry["stats"]["data"] = [x / 10 for x in entry["stats"]["data"]]
        entry["stats"]["median"] /= 10
    (baseline_file(perf_project).parent / "0002_saved.json").write_text(json.dumps(document))
    result = run(perf_project, monkeypatch, "-k", "fp32 and torch", "--benchmark-compare")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"{FP32_TORCH}*pass"])


@pytest.mark.parametrize("untimed", [["-n", "2"], ["--benchmark-disable"]])
def test_compare_without_timings_is_a_usage_error(perf_project: pytest.Pytester, untimed: list[str]) -> None:
    """Item 2: --benchmark-compare under xdist or --benchmark-disable judged nothing and passed."""
    result = perf_project.runpytest("perf", "--benchmark-compare", *untimed)
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--benchmark-compare needs timings*judge nothing*"])


def test_storage_inside_the_baselines_folder_is_refused(perf_project: pytest.Pytester) -> None:
    """Item 1: pytest-benchmark's storage may not point into baselines/, where its saves would land."""
    result = perf_project.runpytest("perf", "--benchmark-storage=file://baselines/test-runner")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines(["*--benchmark-storage*points into perfgate's baselines folder*"])


def test_a_renamed_test_file_keeps_its_baselines(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 3: baselines are keyed by case id, so moving the test file neither makes every case
    "new" nor leaves orphan entries after the next refresh."""
    run(perf_project, monkeypatch, "-k", "fp32", "--perf-refresh-baselines").assert_outcomes(passed=2)
    (perf_project.path / "perf" / "test_inference.py").rename(perf_project.path / "perf" / "test_moved.py")
    strict = run(perf_project, monkeypatch, "-k", "fp32", "--benchmark-compare", "--perf-require-baseline")
    strict.assert_outcomes(passed=2)
    run(perf_project, monkeypatch, "-k", "fp32", "--perf-refresh-baselines").assert_outcomes(passed=2)
    document = json.loads(baseline_file(perf_project).read_text())
    assert [b["fullname"] for b in document["benchmarks"]] == [
        "perf/test_moved.py::test_case[tiny_mlp-fp32-onnxruntime_cpu-b1]",
        f"perf/test_moved.py::test_case[{FP32_TORCH}]",
    ]


def test_baselines_outside_the_current_directory(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """Item 7: `cd perf && pytest .` and --perf-baselines elsewhere crashed with an INTERNALERROR."""
    elsewhere = tmp_path_factory.mktemp("elsewhere")
    options = ["-k", "fp32 and torch", f"--perf-baselines={elsewhere}"]
    run(perf_project, monkeypatch, *options, "--perf-refresh-baselines").assert_outcomes(passed=1)
    assert (elsewhere / "test-runner" / "0001_baseline.json").is_file()
    result = run(perf_project, monkeypatch, *options, "--benchmark-compare", "--perf-require-baseline")
    result.assert_outcomes(passed=1)
    run(perf_project, monkeypatch, "-k", "fp32 and torch", "--perf-refresh-baselines").assert_outcomes(
        passed=1
    )
    monkeypatch.chdir(perf_project.path / "perf")
    inside = perf_project.runpytest_inprocess(".", "-k", "fp32 and torch", "--benchmark-compare")
    inside.assert_outcomes(passed=1)
    assert "INTERNALERROR" not in inside.stdout.str() + inside.stderr.str()


# ---- 4: one measurement is the truth ---------------------------------------------------------

BURST_MATRIX = """
[models.burst_mlp]
factory = "tiny_models:burst_mlp"
data = "tiny_models:blobs"
metric = "top1"
"""


def test_an_overturned_reading_is_never_stored(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 4: a first reading slowed by a burst, overturned by the confirmation, is neither stored
    by a refresh nor shown in the tables: the verdict, the report and the baseline share one p50."""
    edit_matrix(perf_project, "[techniques.fp32]", BURST_MATRIX + "\n[techniques.fp32]")
    # The burst is x75; the confirmation, a fresh pass through pytest-benchmark's loop after the
    # other cases, reads the fast model: the tiny matrix's threshold of 100% tells them apart.
    edit_matrix(perf_project, "[timing]", "[threads]\nintra_op = 1\ninter_op = 1\n\n[timing]")
    selection = ["-k", "burst and fp32 and torch"]
    run(perf_project, monkeypatch, *selection, "--perf-refresh-baselines").assert_outcomes(passed=1)
    fast_p50 = load_baseline(baseline_file(perf_project)).cases["burst_mlp-fp32-torch_cpu-b1"].p50_ms  # type: ignore[union-attr]
    # Slow through the first reading, fast in the confirmation: 4 calls for the reference outputs
    # (batch 64), 1 first inference, 200 for the accuracy pass, 5 warmup and 30 timed rounds (3 ms
    # each meets min_time_s) make 240; the confirmation's first inference and warmup absorb 2 more.
    result = run(
        perf_project,
        monkeypatch,
        *selection,
        "--benchmark-compare",
        "--perf-refresh-baselines",
        "--perf-repeats",
        "1",  # the reading is judged now, so that it is confirmed (3 repeats: their median is)
        "--perf-report",
        "out",
        PERFGATE_TEST_DELAY_US="3000",
        PERFGATE_TEST_BURST_CALLS="242",
    )
    result.assert_outcomes(passed=1)
    case = json.loads((perf_project.path / "out" / "results.json").read_text())["cases"][0]
    verdict = next(v for v in case["verdicts"] if v["gate"] == "regression")
    assert verdict["values"]["first_ratio"] > 10 and "not confirmed" in verdict["message"]
    assert [(s["kind"], s["kept"]) for s in case["sessions"]] == [("first", False), ("confirmation", True)]
    assert case["latency"]["p50_ms"] == pytest.approx(verdict["values"]["current_p50_ms"])
    stored = load_baseline(baseline_file(perf_project)).cases["burst_mlp-fp32-torch_cpu-b1"]  # type: ignore[union-attr]
    assert [s.kind for s in stored.sessions] == ["confirmation"]
    assert stored.p50_ms == pytest.approx(case["latency"]["p50_ms"], rel=1e-3)
    assert stored.p50_ms < 2 * fast_p50  # the confirmation's reading, not the burst's (x75)


# ---- 5: every baseline value is validated -----------------------------------------------------


def _written(tmp_path: Path) -> Path:
    path = tmp_path / "r" / "0001_baseline.json"
    result = CaseResult(
        case_id="m-fp32-x-b1",
        model="m",
        technique="fp32",
        backend="x",
        batch_size=1,
        device="cpu",
        runner="r",
        nodeid="perf/test_inference.py::test_case[m-fp32-x-b1]",
        accuracy={"metric": 0.9},
        latency=LatencyStats.from_samples([1e-3] * 6),
        samples_s=[1e-3] * 6,
    )
    refresh(path, "r", [result], {"perfgate": {"cpu_model": "x"}}, {})
    return path


def _bench(document: dict) -> dict:
    return document["benchmarks"][0]


@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        (lambda d: _bench(d)["stats"]["data"].__setitem__(2, math.nan), "a raw sample is nan"),
        (lambda d: _bench(d)["stats"]["data"].__setitem__(0, -1e-3), "a raw sample is -0.001"),
        (lambda d: _bench(d)["stats"].update(data=[0.0] * 6), "a raw sample is 0.0"),
        (lambda d: _bench(d)["stats"].update(data=[]), "0 raw samples, fewer than the 5"),
        (lambda d: _bench(d)["stats"].update(median=-1e-3), "stats.median is -0.001"),
        (lambda d: _bench(d).pop("stats"), "no 'stats.data' list"),
        (
            lambda d: d["perfgate"]["cases"]["m-fp32-x-b1"]["accuracy"].update(metric=math.inf),
            "task metric is inf",
        ),
        (
            lambda d: d["perfgate"]["cases"]["m-fp32-x-b1"]["settings"].update(reference_workload_p50_us=-3),
            "reference_workload_p50_us is -3",
        ),
        (lambda d: d["benchmarks"].clear(), "no samples entry"),
    ],
)
def test_bad_baseline_values_name_the_file_the_case_and_the_fix(
    tmp_path: Path, damage, expected: str
) -> None:
    """Item 5: NaN, negative, zero or missing samples, a negative median, a missing stats block,
    a non-finite metric or reference: each is an error naming the file, the case and the fix."""
    path = _written(tmp_path)
    document = json.loads(path.read_text())
    damage(document)
    text = json.dumps(document)
    path.write_text(text)
    with pytest.raises(BaselineError) as excinfo:
        load_baseline(path)
    message = str(excinfo.value)
    assert f"baseline {path}: case m-fp32-x-b1:" in message and expected in message
    assert "git checkout --" in message and "--perf-refresh-baselines" in message
    assert path.read_text() == text


def test_a_bad_value_stops_compare_and_leaves_the_file(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 5, end to end: a NaN sample is a usage error, not a silent "ratio nan" pass."""
    run(perf_project, monkeypatch, "-k", "fp32 and torch", "--perf-refresh-baselines").assert_outcomes(
        passed=1
    )
    path = baseline_file(perf_project)
    text = path.read_text().replace('"data": [', '"data": [NaN, ', 1)
    path.write_text(text)
    result = perf_project.runpytest("perf", "-k", "fp32 and torch", "--benchmark-compare")
    assert result.ret == pytest.ExitCode.USAGE_ERROR
    result.stderr.fnmatch_lines([f"*baseline {path}: case {FP32_TORCH}: a raw sample is nan*"])
    assert path.read_text() == text


# ---- 6: prune keeps what the whole matrix still has -------------------------------------------


def test_prune_under_a_profile_keeps_the_cases_outside_it(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 6: --perf-prune-baselines with --perf-profile deleted live int8_dynamic baselines."""
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(matrix.read_text() + '\n[profiles.fp32_only]\ntechniques = ["fp32"]\n')
    run(perf_project, monkeypatch, "-k", "torch", "--perf-refresh-baselines").assert_outcomes(passed=2)
    pruned = run(
        perf_project,
        monkeypatch,
        "--perf-profile",
        "fp32_only",
        "--perf-refresh-baselines",
        "--perf-prune-baselines",
    )
    pruned.assert_outcomes(passed=2)
    assert "removed" not in pruned.stdout.str()
    assert "tiny_mlp-int8_dynamic-torch_cpu-b1" in load_baseline(baseline_file(perf_project)).cases  # type: ignore[union-attr]


# ---- 8: accuracy against the baseline --------------------------------------------------------


def test_a_worse_model_fails_against_the_baseline(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 8: damaged weights lower every case's metric, the FP32 reference's too, and each
    variant still follows its (worse) reference; only the baseline's metric can catch it."""
    edit_matrix(perf_project, 'factory = "tiny_models:tiny_mlp"', 'factory = "tiny_models:damaged_mlp"')
    run(perf_project, monkeypatch, "-k", "fp32", "--perf-refresh-baselines").assert_outcomes(passed=2)
    result = run(perf_project, monkeypatch, "-k", "fp32", "--benchmark-compare", PERFGATE_TEST_DAMAGE="1")
    result.assert_outcomes(failed=2)
    result.stdout.fnmatch_lines(
        [
            f"*{FP32_TORCH}: accuracy gate failed*",
            "*baseline_accuracy: top1 0.* vs the baseline's 1.0000 (higher is better): falls below the required 0.9900 (99.00% of the baseline's)*",
        ]
    )


def _accuracy(metric: float, reference: float, direction: str = "higher") -> AccuracyResult:
    return AccuracyResult("m", metric, reference, Fidelity(1.0, math.inf, 1.0, 0.0, True), 100, direction)


def test_baseline_accuracy_gate_literal_numbers() -> None:
    """Item 8: 1% of the baseline's metric by default, either direction; an absolute tolerance instead when set."""
    gate = BaselineAccuracyGate(AccuracyPolicy())
    assert gate.compute(_accuracy(0.9901, 0.99), 1.0).status == "pass"  # type: ignore[union-attr]
    assert gate.compute(_accuracy(0.9899, 0.99), 1.0).status == "fail"  # type: ignore[union-attr]
    assert gate.compute(_accuracy(101.0, 100.0, "lower"), 100.0).status == "pass"  # type: ignore[union-attr]
    assert gate.compute(_accuracy(101.2, 100.0, "lower"), 100.0).status == "fail"  # type: ignore[union-attr]
    assert gate.compute(_accuracy(0.9, 0.9), None) is None
    absolute = BaselineAccuracyGate(AccuracyPolicy(max_metric_delta=0.5))
    assert absolute.compute(_accuracy(-2.4, -2.4), -2.0).status == "pass"  # type: ignore[union-attr]
    assert absolute.compute(_accuracy(-2.6, -2.6), -2.0).status == "fail"  # type: ignore[union-attr]


# ---- 9: any metric, either direction ----------------------------------------------------------


def test_lower_is_better_metric_fails_the_worse_variant_only() -> None:
    """Item 9: with MSE, a better (lower) variant failed and a worse one passed."""
    gate = TaskMetricGate(AccuracyPolicy())
    better = gate.compute(_accuracy(2900.0, 2973.3, "lower"))
    worse = gate.compute(_accuracy(3100.0, 2973.3, "lower"))
    assert better is not None and better.status == "pass"
    assert worse is not None and worse.status == "fail"
    assert worse.message == (
        "m 3100.0000 vs reference 2973.3000 (lower is better): exceeds the allowed 3003.0330 (101.00% of the reference)"
    )


def test_a_reference_at_or_below_zero_needs_an_absolute_tolerance() -> None:
    """Item 9: -MSE is always negative; the relative rule refuses it with the fix, max_metric_delta works."""
    refused = TaskMetricGate(AccuracyPolicy()).compute(_accuracy(-3000.0, -3000.0))
    assert refused is not None and refused.status == "fail" and "set max_metric_delta" in refused.message
    absolute = TaskMetricGate(AccuracyPolicy(max_metric_delta=30.0))
    assert absolute.compute(_accuracy(-3000.0, -3000.0)).status == "pass"  # type: ignore[union-attr]
    assert absolute.compute(_accuracy(-3031.0, -3000.0)).status == "fail"  # type: ignore[union-attr]


# The tiny matrix's header (pythonpath, batch sizes, short timing), with two regressors.
REGRESSOR_MATRIX = (
    TINY_MATRIX.split("[models.tiny_mlp]")[0]
    + """
[models.regressor]
factory = "tiny_models:diabetes_regressor"
data = "tiny_models:diabetes"
metric = "tiny_models:mse"
metric_direction = "lower"

[models.neg_regressor]
factory = "tiny_models:diabetes_regressor"
data = "tiny_models:diabetes"
metric = "tiny_models:neg_mse"
accuracy = {{ max_metric_delta = 30.0 }}

[techniques.fp32]
[techniques.noisy]

[backends.torch_cpu]
[backends.onnxruntime_cpu]
[backends.openvino_cpu]
"""
)


def test_a_regressor_in_the_hundreds_passes_fp32_everywhere_and_fails_degraded(
    perf_project: pytest.Pytester,
) -> None:
    """Items 9 and 10 end to end: outputs in the hundreds (a float32 ULP is 3e-5) pass the export
    check and the lossless gate on every backend; a lower-is-better MSE and a negative -MSE both
    judge the FP32 reference as passing and a damaged variant as failing."""
    from test_plugin_e2e import NOISY_TECHNIQUE_CONFTEST

    perf_project.makeconftest(NOISY_TECHNIQUE_CONFTEST)
    (perf_project.path / "perf" / "matrix.toml").write_text(REGRESSOR_MATRIX.format(tests=TESTS.as_posix()))
    result = perf_project.runpytest_inprocess(
        "perf", "-k", "fp32 or (noisy and torch)", "--perf-report", "out"
    )
    result.assert_outcomes(passed=6, failed=2)
    result.stdout.fnmatch_lines(["*model regressor  metric: tiny_models:mse (lower is better)*"])
    cases = {
        c["case_id"]: c for c in json.loads((perf_project.path / "out" / "results.json").read_text())["cases"]
    }
    failed = sorted(case_id for case_id, c in cases.items() if c["status"] != "passed")
    assert failed == ["neg_regressor-noisy-torch_cpu-b1", "regressor-noisy-torch_cpu-b1"]
    scale = cases["regressor-fp32-onnxruntime_cpu-b1"]["accuracy"]["fidelity"]["output_scale"]
    assert scale > 200


# ---- 12: calibrating on the eval set is an opt-in ---------------------------------------------

EVAL_ONLY_MATRIX = """
[models.eval_only]
factory = "tiny_models:seeded_mlp"
data = "tiny_models:blobs_without_splits"
{opt_in}
"""


@pytest.mark.parametrize("opt_in", [False, True])
def test_calibrating_on_the_eval_set_needs_the_opt_in(perf_project: pytest.Pytester, opt_in: bool) -> None:
    """Item 12: a model without calibration or training data was silently calibrated on its eval set."""
    extra = EVAL_ONLY_MATRIX.format(opt_in="calibrate_on_eval = true" if opt_in else "")
    edit_matrix(perf_project, "[techniques.int8_dynamic]", extra + "\n[techniques.int8_static]")
    text = (perf_project.path / "perf" / "matrix.toml").read_text()
    (perf_project.path / "perf" / "matrix.toml").write_text(
        text.replace(
            '[models.tiny_mlp]\nfactory = "tiny_models:tiny_mlp"\ndata = "tiny_models:blobs"\nmetric = "top1"\n',
            "",
        )
    )
    result = perf_project.runpytest("perf", "-k", "int8_static and onnxruntime", "--perf-report", "out")
    if not opt_in:
        result.assert_outcomes(failed=1)
        result.stdout.fnmatch_lines(
            ["*'blobs-eval-only' has no calibration or training split*calibrate_on_eval = true*"]
        )
        return
    result.assert_outcomes(passed=1)
    case = json.loads((perf_project.path / "out" / "results.json").read_text())["cases"][0]
    assert case["settings"]["calibration_source"] == "eval"


# ---- 13: a baseline from another machine is incomparable, never judged ------------------------


def test_a_baseline_from_another_cpu_is_incomparable(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Item 13: a baseline copied from another runner failed cases x3.2 instead of saying why it
    cannot be compared; --perf-require-baseline turns incomparable into a failure."""
    run(perf_project, monkeypatch, "-k", "fp32 and torch", "--perf-refresh-baselines").assert_outcomes(
        passed=1
    )
    path = baseline_file(perf_project)
    document = json.loads(path.read_text())
    for snapshot in document["perfgate"]["environments"].values():
        snapshot.update(cpu_model="Other CPU 9000", cpu_cores=64)
    for entry in document["benchmarks"]:  # 3x faster there: a comparison would fail the case
        entry["stats"]["data"] = [x / 3 for x in entry["stats"]["data"]]
        entry["stats"]["median"] /= 3
    path.write_text(json.dumps(document))
    result = run(perf_project, monkeypatch, "-k", "fp32 and torch", "--benchmark-compare")
    result.assert_outcomes(passed=1)
    result.stdout.fnmatch_lines([f"{FP32_TORCH}*incomparable", "*incomparable*Other CPU 9000*"])
    strict = run(
        perf_project, monkeypatch, "-k", "fp32 and torch", "--benchmark-compare", "--perf-require-baseline"
    )
    strict.assert_outcomes(failed=1)
    strict.stdout.fnmatch_lines(
        ["*regression: incomparable with the baseline*cores: 64 -> *(--perf-require-baseline)*"]
    )


# ---- 14: confirmation can be switched off, end to end -----------------------------------------


@pytest.mark.parametrize("confirm", [0, 1])
def test_confirm_zero_fails_on_the_first_measurement(
    perf_project: pytest.Pytester, monkeypatch: pytest.MonkeyPatch, confirm: int
) -> None:
    """Item 14: `confirm = 0` fails a real slowdown on its first reading, without re-measuring;
    the default re-measures once and says so (the old test only read a dataclass default)."""
    edit_matrix(perf_project, "[techniques.fp32]", BURST_MATRIX + "\n[techniques.fp32]")
    edit_matrix(perf_project, "threshold = 1.0", f"confirm = {confirm}\nthreshold = 0.5")
    selection = ["-k", "burst and fp32 and torch"]
    run(perf_project, monkeypatch, *selection, "--perf-refresh-baselines").assert_outcomes(passed=1)
    result = run(
        perf_project, monkeypatch, *selection, "--benchmark-compare", "-v",
        PERFGATE_TEST_DELAY_US="3000", PERFGATE_TEST_BURST_CALLS="100000",
    )  # fmt: skip
    result.assert_outcomes(failed=1)
    confirming = "confirmation (session 2) after the other cases" in result.stdout.str()
    assert confirming == bool(confirm)
    assert ("(confirmed: first reading x" in result.stdout.str()) == bool(confirm)
