"""One broken case never costs the others: timeouts, crash isolation, the run journal, bad paths.

Each test runs a real matrix through pytester: a well-behaved tiny MLP beside one from
``tests/fault_models.py`` that hangs, exits or segfaults in the middle of its timing, as a buggy
backend would. A run that can hang or crash goes to a subprocess, so that a regression fails its
test instead of taking the test run down; the others run in process (a subprocess costs seconds
of imports).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import TESTS, TINY_MATRIX

# The tiny matrix's header (pythonpath, batch sizes, timing), then a good model and a bad one.
FAULT_MATRIX = (
    TINY_MATRIX.split("[models.tiny_mlp]")[0]
    + """
[models.good]
factory = "tiny_models:tiny_mlp"
data = "tiny_models:blobs"
metric = "top1"

[models.bad]
factory = "fault_models:{factory}"
data = "tiny_models:blobs"
metric = "top1"

[techniques.fp32]

[backends.torch_cpu]

[[overrides]]
match = "bad-*"
timing = {{ case_timeout_s = {timeout} }}
"""
)


@pytest.fixture
def fault_project(perf_project: pytest.Pytester):
    """The tiny project, with a matrix whose ``bad`` model uses the given fault factory."""

    def make(factory: str, timeout: float = 60) -> pytest.Pytester:
        matrix = FAULT_MATRIX.format(tests=TESTS.as_posix(), factory=factory, timeout=timeout)
        (perf_project.path / "perf" / "matrix.toml").write_text(matrix)
        return perf_project

    return make


def _results(project: pytest.Pytester, folder: str = "out") -> dict[str, dict]:
    document = json.loads((project.path / folder / "results.json").read_text())
    return {case["case_id"]: case for case in document["cases"]}


def _journal_events(project: pytest.Pytester, cache: Path) -> list[list[dict]]:
    runs = sorted((cache / "runs").glob("*.jsonl"), key=lambda p: p.stat().st_mtime)
    return [[json.loads(line) for line in path.read_text().splitlines()] for path in runs]


def test_a_hanging_model_times_out_and_the_session_goes_on(fault_project, monkeypatch) -> None:
    """A forward that sleeps is interrupted at the case's limit; the other case passes."""
    project = fault_project("sleeping_mlp", timeout=4)
    result = project.runpytest_subprocess("perf", "--perf-report", "out", timeout=240)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*bad-fp32-torch_cpu-b1: timed out after 4 s in timing*"])
    assert "Traceback" not in result.stdout.str()
    cases = _results(project)
    assert cases["good-fp32-torch_cpu-b1"]["status"] == "passed"
    assert cases["bad-fp32-torch_cpu-b1"]["status"] == "error"
    assert "timed out after 4 s in timing" in cases["bad-fp32-torch_cpu-b1"]["error"]


@pytest.mark.parametrize(
    ("factory", "death"),
    [("exiting_mlp", "the child process exited with status 3"), ("segfaulting_mlp", "signal 11 (SIGSEGV)")],
)
def test_isolation_turns_a_crash_into_that_case_failure(fault_project, factory: str, death: str) -> None:
    """Under --perf-isolate, os._exit and a segfault fail their case; the others keep everything."""
    project = fault_project(factory)
    # The crashing model first, so the good case runs in the child that replaces the dead one.
    matrix = project.path / "perf" / "matrix.toml"
    text = matrix.read_text()
    good = text[text.index("[models.good]") : text.index("[models.bad]")]
    matrix.write_text(text.replace(good, "").replace("[techniques.fp32]", good + "[techniques.fp32]"))
    result = project.runpytest_subprocess(
        "perf", "--perf-isolate", "--perf-report", "out", "--perf-refresh-baselines", timeout=240
    )
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines([f"*bad-fp32-torch_cpu-b1: crashed: {death} in timing*"])
    cases = _results(project)
    assert cases["good-fp32-torch_cpu-b1"]["status"] == "passed"
    assert cases["good-fp32-torch_cpu-b1"]["latency"]["p50_ms"] > 0
    assert cases["bad-fp32-torch_cpu-b1"]["status"] == "crashed"
    report = (project.path / "out" / "report.md").read_text()
    assert "1 crashed" in report and "bad-fp32-torch_cpu-b1" in report
    if factory == "segfaulting_mlp":  # the child's faulthandler stack reaches the report
        assert "Segmentation fault" in cases["bad-fp32-torch_cpu-b1"]["details"]
    baseline = json.loads((project.path / "baselines" / "test-runner" / "0001_baseline.json").read_text())
    assert set(baseline["perfgate"]["cases"]) == {"good-fp32-torch_cpu-b1"}


def test_isolation_kills_a_native_hang_at_the_limit(fault_project, monkeypatch) -> None:
    """A hang the alarm cannot interrupt (native code) is killed in the child; the session goes on."""
    monkeypatch.setenv("PERFGATE_HANG_GRACE_S", "2")
    project = fault_project("native_hang_mlp", timeout=3)
    result = project.runpytest_subprocess("perf", "--perf-isolate", "--perf-report", "out", timeout=240)
    result.assert_outcomes(passed=1, failed=1)
    result.stdout.fnmatch_lines(["*bad-fp32-torch_cpu-b1: timed out after 3 s in timing*killed*"])
    assert _results(project)["good-fp32-torch_cpu-b1"]["status"] == "passed"


def test_a_native_hang_in_process_writes_what_finished_and_exits(fault_project, monkeypatch) -> None:
    """Without isolation a native hang cannot be interrupted: the run records it, writes the
    finished cases' report, and exits non-zero instead of hanging the CI job."""
    monkeypatch.setenv("PERFGATE_HANG_GRACE_S", "2")
    project = fault_project("native_hang_mlp", timeout=3)
    result = project.runpytest_subprocess("perf", "--perf-report", "out", "-p", "no:randomly", timeout=240)
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*bad-fp32-torch_cpu-b1: timed out after 3 s in timing*stuck in native code*"]
    )
    cases = _results(project)
    assert cases["good-fp32-torch_cpu-b1"]["status"] == "passed"
    assert cases["bad-fp32-torch_cpu-b1"]["status"] == "error"


def test_without_isolation_a_crash_loses_only_its_case(fault_project, tmp_path: Path, monkeypatch) -> None:
    """os._exit kills the session; the journal holds the finished case, and the next run says what was lost."""
    cache = tmp_path / "cache"  # its own: the lost run must not be reported to other tests' runs
    monkeypatch.setenv("PERFGATE_CACHE", str(cache))
    project = fault_project("exiting_mlp")
    (project.path / "perf" / "matrix.toml").write_text(
        (project.path / "perf" / "matrix.toml")
        .read_text()
        .replace("[models.bad]", "[models.zbad]")
        .replace('"bad-*"', '"zbad-*"')
    )
    crashed = project.runpytest_subprocess("perf", "-p", "no:randomly", timeout=240)
    assert crashed.ret == 3
    journal = _journal_events(project, cache)[-1]
    finished = [e["result"]["case_id"] for e in journal if e["event"] == "result"]
    assert finished == ["good-fp32-torch_cpu-b1"]
    assert not any(e["event"] == "finished" for e in journal)
    assert [e["step"] for e in journal if e["event"] == "step"][-1] == "timing"
    # The next run names the lost case, its step, and where the finished one is.
    again = project.runpytest("perf", "-k", "good", "--perf-report", "out")
    again.stdout.fnmatch_lines(
        [
            "*ended without finishing, while case zbad-fp32-torch_cpu-b1 was running (step: timing)*1 finished case(s)*"
        ]
    )
    lost = json.loads((project.path / "out" / "results.json").read_text())["lost_runs"]
    assert lost[0]["running_case"] == "zbad-fp32-torch_cpu-b1"
    # The dead run's finished cases render from its journal.
    from perfgate.cli import main

    assert main(["report", lost[0]["journal"], "-o", str(project.path / "lost"), "--no-plots"]) == 0
    report = (project.path / "lost" / "report.md").read_text()
    assert "1 cases: 1 passed" in report and "good-fp32-torch_cpu-b1" in report


def test_xdist_reports_a_crashed_worker_case_as_crashed(fault_project, monkeypatch) -> None:
    """Under -n 2 a worker that dies leaves its case in the report, as crashed."""
    monkeypatch.setenv("FAULT_AFTER", "10")  # xdist disables timing: die in the accuracy pass
    project = fault_project("exiting_mlp")
    result = project.runpytest_subprocess("perf", "-n", "2", "--perf-report", "out", timeout=240)
    result.assert_outcomes(passed=1, failed=1)
    cases = _results(project)
    assert cases["bad-fp32-torch_cpu-b1"]["status"] == "crashed"
    assert "crashed" in cases["bad-fp32-torch_cpu-b1"]["error"]
    report = (project.path / "out" / "report.md").read_text()
    assert "2 cases: 1 passed, 0 failed, 0 errors, 1 crashed" in report


def test_a_conversion_failure_is_one_line_with_the_fix(perf_project: pytest.Pytester) -> None:
    """An op ONNX cannot export: one short message naming the case, the step, the exporter's
    error and the exclusion key; the traceback goes to the report."""
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(
        matrix.read_text().replace('factory = "tiny_models:tiny_mlp"', 'factory = "fault_models:fft_mlp"')
    )
    result = perf_project.runpytest("perf", "-k", "fp32", "--perf-report", "out")
    result.assert_outcomes(passed=1, failed=1)
    out = result.stdout.str()
    result.stdout.fnmatch_lines(
        ["tiny_mlp-fp32-onnxruntime_cpu-b1: building failed: UnsupportedOperatorError: *aten::fft_rfft*"]
    )
    assert (
        'fix: if tiny_mlp cannot run on onnxruntime_cpu, leave it out: [models.tiny_mlp] exclude = ["onnxruntime_cpu"]'
        in out
    )
    assert "Traceback" not in out and "Torch IR graph" not in out and len(out.splitlines()) < 60
    case = _results(perf_project)["tiny_mlp-fp32-onnxruntime_cpu-b1"]
    assert (
        case["status"] == "error" and "Traceback" in case["details"] and "Torch IR graph" in case["details"]
    )
    assert "Traceback" in (perf_project.path / "out" / "report.md").read_text()


def test_a_bad_report_path_still_refreshes_the_baseline(perf_project: pytest.Pytester) -> None:
    """The report cannot be written (its path is a file): the baselines still land, the failure
    names the path, and the run fails."""
    (perf_project.path / "blocker").write_text("a file where the report folder should go")
    result = perf_project.runpytest(
        "perf", "-k", "fp32-torch", "--perf-report", "blocker/out", "--perf-refresh-baselines"
    )
    assert result.ret == 1
    result.stdout.fnmatch_lines(["*perfgate: ERROR: report NOT written: *blocker/out*"])
    assert (perf_project.path / "baselines" / "test-runner" / "0001_baseline.json").is_file()
    assert "Traceback" not in result.stdout.str()


def test_an_unwritable_baseline_still_writes_the_report(perf_project: pytest.Pytester) -> None:
    """The baseline cannot be written: the report still lands and the failure names the file."""
    (perf_project.path / "baselines").mkdir()
    (perf_project.path / "baselines" / "test-runner").write_text("a file where the runner's folder should go")
    result = perf_project.runpytest(
        "perf", "-k", "fp32-torch", "--perf-report", "out", "--perf-refresh-baselines"
    )
    assert result.ret == 1
    result.stdout.fnmatch_lines(
        ["*perfgate: ERROR: baselines NOT refreshed: writing *0001_baseline.json failed*"]
    )
    assert (perf_project.path / "out" / "report.md").is_file()


def test_a_matrix_error_is_one_message_without_traceback(perf_project: pytest.Pytester) -> None:
    matrix = perf_project.path / "perf" / "matrix.toml"
    matrix.write_text(matrix.read_text().replace("[backends.onnxruntime_cpu]", "[backends.onnxruntim_cpu]"))
    result = perf_project.runpytest("perf")
    assert result.ret == pytest.ExitCode.INTERRUPTED
    result.stdout.fnmatch_lines(["*unknown backend 'onnxruntim_cpu'*"])
    assert "pluggy/_caller" not in result.stdout.str() and "Traceback" not in result.stdout.str()


def test_concurrent_runs_are_detected_and_kept_out_of_the_baseline(perf_project: pytest.Pytester) -> None:
    """Another perfgate run holding its registry lock while a case is timed is reported, and a
    refresh does not store a timing the two runs took of each other."""
    from perfgate.concurrency import RunRegistry

    other = RunRegistry("19990101T000000-1", {"cwd": "/elsewhere", "started": "earlier"})
    assert other.others() == []
    try:
        result = perf_project.runpytest(
            "perf", "-k", "fp32-torch", "--perf-report", "out", "--perf-refresh-baselines"
        )
    finally:
        other.close()
    result.stdout.fnmatch_lines(
        [
            "*1 case(s) were timed while another perfgate run was running on this machine (pid * in /elsewhere)*"
        ]
    )
    document = json.loads((perf_project.path / "out" / "results.json").read_text())
    assert document["concurrent_runs"]["cases"] == ["tiny_mlp-fp32-torch_cpu-b1"]
    result.stdout.fnmatch_lines(["*kept-out*another perfgate run*"])


def test_isolated_timings_reach_pytest_benchmark(fault_project) -> None:
    """The child's samples are what pytest-benchmark's table and --benchmark-json show."""
    project = fault_project("tiny_mlp")
    # In process: the model is well-behaved, and the child is a fresh process anyway.
    result = project.runpytest(
        "perf", "--perf-isolate", "--perf-report", "out", "--benchmark-json", "bench.json"
    )
    result.assert_outcomes(passed=2)
    bench = json.loads((project.path / "bench.json").read_text())
    cases = _results(project)
    for entry in bench["benchmarks"]:
        case = cases[entry["name"].split("[")[1].rstrip("]")]
        assert entry["stats"]["rounds"] == case["latency"]["rounds"] > 1


def test_the_guard_interrupts_python_code_and_names_the_step() -> None:
    """Unit: the alarm raises CaseTimeout naming the step; a step error becomes a one-line CaseError."""
    import time

    from perfgate.guard import CaseError, CaseGuard, CaseTimeout

    guard = CaseGuard("m-fp32-torch_cpu-b1", timeout_s=0.2)
    expected = r"m-fp32-torch_cpu-b1: timed out after 0.2 s in timing"
    with pytest.raises(CaseTimeout, match=expected), guard.step("timing"):
        time.sleep(5)
    guard.stop()
    guard = CaseGuard("m", timeout_s=None, hint=lambda step: f"exclude it ({step})")
    with pytest.raises(CaseError) as caught, guard.step("building"):
        raise RuntimeError("Exporting the operator 'aten::fft_rfft' is not supported\nmore lines")
    assert str(caught.value) == (
        "m: building failed: RuntimeError: Exporting the operator 'aten::fft_rfft' is not supported\n"
        "  fix: exclude it (building)"
    )
    assert "Traceback" in caught.value.details
